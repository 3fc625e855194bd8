"""A standalone DISeL layer, usable in any PyTorch model without PEFT (THEORY.md §1).

``DiselLinear`` wraps a frozen ``nn.Linear`` ``W0`` and adds ``s · B diag(σ(W_g x + b_g)) A x``.
The PEFT integration (``disel.tuner``) reuses :class:`DiselGate` and :func:`init_disel_parameters`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from ._validate import (
    GATE_WEIGHT_INITS,
    check_adapter_hyperparameters,
    check_bool,
    check_choice,
    check_finite,
    check_parameter_tensor,
    check_positive_finite,
    check_rank,
)
from .functional import StackedWeightCache, disel_update, gate_values

__all__ = [
    "DEFAULT_GATE_BIAS_INIT",
    "DiselGate",
    "DiselLinear",
    "FrozenBranch",
    "GateView",
    "init_disel_parameters",
    "GateWeightInit",
]

GateWeightInit = Literal["kaiming", "zero"]


class DiselGate(nn.Linear):
    """The gate projection ``W_g x + b_g`` (d → r, with bias).

    A distinct type so that optimizer groups and the gate recorder find gate parameters with
    ``isinstance`` instead of parsing parameter names.
    """


DEFAULT_GATE_BIAS_INIT = -3.0
"""The published initial gate bias b_g of the LLM runs: σ(-3) ≈ 0.047, every gate starts nearly closed."""


class GateView(NamedTuple):
    """Gate weight (r, d) and bias (r,) of several branches stacked in branch order (earliest first); what
    ``active_gates()`` returns for a layer with frozen task branches, so the gate recorder sees every branch."""

    weight: Tensor
    bias: Tensor


class FrozenBranch(nn.Module):
    """An earlier task branch, frozen (see :mod:`disel.continual`): ``s · B diag(σ(W_g x + b_g)) A x``.

    ``A`` (r, d), ``B`` (m, r), ``gate_weight`` (r, d) and ``gate_bias`` (r,) are **buffers**, not
    parameters: no optimizer, weight decay, ``requires_grad_`` or PEFT ``set_adapter`` call can change them,
    while ``state_dict`` (and so PEFT's ``save_pretrained``) still holds them. ``scaling`` is the ``s`` the
    branch was trained with. :meth:`update` is the same :func:`~disel.functional.disel_update` call the
    branch made while it was trainable, so freezing it changes no output bit.
    """

    def __init__(self, lora_A: Tensor, lora_B: Tensor, gate_weight: Tensor, gate_bias: Tensor, scaling: float) -> None:
        super().__init__()
        self.register_buffer("A", lora_A.detach().clone())
        self.register_buffer("B", lora_B.detach().clone())
        self.register_buffer("gate_weight", gate_weight.detach().clone())
        self.register_buffer("gate_bias", gate_bias.detach().clone())
        self.scaling = float(scaling)
        self._stacked_cache = StackedWeightCache()

    @classmethod
    def of(cls, lora_A: nn.Linear, lora_B: nn.Linear, gate: DiselGate, scaling: float) -> FrozenBranch:
        """A frozen copy of a trainable branch (its current values, dtype and device)."""
        return cls(lora_A.weight, lora_B.weight, gate.weight, gate.bias, scaling)

    @classmethod
    def empty(cls, r: int, d: int, m: int, scaling: float, device=None, dtype=None) -> FrozenBranch:
        """Zeros of the right shapes (an update of 0), to be filled by ``load_state_dict`` on reload."""

        def zeros(*shape):
            return torch.zeros(*shape, device=device, dtype=dtype)

        return cls(zeros(r, d), zeros(m, r), zeros(r, d), zeros(r), scaling)

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def update(self, x: Tensor) -> Tensor:
        """``s · B diag(σ(W_g x + b_g)) A x``: (..., d) → (..., m), computed in the branch's dtype."""
        x = x.to(self.A.dtype)
        cache = self._stacked_cache
        return disel_update(x, self.A, self.B, self.gate_weight, self.gate_bias, self.scaling, cache=cache)


def stacked_gates(frozen: list[FrozenBranch], gate: DiselGate) -> DiselGate | GateView:
    """``gate`` itself without frozen branches, else every branch's gate stacked, earliest first: (r_total, d)."""
    if not frozen:
        return gate
    dtype = gate.weight.dtype
    weight = torch.cat([b.gate_weight.to(dtype) for b in frozen] + [gate.weight.detach()])  # (r_total, d)
    bias = torch.cat([b.gate_bias.to(dtype) for b in frozen] + [gate.bias.detach()])  # (r_total,)
    return GateView(weight, bias)


def init_disel_parameters(
    lora_A: nn.Linear,
    lora_B: nn.Linear,
    gate: DiselGate,
    *,
    init_weights: bool = True,
    gate_weight_init: GateWeightInit = "kaiming",
    gate_bias_init: float = DEFAULT_GATE_BIAS_INIT,
) -> None:
    """Initialise one adapter in place (THEORY.md §1, "Initialisation").

    ``A`` Kaiming-uniform; ``B = 0`` when ``init_weights`` (so the adapter is a no-op at init), else
    Kaiming-uniform (for tests that need a non-trivial update); ``W_g`` Kaiming-uniform or zero;
    ``b_g = gate_bias_init`` (default :data:`DEFAULT_GATE_BIAS_INIT`).
    """
    owner = "init_disel_parameters"
    check_bool(owner, "init_weights", init_weights)
    check_choice(owner, "gate_weight_init", gate_weight_init, GATE_WEIGHT_INITS)
    gate_bias_init = check_finite(owner, "gate_bias_init", gate_bias_init)
    with torch.no_grad():
        # a = sqrt(5) is nn.Linear's own default, the one LoRA implementations use for A.
        nn.init.kaiming_uniform_(lora_A.weight, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(lora_B.weight)
        else:
            nn.init.kaiming_uniform_(lora_B.weight, a=math.sqrt(5))
        if gate_weight_init == "kaiming":
            nn.init.kaiming_uniform_(gate.weight, a=math.sqrt(5))
        else:
            nn.init.zeros_(gate.weight)
        nn.init.constant_(gate.bias, float(gate_bias_init))


class DiselLinear(nn.Module):
    """``h = W0 x + s · B diag(σ(W_g x + b_g)) A x`` around a frozen ``nn.Linear``.

    Args:
        base: the pre-trained layer ``W0`` (out_features m, in_features d). Its parameters are frozen.
        r: rank, the number of gated rank-one components.
        lora_alpha: scaling numerator, ``s = lora_alpha / r``; ``None`` means ``s = 1``.
        dropout: dropout on the adapter input (read by both ``A`` and the gate).
        init_weights, gate_weight_init, gate_bias_init: see :func:`init_disel_parameters`.

    Shapes: ``forward`` maps (..., d) → (..., m); ``gates`` maps (..., d) → (..., r).
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        *,
        lora_alpha: float | None = None,
        dropout: float = 0.0,
        init_weights: bool = True,
        gate_weight_init: GateWeightInit = "kaiming",
        gate_bias_init: float = DEFAULT_GATE_BIAS_INIT,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"DiselLinear wraps an nn.Linear, got base={type(base).__name__}")
        checked = check_adapter_hyperparameters(
            "DiselLinear",
            r=r,
            lora_alpha=lora_alpha,
            dropout=dropout,
            init_weights=init_weights,
            gate_weight_init=gate_weight_init,
            gate_bias_init=gate_bias_init,
            alpha_may_be_none=True,
        )
        r, lora_alpha, dropout = checked["r"], checked["lora_alpha"], checked["dropout"]
        self.base = base
        self.base.requires_grad_(False)
        self.r = r
        self.scaling = 1.0 if lora_alpha is None else float(lora_alpha) / r
        d, m = base.in_features, base.out_features
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.disel_A = nn.Linear(d, r, bias=False, **factory)
        self.disel_B = nn.Linear(r, m, bias=False, **factory)
        self.disel_gate = DiselGate(d, r, bias=True, **factory)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._stacked_cache = StackedWeightCache()  # [A; W_g] kept between inference calls
        self.disel_frozen = nn.ModuleList()  # earlier task branches (add_task_branch), earliest first
        self._gate_init = {"gate_weight_init": gate_weight_init, "gate_bias_init": gate_bias_init}
        init_disel_parameters(self.disel_A, self.disel_B, self.disel_gate, init_weights=init_weights, **self._gate_init)

    def add_task_branch(self, r: int | None = None, lora_alpha: float | None = None) -> None:
        """Freeze the current components as a :class:`FrozenBranch` and start a new trainable branch of
        rank ``r`` (default: the current rank) with ``B = 0``, so the output is unchanged; scaling
        ``lora_alpha / r`` (default: the current scaling). Every branch stays active. See :mod:`disel.continual`.
        """
        owner = "DiselLinear.add_task_branch"
        r = self.r if r is None else check_rank(owner, "r", r)
        scaling = self.scaling if lora_alpha is None else check_positive_finite(owner, "lora_alpha", lora_alpha) / r
        self.disel_frozen.append(FrozenBranch.of(self.disel_A, self.disel_B, self.disel_gate, self.scaling))
        d, m = self.in_features, self.out_features
        factory = {"device": self.disel_A.weight.device, "dtype": self.disel_A.weight.dtype}
        self.disel_A = nn.Linear(d, r, bias=False, **factory)
        self.disel_B = nn.Linear(r, m, bias=False, **factory)
        self.disel_gate = DiselGate(d, r, bias=True, **factory)
        self._stacked_cache.clear()
        self.r, self.scaling = r, float(scaling)
        init_disel_parameters(self.disel_A, self.disel_B, self.disel_gate, init_weights=True, **self._gate_init)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def update(self, x: Tensor) -> Tensor:
        """The adapter's correction ``s · B diag(g(x)) A x``: (..., d) → (..., m)."""
        x = self.dropout(x)
        total = None
        for branch in self.disel_frozen:  # earlier task branches first, in the order they were added
            total = branch.update(x) if total is None else total + branch.update(x)  # (..., m)
        if self.disel_A.weight.shape[0] == 0:  # every component pruned or statically merged (disel.components)
            return x.new_zeros(*x.shape[:-1], self.out_features) if total is None else total
        update = disel_update(
            x,
            self.disel_A.weight,
            self.disel_B.weight,
            self.disel_gate.weight,
            self.disel_gate.bias,
            self.scaling,
            cache=self._stacked_cache,
        )  # (..., m)
        return update if total is None else total + update

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.update(x)  # (..., m)

    def active_gates(self) -> list[tuple[str, DiselGate]]:
        """(adapter name, gate module) of each adapter that is active; the gate recorder reads these."""
        return [("default", stacked_gates(list(self.disel_frozen), self.disel_gate))]

    def gates(self, x: Tensor) -> Tensor:
        """Gate values ``σ(W_g x + b_g)`` for an input (no dropout): (..., d) → (..., r), or with frozen task
        branches every branch's gates, earliest branch first: (..., r_total)."""
        gate = self.active_gates()[0][1]
        return gate_values(x, gate.weight, gate.bias)

    @torch.no_grad()
    def set_parameters(
        self,
        *,
        lora_A: Tensor | None = None,
        lora_B: Tensor | None = None,
        gate_weight: Tensor | None = None,
        gate_bias: Tensor | None = None,
    ) -> None:
        """Plant exact parameter values (the toy plants the Bayes-optimal gate, eq. 31).

        Shapes: ``lora_A`` (r, d), ``lora_B`` (m, r), ``gate_weight`` (r, d), ``gate_bias`` (r,).
        Values are copied (and cast to the layer's dtype). A wrong shape or a NaN / infinite value raises
        ``ValueError``, a non-numeric value ``TypeError``, each naming the argument; nothing is copied then.
        """
        targets = {
            "lora_A": self.disel_A.weight,
            "lora_B": self.disel_B.weight,
            "gate_weight": self.disel_gate.weight,
            "gate_bias": self.disel_gate.bias,
        }
        given = {"lora_A": lora_A, "lora_B": lora_B, "gate_weight": gate_weight, "gate_bias": gate_bias}
        # Check every argument before copying any, so a refused call changes nothing.
        checked = {
            name: check_parameter_tensor("DiselLinear.set_parameters", name, value, tuple(targets[name].shape))
            for name, value in given.items()
            if value is not None
        }
        for name, value in checked.items():
            targets[name].copy_(value)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, scaling={self.scaling:g}"
