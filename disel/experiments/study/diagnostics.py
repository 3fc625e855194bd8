"""The toy's failure signature, read off an LLM's DISeL adapters.

In the toy, trained DISeL with the paper's initialisation gets stuck on some seeds with a gate row
``W_g[i]`` pointing *against* its own component's ``A[i]`` (cosine −0.84 to −0.94): the component then
closes its own gate exactly where it would act. :func:`gate_alignment` measures, for every adapted
module and rank component, ``cos(W_g[i], A[i])``, and the fraction of components below a threshold
(−0.5 by default), per layer and overall (mean gates per domain: :mod:`disel.experiments.eval.gates`).

Adapters are found by type (:class:`disel.DiselLinear` and the PEFT layer
:class:`disel.tuner.layer.DiselLayer`), never by parameter names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from disel.layers import DiselLinear
from disel.recording import parse_layer_index
from disel.tuner.layer import DiselLayer

__all__ = [
    "ANTI_ALIGNED_BELOW",
    "ComponentCosines",
    "GateAlignment",
    "gate_alignment",
    "row_cosines",
]

# A component counts as anti-aligned when cos(W_g[i], A[i]) is below this (the toy's stuck rows: −0.84 to −0.94).
ANTI_ALIGNED_BELOW = -0.5


def row_cosines(gate_weight: Tensor, lora_A: Tensor) -> Tensor:
    """``cos(W_g[i], A[i])`` for each rank component, in float64: (r, d), (r, d) → (r,).

    A zero row (e.g. a zero-initialised gate) has cosine 0: it points nowhere, neither with nor against.
    """
    if gate_weight.shape != lora_A.shape:
        raise ValueError(f"gate_weight {tuple(gate_weight.shape)} and lora_A {tuple(lora_A.shape)} must match")
    g, a = gate_weight.detach().double(), lora_A.detach().double()
    norms = g.norm(dim=1) * a.norm(dim=1)  # (r,)
    dots = (g * a).sum(dim=1)  # (r,)
    return torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(dots))


@dataclass(frozen=True)
class ComponentCosines:
    """Cosines of one adapted module: ``path`` (full module path), ``layer`` (index or None), ``adapter``,
    ``cosines`` (r,) as a list."""

    path: str
    layer: int | None
    adapter: str
    cosines: list[float]


@dataclass(frozen=True)
class GateAlignment:
    """Anti-alignment summary of a model's DISeL adapters.

    ``fraction``: anti-aligned components / all components; ``by_layer``: the same per layer index
    (modules without one are in ``fraction`` only); ``threshold``: the cosine bound used; ``modules``:
    the per-module cosines.
    """

    fraction: float
    by_layer: dict[int, float]
    components: int
    threshold: float
    modules: list[ComponentCosines] = field(default_factory=list)

    @property
    def min_cosine(self) -> float:
        return min((c for m in self.modules for c in m.cosines), default=float("nan"))


def _adapters(model: nn.Module) -> Iterable[tuple[str, str, Tensor, Tensor]]:
    """(path, adapter name, A (r, d), W_g (r, d)) of every DISeL adapter in ``model``."""
    for path, module in model.named_modules():
        if isinstance(module, DiselLinear):
            yield path, "default", module.disel_A.weight, module.disel_gate.weight
        elif isinstance(module, DiselLayer):
            for name in module.disel_A:
                yield path, name, module.disel_A[name].weight, module.disel_gate[name].weight


def gate_alignment(model: nn.Module, threshold: float = ANTI_ALIGNED_BELOW) -> GateAlignment:
    """Cosine between each gate row and its A row for every DISeL module and component (module docstring).

    Raises ``ValueError`` if the model has no DISeL adapter.
    """
    modules = [
        ComponentCosines(path, parse_layer_index(path), adapter, row_cosines(gate_weight, lora_A).tolist())
        for path, adapter, lora_A, gate_weight in _adapters(model)
    ]
    if not modules:
        raise ValueError(f"the {type(model).__name__} has no DISeL adapter (DiselLinear or PEFT DiselLayer)")

    def fraction_below(group: list[ComponentCosines]) -> float:
        cosines = [c for m in group for c in m.cosines]
        return sum(c < threshold for c in cosines) / len(cosines)

    layers = sorted({m.layer for m in modules if m.layer is not None})
    return GateAlignment(
        fraction=fraction_below(modules),
        by_layer={layer: fraction_below([m for m in modules if m.layer == layer]) for layer in layers},
        components=sum(len(m.cosines) for m in modules),
        threshold=threshold,
        modules=modules,
    )
