"""Aligning components that share one gate, so that pruning can then lower the rank of their group."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..functional import disel_update
from .branches import Branch
from .measure import OutputChange, measure_output_change
from .statistics import ComponentStatistics, LayerComponents, matched_branches

__all__ = ["AlignReport", "align_components"]


@dataclass
class AlignReport:
    """What :func:`align_components` did: per layer, the groups of components that now share one gate
    (component indices), and the measured output change on the given data (``None`` without data)."""

    groups: dict[str, list[list[int]]]
    min_gate_correlation: float
    output_change: OutputChange | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _correlated_groups(correlation: list[list[float]], stds: list[float], threshold: float) -> list[list[int]]:
    """Connected components of the graph "corr(g_i, g_j) ≥ threshold" (constant gates stay alone)."""
    r = len(stds)
    parent = list(range(r))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(r):
        for j in range(i + 1, r):
            if stds[i] > 0 and stds[j] > 0 and correlation[i][j] >= threshold:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(r):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _aligned_weights(branch: Branch, entry: LayerComponents, groups: list[list[int]]) -> dict[str, Tensor]:
    """The branch's ``A``, ``B``, ``W_g``, ``b_g`` (float64 copies) with each group in the SVD basis of its
    summed update ``B_G A_G`` and one gate per group (the contribution-weighted mean of its gate rows)."""
    with torch.no_grad():
        A, B = branch.A.weight.detach().double().clone(), branch.B.weight.detach().double().clone()
        W, b = branch.gate.weight.detach().double().clone(), branch.gate.bias.detach().double().clone()
        for group in groups:
            index = torch.tensor(group, device=A.device)
            U, S, Vh = torch.linalg.svd(B[:, index] @ A[index], full_matrices=False)  # (m, k), (k,), (k, d)
            k = len(group)
            root = S[:k].sqrt()
            B[:, index] = U[:, :k] * root
            A[index] = root[:, None] * Vh[:k]
            weights = torch.tensor([entry.contribution[i] for i in group], dtype=torch.float64, device=A.device)
            weights = weights / weights.sum() if float(weights.sum()) > 0 else torch.full_like(weights, 1 / k)
            W[index] = (weights[:, None] * W[index]).sum(0)
            b[index] = (weights * b[index]).sum()
    return {"A": A, "B": B, "W": W, "b": b}


def _alignment_change(branch: Branch, new: dict[str, Tensor]):
    """``f(x)`` = the aligned branch's update minus the current one, for :func:`measure_output_change`."""

    def change(x: Tensor) -> Tensor:
        x = branch.adapter_input(x)
        dt = branch.A.weight.dtype
        aligned = disel_update(x, new["A"].to(dt), new["B"].to(dt), new["W"].to(dt), new["b"].to(dt), branch.scaling)
        return aligned - branch.update(x, torch.arange(branch.rank, device=x.device))

    return change


def align_components(
    model: nn.Module,
    stats: ComponentStatistics,
    *,
    min_gate_correlation: float = 0.99,
    adapter_name: str | None = None,
    batches: Iterable | Mapping[str, Iterable] | None = None,
) -> AlignReport:
    """Re-express components that share (nearly) one gate in the SVD basis of their summed update, in place.

    Components whose gates are perfectly correlated act as one gate times ``Σ_i b_i a_iᵀ``; gradient
    training spreads such an update over all of them, so no single component is negligible and
    :func:`prune` cannot lower the rank. Within each group of components with pairwise gate correlation
    ``≥ min_gate_correlation`` (``stats`` from ``component_statistics(..., pairwise=True)``), ``B_G A_G``
    is replaced by its SVD factors ``b'_j = u_j √σ_j``, ``a'_j = √σ_j v_jᵀ`` (same number of components,
    so the rank does not change) and every gate of the group by one gate: the contribution-weighted mean
    of the group's ``(W_g, b_g)`` rows. Exact when the group's gates are identical; otherwise the output
    change is measured on ``batches``. The small singular directions then have small contributions:
    recompute the statistics and :func:`prune` them.
    """
    if not 0 < min_gate_correlation <= 1:
        raise ValueError(f"min_gate_correlation must be in (0, 1], got min_gate_correlation={min_gate_correlation!r}")
    plan = []
    for branch, entry in matched_branches(model, stats, adapter_name):
        if entry.gate_correlation is None:
            raise ValueError("align_components needs component_statistics(..., pairwise=True) (gate correlations)")
        groups = _correlated_groups(entry.gate_correlation, entry.gate_std, min_gate_correlation)
        plan.append((branch, groups, _aligned_weights(branch, entry, groups)))
    output_change = None
    if batches is not None:
        corrections = [(branch.layer, _alignment_change(branch, new)) for branch, groups, new in plan if groups]
        output_change = measure_output_change(model, batches, corrections)
    report = AlignReport(groups={}, min_gate_correlation=float(min_gate_correlation), output_change=output_change)
    for branch, groups, new in plan:
        report.groups[branch.name] = groups
        if groups:
            with torch.no_grad():
                branch.A.weight.copy_(new["A"])
                branch.B.weight.copy_(new["B"])
                branch.gate.weight.copy_(new["W"])
                branch.gate.bias.copy_(new["b"])
    return report
