"""``DiselConfig``: the PEFT configuration of a DISeL adapter (THEORY.md §1).

One typed dataclass: each field says what it sets and why its default was chosen; ``__post_init__``
checks the values and names the field and what was expected when one is wrong.
"""

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Optional, Union

from peft import PeftConfig
from peft.utils.other import get_pattern_key

from ..layers import GATE_WEIGHT_INITS

__all__ = ["DiselConfig", "DiselPeftType", "DISEL_BIAS_OPTIONS"]

DISEL_BIAS_OPTIONS: tuple[str, ...] = ("none", "all", "disel_only")


class DiselPeftType(str, enum.Enum):
    """DISeL's PEFT type. PEFT's own ``PeftType`` enum is closed, so the type lives in its own ``str`` enum.

    A member equals (and hashes like) its string, so ``"DISEL"`` read back from ``adapter_config.json``
    finds the same entries in PEFT's type → class mappings, and ``.value`` works like ``PeftType``'s.
    """

    DISEL = "DISEL"


def _is_str_list(value) -> bool:
    return isinstance(value, (list, set, tuple)) and all(isinstance(v, str) for v in value)


@dataclass
class DiselConfig(PeftConfig):
    """Configuration of a DISeL adapter: ``h = W0 x + s · B diag(σ(W_g x + b_g)) A x`` on each target layer.

    The fields shared with LoRA (``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``, ...) mean
    what they mean in ``peft.LoraConfig``; the gate fields are DISeL's own.
    """

    r: int = field(
        default=8,
        metadata={"help": "Rank: the number of gated rank-one components b_i a_iᵀ per adapted layer."},
    )
    lora_alpha: float = field(
        default=16,
        metadata={
            "help": "Scaling numerator, s = lora_alpha / r (as in LoRA, so learning rates transfer across ranks). "
            "The published LLM recipe uses lora_alpha = 2r; the default 16 is that for the default r = 8."
        },
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Dropout on the adapter input, in [0, 1). A and the gate both read the dropped-out input, as in "
            "the published implementation."
        },
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Modules to adapt: a list of names (exact or suffix match), a regex matched against the full "
            "module name, or 'all-linear' (every nn.Linear / Conv1D except the output head). None uses PEFT's LoRA "
            "defaults for known architectures (e.g. q_proj, v_proj for Llama); the paper adapts q, k, v, o, gate, up, "
            "down. Only nn.Linear and transformers' Conv1D can be adapted."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Modules not to adapt even if target_modules matches them: a list of names or a regex."},
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None,
        metadata={
            "help": "Only adapt these layer indices (an int or a list of ints), e.g. to adapt only late layers. "
            "Needs target_modules to be a list, not a regex."
        },
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Name of the module list holding the layers (e.g. 'layers' or 'h'), used with "
            "layers_to_transform when the layer index cannot be found automatically."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Modules trained in full and saved with the adapter, e.g. a fresh classification head "
            "('classifier', 'score') that the base checkpoint does not contain."
        },
    )
    bias: str = field(
        default="none",
        metadata={
            "help": "Which base-layer biases to train and save: 'none' (the adapter alone), 'all' (every bias in the "
            "model) or 'disel_only' (biases of adapted layers). Anything but 'none' means disabling the adapter no "
            "longer restores the base model."
        },
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: B = 0, so the adapted model starts exactly at the base model (THEORY.md §1). "
            "False: random B, a non-trivial update from step 0 (for tests)."
        },
    )
    gate_bias_init: float = field(
        default=-3.0,
        metadata={
            "help": "Initial gate bias b_g. Negative so every gate starts nearly closed: σ(-3) ≈ 0.047, the "
            "published LLM default; the RoBERTa runs used -7 on the large GLUE tasks."
        },
    )
    gate_weight_init: str = field(
        default="kaiming",
        metadata={
            "help": "Initial gate weight W_g: 'kaiming' (random, so the gates depend on the input from step 0, "
            "the published choice) or 'zero' (every gate starts at σ(b_g) whatever the input)."
        },
    )
    rank_pattern: dict = field(
        default_factory=dict,
        metadata={
            "help": "Per-layer ranks that differ from r: module name or regex → rank, matched as in peft.LoraConfig "
            "(the first key that matches the end of the module path, at a '.' boundary, wins), e.g. "
            "{'^model.layers.0.self_attn.q_proj': 16}. disel.prune writes one exact entry per pruned layer."
        },
    )
    alpha_pattern: dict = field(
        default_factory=dict,
        metadata={
            "help": "Per-layer lora_alpha that differs from lora_alpha, keyed like rank_pattern; a layer's scaling is "
            "its alpha / its rank. disel.prune writes alpha = s · r_new so the kept components keep their scaling s."
        },
    )
    gate_lr_ratio: float = field(
        default=5.0,
        metadata={
            "help": "Learning rate of W_g, b_g as a multiple of the learning rate of A, B (published: 1e-3 against "
            "2e-4, i.e. 5). Larger opens more gates (more adaptation), smaller keeps them closed (more retention). "
            "Read by disel.optim when it builds the optimizer; the adapter itself does not use it."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = DiselPeftType.DISEL
        # adapter_config.json stores sets as lists; matching treats both alike, LoRA keeps sets.
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"DiselConfig.{name} must be {expected}, got {name}={getattr(self, name)!r}")

        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            fail("r", "a positive integer (the number of gated rank-one components)")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or not (
            math.isfinite(self.lora_alpha) and self.lora_alpha > 0
        ):
            fail("lora_alpha", "a positive finite number (the scaling is lora_alpha / r)")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) or not (
            0.0 <= self.lora_dropout < 1.0
        ):
            fail("lora_dropout", "a probability in [0, 1)")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str) and not _is_str_list(value):
                fail(name, "None, a list of module names, or a regex string")
        if self.modules_to_save is not None and not _is_str_list(self.modules_to_save):
            fail("modules_to_save", "None or a list of module names")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            fail("layers_to_transform", "None when target_modules is a regex string (put the layer in the regex)")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            fail("layers_pattern", "None when target_modules is a regex string (put the layer in the regex)")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError(
                "DiselConfig.layers_pattern only selects where layer indices are read; set layers_to_transform "
                f"too (got layers_pattern={self.layers_pattern!r}, layers_to_transform=None)"
            )
        if self.bias not in DISEL_BIAS_OPTIONS:
            fail("bias", f"one of {DISEL_BIAS_OPTIONS}")
        if not isinstance(self.init_weights, bool):
            fail("init_weights", "True (B = 0, start at the base model) or False (random B, for tests)")
        if isinstance(self.gate_bias_init, bool) or not isinstance(self.gate_bias_init, (int, float)) or not (
            math.isfinite(self.gate_bias_init)
        ):
            fail("gate_bias_init", "a finite number (negative keeps the gates nearly closed at init)")
        if self.gate_weight_init not in GATE_WEIGHT_INITS:
            fail("gate_weight_init", f"one of {GATE_WEIGHT_INITS}")
        for name in ("rank_pattern", "alpha_pattern"):
            if getattr(self, name) is None:  # PEFT-style "no pattern"
                setattr(self, name, {})
            if not isinstance(getattr(self, name), dict) or not all(isinstance(k, str) for k in getattr(self, name)):
                fail(name, "a dict from module name or regex to a value")
        for key, value in self.rank_pattern.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DiselConfig.rank_pattern[{key!r}] must be a positive integer rank, got {value!r}")
        for key, value in self.alpha_pattern.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"DiselConfig.alpha_pattern[{key!r}] must be a positive finite number, got {value!r}")
        if isinstance(self.gate_lr_ratio, bool) or not isinstance(self.gate_lr_ratio, (int, float)) or not (
            math.isfinite(self.gate_lr_ratio) and self.gate_lr_ratio > 0
        ):
            fail("gate_lr_ratio", "a positive finite number (gate learning rate / base learning rate)")

    def rank_and_alpha(self, module_key: str) -> tuple[int, float]:
        """``(r, lora_alpha)`` of the module at path ``module_key`` (relative to the base model), after
        ``rank_pattern`` / ``alpha_pattern``, matched with PEFT's own ``get_pattern_key`` as LoRA does."""
        r = self.rank_pattern.get(get_pattern_key(self.rank_pattern.keys(), module_key), self.r)
        alpha = self.alpha_pattern.get(get_pattern_key(self.alpha_pattern.keys(), module_key), self.lora_alpha)
        return r, alpha

    def for_module(self, module_key: str) -> "DiselConfig":
        """This config with ``r`` and ``lora_alpha`` resolved for one module (itself if no pattern applies).

        The tuner layer reads ``r`` and ``scaling`` from the config it is given, so per-layer ranks need no
        extra arguments threaded through the layer code.
        """
        r, alpha = self.rank_and_alpha(module_key)
        if r == self.r and alpha == self.lora_alpha:
            return self
        return dataclasses.replace(self, r=r, lora_alpha=alpha, rank_pattern={}, alpha_pattern={})

    @property
    def scaling(self) -> float:
        """``s = lora_alpha / r``, the factor in front of the DISeL update."""
        return self.lora_alpha / self.r
