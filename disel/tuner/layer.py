"""The PEFT tuner layer: a frozen ``nn.Linear`` / ``Conv1D`` plus one DISeL branch per adapter.

The update itself is :func:`disel.functional.disel_update`; this file only keeps the per-adapter
parameters in PEFT's layout (``ModuleDict``s keyed by adapter name, all named ``disel_*`` so PEFT's
state-dict plumbing finds them) and adds the active adapters' updates to the base output.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from ..functional import StackedWeightCache, disel_update
from ..layers import DiselGate, FrozenBranch, GateView, init_disel_parameters, stacked_gates
from .config import DiselConfig

__all__ = ["DiselLayer", "DiselLinearLayer", "MERGE_REFUSAL", "SUPPORTED_BASE_LAYERS"]

# Conv1D (GPT-2) computes x W + b with W stored (d_in, d_out); the adapter only reads x (..., d_in) and
# returns (..., d_out), so the transposed layout matters only for the feature counts read below.
SUPPORTED_BASE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)

MERGE_REFUSAL = (
    "DISeL adapters cannot be merged into the base weights: the update s · B diag(σ(W_g x + b_g)) A x is "
    "ΔW(x) = s · B diag(g(x)) A, which depends on the input x through the gates, so no fixed W0 + ΔW "
    "reproduces it. Keep the PEFT model for inference, or call unload() to get the base model back."
)


def validate_config_in_use(config: DiselConfig) -> None:
    """Check ``config`` again where it is applied: fields set after construction (``config.r = 0``) are
    only seen here, and would otherwise build a broken adapter (a division by zero in the scaling)."""
    if not isinstance(config, DiselConfig):
        raise TypeError(f"a DISeL layer is built from a DiselConfig, got config={type(config).__name__}")
    config._validate()


def _in_out_features(base_layer: nn.Module) -> tuple[int, int]:
    if isinstance(base_layer, nn.Linear):
        return base_layer.in_features, base_layer.out_features
    d_in, d_out = base_layer.weight.shape  # Conv1D: (d_in, d_out)
    return d_in, d_out


class DiselLayer(BaseTunerLayer):
    """Per-adapter DISeL state of one adapted layer.

    For each adapter name: ``disel_A[name]`` (Linear d → r, no bias), ``disel_B[name]`` (Linear r → m,
    no bias), ``disel_gate[name]`` (:class:`~disel.layers.DiselGate`, d → r with bias),
    ``disel_dropout[name]``, ``r[name]`` and ``scaling[name]`` = lora_alpha / r: the trainable branch.
    ``disel_frozen[name]``: the adapter's earlier task branches (:class:`~disel.layers.FrozenBranch`, buffers
    only), earliest first, as ``config.frozen_branches`` describes them (see :mod:`disel.continual`).
    """

    adapter_layer_names = ("disel_A", "disel_B", "disel_gate")
    other_param_names = ("r", "scaling", "disel_dropout")

    def __init__(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.disel_dropout = nn.ModuleDict({})
        self.disel_A = nn.ModuleDict({})
        self.disel_B = nn.ModuleDict({})
        self.disel_gate = nn.ModuleDict({})
        self.disel_frozen = nn.ModuleDict({})  # not in adapter_layer_names: set_adapter must not touch it
        self._disable_adapters = False
        self.merged_adapters = []
        self.in_features, self.out_features = _in_out_features(self.get_base_layer())

    def update_layer(self, adapter_name: str, config: DiselConfig) -> None:
        """Create and initialise the adapter ``adapter_name`` from ``config`` (THEORY.md §1, "Initialisation")."""
        validate_config_in_use(config)
        d, m, r = self.in_features, self.out_features, config.r
        self.r[adapter_name] = r
        self.scaling[adapter_name] = config.scaling
        self.disel_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.disel_A[adapter_name] = nn.Linear(d, r, bias=False)
        self.disel_B[adapter_name] = nn.Linear(r, m, bias=False)
        self.disel_gate[adapter_name] = DiselGate(d, r, bias=True)
        init_disel_parameters(
            self.disel_A[adapter_name],
            self.disel_B[adapter_name],
            self.disel_gate[adapter_name],
            init_weights=config.init_weights,
            gate_weight_init=config.gate_weight_init,
            gate_bias_init=config.gate_bias_init,
        )
        self._build_frozen_branches(adapter_name, config)
        # Initialised in float32, then moved to the base layer's device and dtype (PEFT upcasts half-precision
        # adapters back to float32 afterwards unless autocast_adapter_dtype=False).
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _build_frozen_branches(self, adapter_name: str, config: DiselConfig) -> None:
        """Zero-filled frozen branches of the ranks ``config.frozen_branches`` gives (resolved for this module),
        unless the layer already holds exactly those (add_task_branch froze them); a reload fills them in."""
        specs = config.frozen_branches
        held = self.frozen_branches(adapter_name)
        if [b.rank for b in held] == [spec["r"] for spec in specs]:
            return
        if not specs:
            if adapter_name in self.disel_frozen:
                del self.disel_frozen[adapter_name]
            return
        # float32 at least: a saved float32 branch must load without rounding (PEFT upcasts only parameters).
        base_weight = self.get_base_layer().weight
        dtype = torch.promote_types(base_weight.dtype, torch.float32) if base_weight.is_floating_point() else None
        d, m = self.in_features, self.out_features
        self.disel_frozen[adapter_name] = nn.ModuleList(
            FrozenBranch.empty(spec["r"], d, m, spec["lora_alpha"] / spec["r"], device=base_weight.device, dtype=dtype)
            for spec in specs
        )

    def frozen_branches(self, adapter_name: str) -> list[FrozenBranch]:
        """The frozen task branches of ``adapter_name`` in this layer, earliest first (empty if none)."""
        return list(self.disel_frozen[adapter_name]) if adapter_name in self.disel_frozen else []

    def add_task_branch(self, adapter_name: str, config: DiselConfig) -> None:
        """Freeze ``adapter_name``'s trainable branch and build a new one from ``config`` (resolved for this
        module, its ``frozen_branches`` already extended by one): new ``A``, ``W_g``, ``b_g`` initialised as
        configured and ``B = 0``, in the dtype the old trainable branch had."""
        old = (self.disel_A[adapter_name], self.disel_B[adapter_name], self.disel_gate[adapter_name])
        frozen = FrozenBranch.of(*old, self.scaling[adapter_name])
        if adapter_name not in self.disel_frozen:
            self.disel_frozen[adapter_name] = nn.ModuleList()
        self.disel_frozen[adapter_name].append(frozen)
        self._stacked_weight_cache(adapter_name).clear()
        self.update_layer(adapter_name, config)
        for name in self.adapter_layer_names:  # e.g. float32 adapters on a bfloat16 model stay float32
            getattr(self, name)[adapter_name].to(old[0].weight.dtype)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if adapter_name in self.disel_frozen:  # ModuleDict.pop takes no default
            del self.disel_frozen[adapter_name]

    def active_gates(self) -> list[tuple[str, DiselGate | GateView]]:
        """(adapter name, gate) of each adapter that currently acts on the output; the gate recorder reads these.
        With frozen task branches the gate is a :class:`~disel.layers.GateView` of every branch, earliest first."""
        if self.disable_adapters:
            return []
        return [
            (name, stacked_gates(self.frozen_branches(name), self.disel_gate[name]))
            for name in self.active_adapters
            if name in self.disel_gate
        ]

    def _stacked_weight_cache(self, adapter_name: str) -> StackedWeightCache:
        """The inference cache of ``[A; W_g]`` for one adapter (rebuilt when a parameter changes)."""
        caches = self.__dict__.setdefault("_disel_stacked_caches", {})
        return caches.setdefault(adapter_name, StackedWeightCache())

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        names = self.active_adapters if adapter_names is None else adapter_names
        if any(name in self.disel_A for name in names):
            raise NotImplementedError(MERGE_REFUSAL)
        # No gated component left here: disel.merge_static already folded the static ones into the base weight.

    def unmerge(self) -> None:
        # Nothing is ever merged (merge refuses), so there is nothing to undo.
        return None


class DiselLinearLayer(nn.Module, DiselLayer):
    """``h = base(x) + Σ_active s · B diag(σ(W_g x + b_g)) A x`` around an ``nn.Linear`` or ``Conv1D``.

    Shapes: (..., d) → (..., m). The adapter weights may be in a different dtype than the base layer
    (float32 adapters on a bfloat16 model): the input is cast to the adapter's dtype, the sum back to
    the base output's dtype, as PEFT's LoRA does.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: DiselConfig) -> None:
        super().__init__()
        DiselLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        result = self.base_layer(x, *args, **kwargs)  # (..., m)
        if self.disable_adapters:
            return result
        result_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.disel_A:
                continue
            gate = self.disel_gate[name]
            x_adapter = self.disel_dropout[name](self._cast_input_dtype(x, gate.weight.dtype))  # (..., d)
            for branch in self.frozen_branches(name):  # earlier task branches first, in the order they were added
                result = result + branch.update(x_adapter)  # (..., m)
            result = result + disel_update(
                x_adapter,
                self.disel_A[name].weight,
                self.disel_B[name].weight,
                gate.weight,
                gate.bias,
                self.scaling[name],
                cache=self._stacked_weight_cache(name),
            )  # (..., m)
        return result.to(result_dtype)

    def __repr__(self) -> str:
        return "disel." + super().__repr__()
