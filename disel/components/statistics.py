"""Per-component gate statistics measured on data (the definitions are in :mod:`disel.components`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import gate_values
from ..io import write_json_atomic
from .branches import Branch, find_branches
from .measure import call_model, checked_batches, data_sources, eval_no_grad, flat_tokens, token_mask

__all__ = ["ComponentStatistics", "LayerComponents", "component_statistics", "matched_branches"]


@dataclass
class LayerComponents:
    """Statistics of the ``rank`` components of one adapter in one layer (lists indexed by component)."""

    module: str  # path relative to the base model, e.g. "model.layers.3.self_attn.q_proj"
    adapter: str
    scaling: float  # s
    tokens: int  # number of input vectors the statistics are over
    gate_mean: list[float]  # ḡ_i
    gate_std: list[float]  # sd_i
    contribution: list[float]  # c_i = s · E[g_i |a_iᵀx|] · ‖b_i‖
    merge_error_bound: list[float]  # e_i = s · ‖b_i‖ · sd_i · sqrt(E[(a_iᵀx)²])
    b_norm: list[float]  # ‖b_i‖
    gate_correlation: list[list[float]] | None = None  # corr(g_i, g_j), with pairwise=True only

    @property
    def rank(self) -> int:
        return len(self.gate_mean)

    @property
    def key(self) -> tuple[str, str]:
        return self.module, self.adapter


@dataclass
class ComponentStatistics:
    """Per-layer component statistics: ``layers`` pooled over all data, ``domains`` per named data source."""

    layers: list[LayerComponents]
    domains: dict[str, list[LayerComponents]] = field(default_factory=dict)

    def get(self, module: str, adapter: str = "default", domain: str | None = None) -> LayerComponents:
        entries = self.layers if domain is None else self.domains[domain]
        for entry in entries:
            if entry.key == (module, adapter):
                return entry
        raise KeyError(f"no statistics for module {module!r}, adapter {adapter!r}")

    def max_gate_std(self, module: str, adapter: str = "default") -> list[float]:
        """Per component, the largest gate std over the pooled data and every domain (a gate must be
        constant on each domain it will meet, and across them, to be merged)."""
        stds = [self.get(module, adapter).gate_std] + [self.get(module, adapter, d).gate_std for d in self.domains]
        return [max(values) for values in zip(*stds)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [asdict(e) for e in self.layers],
            "domains": {name: [asdict(e) for e in entries] for name, entries in self.domains.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComponentStatistics:
        """The statistics of :meth:`to_dict` (other keys of ``data``, such as a description, are ignored)."""
        if not isinstance(data, Mapping) or "layers" not in data:
            raise ValueError("ComponentStatistics.from_dict expects a dict with a 'layers' list (from to_dict)")
        return cls(
            layers=[LayerComponents(**e) for e in data["layers"]],
            domains={
                name: [LayerComponents(**e) for e in entries] for name, entries in data.get("domains", {}).items()
            },
        )

    def save_json(self, path: str | os.PathLike, **extra: Any) -> None:
        """Write :meth:`to_dict` (plus ``extra`` top-level keys, e.g. what was measured) to ``path`` atomically."""
        write_json_atomic(path, {**extra, **self.to_dict()})

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> ComponentStatistics:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


class _Accumulator:
    """Streaming float64 sums per component over N tokens, gates taken about a shift c (the first batch's
    mean gate) so that a constant gate has a variance of exactly 0 (no cancellation in E[g²] − ḡ²):
    Σ(g − c), Σ(g − c)², Σ g·|aᵀx|, Σ (aᵀx)², and Σ (g − c)(g − c)ᵀ if pairwise."""

    def __init__(self, rank: int, device: torch.device, pairwise: bool = False) -> None:
        self.count = 0
        self.shift = torch.zeros(rank, dtype=torch.float64, device=device)
        self.sums = torch.zeros(4, rank, dtype=torch.float64, device=device)
        self.gram = torch.zeros(rank, rank, dtype=torch.float64, device=device) if pairwise else None

    def add(self, gates: Tensor, projections: Tensor) -> None:
        g, ax = gates.double(), projections.double()  # (N, r)
        if g.shape[0] == 0:
            return
        if self.count == 0:
            self.shift = g.mean(0)
        gc = g - self.shift  # (N, r)
        self.count += g.shape[0]
        self.sums += torch.stack([gc.sum(0), (gc * gc).sum(0), (g * ax.abs()).sum(0), (ax * ax).sum(0)])
        if self.gram is not None:
            self.gram += gc.T @ gc  # (r, r)

    def _shifted(self, shift: Tensor) -> tuple[Tensor, Tensor | None]:
        """The sums re-expressed about another shift (exact algebra, for pooling)."""
        d = self.shift - shift  # (g − shift) = (g − c) + d
        s1, s2 = self.sums[0], self.sums[1]
        sums = self.sums.clone()
        sums[0] = s1 + self.count * d
        sums[1] = s2 + 2 * d * s1 + self.count * d * d
        gram = None
        if self.gram is not None:
            gram = self.gram + torch.outer(s1, d) + torch.outer(d, s1) + self.count * torch.outer(d, d)
        return sums, gram

    def merged(self, other: _Accumulator) -> _Accumulator:
        out = _Accumulator(self.sums.shape[1], self.sums.device, self.gram is not None)
        if self.count == 0 or other.count == 0:
            source = other if self.count == 0 else self
            out.count, out.shift, out.sums, out.gram = source.count, source.shift, source.sums, source.gram
            return out
        out.count, out.shift = self.count + other.count, self.shift
        sums_other, gram_other = other._shifted(self.shift)
        out.sums = self.sums + sums_other
        out.gram = None if self.gram is None else self.gram + gram_other
        return out

    def summary(self, branch: Branch) -> LayerComponents:
        n = max(self.count, 1)
        mean_gc, mean_gc2, mean_gax, mean_ax2 = (self.sums / n).cpu().unbind(0)
        mean_g = self.shift.cpu() + mean_gc
        std = (mean_gc2 - mean_gc**2).clamp_min(0).sqrt()
        b_norm = branch.B.weight.detach().double().norm(dim=0).cpu()  # (r,)
        s = branch.scaling
        correlation = None
        if self.gram is not None:
            covariance = self.gram.cpu() / n - torch.outer(mean_gc, mean_gc)  # (r, r)
            denominator = torch.outer(std, std)
            correlation = torch.where(denominator > 0, covariance / denominator.clamp_min(1e-300), 0.0).tolist()
        return LayerComponents(
            module=branch.path,
            adapter=branch.adapter,
            scaling=s,
            tokens=self.count,
            gate_mean=mean_g.tolist(),
            gate_std=std.tolist(),
            contribution=(s * mean_gax * b_norm).tolist(),
            merge_error_bound=(s * b_norm * std * mean_ax2.sqrt()).tolist(),
            b_norm=b_norm.tolist(),
            gate_correlation=correlation,
        )


def _accumulate(
    model: nn.Module,
    branches: list[Branch],
    source: Iterable,
    name: str | None,
    token_mask_key: str | None,
    pairwise: bool,
) -> list[_Accumulator]:
    """One accumulator per branch over the batches of ``source`` (forward hooks on the adapted layers)."""
    accumulators = [_Accumulator(b.rank, b.A.weight.device, pairwise) for b in branches]
    mask: dict[str, Tensor | None] = {"current": None}

    def make_hook(indices: list[int]) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            for i in indices:
                branch = branches[i]
                x = flat_tokens(branch.adapter_input(args[0]), mask["current"])  # (N, d)
                gate = branch.gate
                accumulators[i].add(gate_values(x, gate.weight, gate.bias), F.linear(x, branch.A.weight))

        return hook

    by_layer: dict[int, tuple[nn.Module, list[int]]] = {}
    for i, branch in enumerate(branches):
        by_layer.setdefault(id(branch.layer), (branch.layer, []))[1].append(i)
    handles = [layer.register_forward_hook(make_hook(indices)) for layer, indices in by_layer.values()]
    try:
        with eval_no_grad(model):
            for batch in checked_batches(model, source, "batches", name):
                mask["current"] = token_mask(batch, token_mask_key)
                call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return accumulators


def component_statistics(
    model: nn.Module,
    batches: Iterable | Mapping[str, Iterable],
    *,
    adapter_name: str | None = None,
    token_mask_key: str | None = "attention_mask",
    pairwise: bool = False,
) -> ComponentStatistics:
    """Measure per-component gate mean/std, contribution and merge error bound (:mod:`disel.components`) on data.

    Args:
        model: a PEFT DISeL model, or any model containing :class:`~disel.DiselLinear` layers.
        batches: an iterable of batches, or ``{"math": batches, "english": batches}`` for per-domain
            statistics (``layers`` then pools all domains). A batch is a tensor (``model(batch)``), a tuple
            (``model(*batch)``) or a dict (``model(**batch)``).
        adapter_name: only this adapter (default: every adapter that is active).
        token_mask_key: in dict batches, the (batch, seq) mask of tokens to count (padding left out).
        pairwise: also record the gate correlation matrix (r × r per layer), for :func:`align_components`.

    The model runs in eval mode under ``no_grad`` (no dropout); its training mode is restored after.
    ``ValueError`` (naming ``batches``, the domain and the batch index) for an empty dict, a source with no
    batch, or a batch that does not fit the model's input (:func:`~disel.components.measure.checked_batches`).
    """
    branches = find_branches(model, adapter_name, active_only=True)
    if not branches:
        which = "" if adapter_name is None else f" {adapter_name!r}"
        raise ValueError(f"component_statistics: no active DISeL adapter{which} in the model")
    per_domain = {
        name: _accumulate(model, branches, source, name, token_mask_key, pairwise)
        for name, source in data_sources(batches).items()
    }
    names = list(per_domain)
    pooled = per_domain[names[0]]
    for name in names[1:]:
        pooled = [acc.merged(other) for acc, other in zip(pooled, per_domain[name])]
    if all(acc.count == 0 for acc in pooled):
        raise ValueError(
            "component_statistics: the batches reached no adapted layer (no tokens: empty batches, or an "
            f"attention mask {token_mask_key!r} of zeros?)"
        )
    domains = {}
    if names != [None]:
        domains = {name: [acc.summary(b) for acc, b in zip(per_domain[name], branches)] for name in names}
    return ComponentStatistics(layers=[acc.summary(b) for acc, b in zip(pooled, branches)], domains=domains)


def matched_branches(
    model: nn.Module, stats: ComponentStatistics, adapter_name: str | None
) -> list[tuple[Branch, LayerComponents]]:
    """(branch, its statistics) for every layer of ``stats`` (of ``adapter_name`` if given); refuses
    statistics naming a branch the model lacks, or measured when the branch had another rank."""
    if not isinstance(stats, ComponentStatistics):
        raise TypeError(f"stats must be a ComponentStatistics (from component_statistics), got {type(stats).__name__}")
    branches = {(b.path, b.adapter): b for b in find_branches(model, adapter_name)}
    pairs = []
    for entry in stats.layers:
        if adapter_name is not None and entry.adapter != adapter_name:
            continue
        branch = branches.get(entry.key)
        if branch is None:
            raise ValueError(
                f"stats name module {entry.module!r} with adapter {entry.adapter!r}, which the model does not hold"
            )
        if entry.rank != branch.rank:
            raise ValueError(
                f"stats for {branch.path!r} (adapter {branch.adapter!r}) cover {entry.rank} components "
                f"but the layer has {branch.rank}: the statistics belong to another adapter, or to this one before "
                "a prune or merge; recompute component_statistics on the model as it is now"
            )
        pairs.append((branch, entry))
    if not pairs:
        raise ValueError(f"stats hold no layer of adapter {adapter_name!r}" if adapter_name else "stats hold no layer")
    return pairs
