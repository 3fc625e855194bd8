"""``DiselConfig``: the PEFT configuration of a DISeL adapter (THEORY.md §1).

One typed dataclass: each field says what it sets and why its default was chosen; ``__post_init__``
checks the values and names the field and what was expected when one is wrong.
"""

import dataclasses
import enum
import numbers
from dataclasses import dataclass, field
from typing import Optional, Union

from peft import PeftConfig
from peft.utils.other import get_pattern_key

from .._validate import (
    check_adapter_hyperparameters,
    check_choice,
    check_positive_finite,
    check_rank,
)
from ..layers import DEFAULT_GATE_BIAS_INIT
from ..optim import DEFAULT_GATE_LR_RATIO

__all__ = ["DiselConfig", "DiselPeftType", "DISEL_BIAS_OPTIONS", "REQUIRED_SAVED_FIELDS"]

DISEL_BIAS_OPTIONS: tuple[str, ...] = ("none", "all", "disel_only")

# Fields a saved adapter_config.json must hold: each changes what the loaded adapter computes (the scaling
# lora_alpha / r, which layers carry the saved weights), so a file without one must not load with the default.
REQUIRED_SAVED_FIELDS: tuple[str, ...] = ("r", "lora_alpha", "target_modules")


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
        default=DEFAULT_GATE_BIAS_INIT,
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
    frozen_branches: list = field(
        default_factory=list,
        metadata={
            "help": "Earlier task branches, frozen, earliest first (continual learning, disel.add_task_branch): "
            "each a dict with the 'r', 'lora_alpha', 'rank_pattern' and 'alpha_pattern' that branch had while it "
            "was trained. r, lora_alpha and the patterns above describe the trainable (newest) branch. Written by "
            "add_task_branch, read on reload to rebuild the branches the saved weights fill."
        },
    )
    gate_lr_ratio: float = field(
        default=DEFAULT_GATE_LR_RATIO,
        metadata={
            "help": "Learning rate of W_g, b_g as a multiple of the learning rate of A, B (published: 1e-3 against "
            "2e-4, i.e. 5). Larger opens more gates (more adaptation), smaller keeps them closed (more retention). "
            "Read by disel.optim when it builds the optimizer; the adapter itself does not use it."
        },
    )
    gate_delay_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps during which the gates are held still (gate learning rate 0; Adam's moments "
            "still update), before they follow the schedule. 0: no delay (the published recipe). The toy's recipe "
            "holds them for the first 10% of steps. Read by disel.optim (DiselTrainer's scheduler, "
            "disel.optim.delay_gate_updates); the adapter itself does not use it."
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
        self._validate_adapter()
        self._validate_module_selection()
        check_choice("DiselConfig", "bias", self.bias, DISEL_BIAS_OPTIONS)
        self._validate_patterns()
        self._validate_frozen_branches()
        self._validate_gate_schedule()

    def _fail(self, name: str, expected: str) -> None:
        raise ValueError(f"DiselConfig.{name} must be {expected}, got {name}={getattr(self, name)!r}")

    def _validate_adapter(self) -> None:
        checked = check_adapter_hyperparameters(
            "DiselConfig",
            r=self.r,
            lora_alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            init_weights=self.init_weights,
            gate_weight_init=self.gate_weight_init,
            gate_bias_init=self.gate_bias_init,
            dropout_name="lora_dropout",
        )
        for name, value in checked.items():  # plain Python numbers, so adapter_config.json can hold them
            setattr(self, name, value)

    def _validate_module_selection(self) -> None:
        """``target_modules``, ``exclude_modules``, ``modules_to_save``, ``layers_to_transform``, ``layers_pattern``."""
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str) and not _is_str_list(value):
                self._fail(name, "None, a list of module names, or a regex string")
        if self.modules_to_save is not None and not _is_str_list(self.modules_to_save):
            self._fail("modules_to_save", "None or a list of module names")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            self._fail("layers_to_transform", "None when target_modules is a regex string (put the layer in the regex)")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            self._fail("layers_pattern", "None when target_modules is a regex string (put the layer in the regex)")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError(
                "DiselConfig.layers_pattern only selects where layer indices are read; set layers_to_transform "
                f"too (got layers_pattern={self.layers_pattern!r}, layers_to_transform=None)"
            )
        if self.layers_to_transform is not None:
            indices = (
                self.layers_to_transform if isinstance(self.layers_to_transform, list) else [self.layers_to_transform]
            )
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
                self._fail("layers_to_transform", "None, a layer index (int >= 0) or a list of layer indices")
        if (
            self.layers_pattern is not None
            and not isinstance(self.layers_pattern, str)
            and not _is_str_list(self.layers_pattern)
        ):
            self._fail("layers_pattern", "None, a module-list name or a list of names")

    def _validate_patterns(self) -> None:
        """``rank_pattern`` / ``alpha_pattern``: ``None`` becomes ``{}``; values checked like ``r`` / ``lora_alpha``."""
        owner = "DiselConfig"
        for name in ("rank_pattern", "alpha_pattern"):
            if getattr(self, name) is None:  # PEFT-style "no pattern"
                setattr(self, name, {})
            if not isinstance(getattr(self, name), dict) or not all(isinstance(k, str) for k in getattr(self, name)):
                self._fail(name, "a dict from module name or regex to a value")
        for key, value in self.rank_pattern.items():
            self.rank_pattern[key] = check_rank(owner, f"rank_pattern[{key!r}]", value, "a positive integer rank")
        for key, value in self.alpha_pattern.items():
            self.alpha_pattern[key] = check_positive_finite(owner, f"alpha_pattern[{key!r}]", value)

    def _validate_frozen_branches(self) -> None:
        """``frozen_branches``: a list of dicts, each with a positive rank, a positive alpha and dict patterns."""
        owner = "DiselConfig"
        if self.frozen_branches is None:
            self.frozen_branches = []
        if not isinstance(self.frozen_branches, (list, tuple)):
            self._fail("frozen_branches", "a list of dicts {'r', 'lora_alpha', 'rank_pattern', 'alpha_pattern'}")
        checked = []
        for i, spec in enumerate(self.frozen_branches):
            if not isinstance(spec, dict) or not {"r", "lora_alpha"} <= spec.keys():
                self._fail("frozen_branches", f"a list of dicts with 'r' and 'lora_alpha' (entry {i} is not)")
            patterns = {name: dict(spec.get(name) or {}) for name in ("rank_pattern", "alpha_pattern")}
            checked.append(
                {
                    "r": check_rank(owner, f"frozen_branches[{i}]['r']", spec["r"]),
                    "lora_alpha": check_positive_finite(
                        owner, f"frozen_branches[{i}]['lora_alpha']", spec["lora_alpha"]
                    ),
                    **patterns,
                }
            )
        self.frozen_branches = checked

    def _validate_gate_schedule(self) -> None:
        self.gate_lr_ratio = check_positive_finite(
            "DiselConfig",
            "gate_lr_ratio",
            self.gate_lr_ratio,
            "a positive finite number (gate learning rate / base learning rate)",
        )
        delay = self.gate_delay_steps
        if isinstance(delay, bool) or not isinstance(delay, numbers.Integral) or delay < 0:
            self._fail("gate_delay_steps", "a non-negative integer (optimizer steps with the gates held still)")
        self.gate_delay_steps = int(delay)

    @classmethod
    def check_kwargs(cls, **kwargs):
        """PEFT's hook on the fields read from ``adapter_config.json`` (``DiselConfig.from_pretrained``, which
        ``PeftModel.from_pretrained`` and ``load_adapter`` use): refuse a file that lacks a field of
        :data:`REQUIRED_SAVED_FIELDS` instead of filling in its default."""
        kwargs = super().check_kwargs(**kwargs)
        missing = [name for name in REQUIRED_SAVED_FIELDS if name not in kwargs]
        if missing:
            raise ValueError(
                f"The saved DISeL adapter config lacks {', '.join(repr(name) for name in missing)}: each of "
                f"{REQUIRED_SAVED_FIELDS} changes what the adapter computes (the scaling lora_alpha / r, the adapted "
                "layers), so it is not filled in with a default. Add the value the adapter was trained with to "
                "adapter_config.json."
            )
        return kwargs

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
        frozen = [_resolved(spec, module_key) for spec in self.frozen_branches]
        if r == self.r and alpha == self.lora_alpha and frozen == self.frozen_branches:
            return self
        return dataclasses.replace(
            self, r=r, lora_alpha=alpha, rank_pattern={}, alpha_pattern={}, frozen_branches=frozen
        )

    @property
    def scaling(self) -> float:
        """``s = lora_alpha / r``, the factor in front of the DISeL update."""
        return self.lora_alpha / self.r

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """``PeftConfig.save_pretrained``, then tag PEFT's model card ``disel`` and note that loading needs
        the ``disel`` package (see :mod:`disel.tuner.card`)."""
        super().save_pretrained(save_directory, **kwargs)
        from .card import note_disel_in_model_card

        note_disel_in_model_card(save_directory)


def _resolved(spec: dict, module_key: str) -> dict:
    """A ``frozen_branches`` entry with its patterns resolved for one module (patterns emptied)."""
    r = spec["rank_pattern"].get(get_pattern_key(spec["rank_pattern"].keys(), module_key), spec["r"])
    alpha = spec["alpha_pattern"].get(get_pattern_key(spec["alpha_pattern"].keys(), module_key), spec["lora_alpha"])
    return {"r": r, "lora_alpha": alpha, "rank_pattern": {}, "alpha_pattern": {}}
