"""DISeL: Dynamic Input-Sensitive LoRA (LoRA whose rank-one components are gated by σ(W_g x + b_g))."""

from .functional import disel_update, disel_update_reference, gate_values
from .layer import DiselGate, DiselLinear, init_disel_parameters

__all__ = [
    "DiselGate",
    "DiselLinear",
    "disel_update",
    "disel_update_reference",
    "gate_values",
    "init_disel_parameters",
]
