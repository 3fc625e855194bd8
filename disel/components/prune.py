"""Pruning: remove the components that contribute least, per layer, so ranks follow the data."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import write_json_atomic
from .adapter_dir import load_adapter_dir
from .branches import keep_components, refuse_emptying_branched_layers, sync_peft_config
from .measure import OutputChange, measure_output_change
from .statistics import ComponentStatistics, matched_branches

__all__ = ["PruneReport", "prune", "prune_adapter_dir"]


@dataclass
class PruneReport:
    """What :func:`prune` did: kept component indices and rank per layer, adapter parameters before/after,
    and the measured output change on the given data (``None`` without data)."""

    kept: dict[str, list[int]]
    rank_before: dict[str, int]
    rank_after: dict[str, int]
    parameters_before: int
    parameters_after: int
    removed_layers: list[str]
    output_change: OutputChange | None = None
    criterion: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _select_kept(pairs, threshold: float | None, keep_fraction: float | None) -> list[Tensor]:
    """Per (branch, statistics) pair, the sorted indices of the components to keep."""
    if (threshold is None) == (keep_fraction is None):
        raise ValueError("prune needs exactly one of threshold= (a contribution) or keep_fraction= (in (0, 1])")
    if threshold is not None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
            or threshold < 0
        ):
            raise ValueError(f"threshold must be a finite number >= 0 (a contribution), got threshold={threshold!r}")
        return [
            torch.tensor([i for i, c in enumerate(e.contribution) if c > threshold], dtype=torch.long) for _, e in pairs
        ]
    if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, (int, float)) or not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be a number in (0, 1], got keep_fraction={keep_fraction!r}")
    # One ranking over all layers: per-layer ranks then follow the data instead of one global r.
    everything = [(c, p, i) for p, (_, e) in enumerate(pairs) for i, c in enumerate(e.contribution)]
    n_keep = math.ceil(keep_fraction * len(everything))
    chosen = sorted(everything, key=lambda t: -t[0])[:n_keep]
    kept: list[list[int]] = [[] for _ in pairs]
    for _, p, i in chosen:
        kept[p].append(i)
    return [torch.tensor(sorted(k), dtype=torch.long) for k in kept]


def prune(
    model: nn.Module,
    stats: ComponentStatistics,
    *,
    threshold: float | None = None,
    keep_fraction: float | None = None,
    adapter_name: str | None = None,
    batches: Iterable | Mapping[str, Iterable] | None = None,
) -> PruneReport:
    """Remove components in place by contribution: ``c_i > threshold`` kept, or the ``keep_fraction`` of all
    components (over all layers) with the largest contribution kept.

    Per adapter (``adapter_name``, default every adapter in ``stats``). A PEFT layer left with no component
    loses the adapter; the adapter config gets the new ranks (``rank_pattern``/``alpha_pattern``, one exact
    entry per layer) and the emptied layers (``exclude_modules``), so ``save_pretrained`` and
    ``PeftModel.from_pretrained`` give back the pruned model. With ``batches``, the output change is measured
    (before the change, by subtracting the removed components' output at each layer). Optimizer state held
    for the old parameters no longer applies: build a new optimizer to train on.
    """
    pairs = matched_branches(model, stats, adapter_name)
    kept = _select_kept(pairs, threshold, keep_fraction)
    refuse_emptying_branched_layers("prune", [(branch, int(keep.numel())) for (branch, _), keep in zip(pairs, kept)])
    output_change = None
    if batches is not None:
        corrections = []
        for (branch, _), keep in zip(pairs, kept):
            removed = torch.tensor(sorted(set(range(branch.rank)) - set(keep.tolist())), dtype=torch.long)
            if removed.numel():
                corrections.append((branch.layer, lambda x, b=branch, r=removed: -b.update(b.adapter_input(x), r)))
        output_change = measure_output_change(model, batches, corrections)
    report = PruneReport(
        kept={},
        rank_before={},
        rank_after={},
        parameters_before=sum(b.num_parameters() for b, _ in pairs),
        parameters_after=0,
        removed_layers=[],
        output_change=output_change,
        criterion={"threshold": threshold, "keep_fraction": keep_fraction},
    )
    for (branch, _), keep in zip(pairs, kept):
        report.rank_before[branch.name] = branch.rank
        keep_components(branch, keep.to(branch.A.weight.device))
        report.kept[branch.name] = keep.tolist()
        report.rank_after[branch.name] = int(keep.numel())
        if branch.peft and keep.numel() == 0:
            report.removed_layers.append(branch.name)
        else:
            report.parameters_after += branch.num_parameters()
    sync_peft_config(model, [b.adapter for b, _ in pairs])
    return report


def prune_adapter_dir(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    stats: ComponentStatistics | str | os.PathLike,
    *,
    base_model: nn.Module | None = None,
    threshold: float | None = None,
    keep_fraction: float | None = None,
    batches: Iterable | Mapping[str, Iterable] | None = None,
    report_name: str = "prune_report.json",
) -> PruneReport:
    """Adapter directory in, pruned adapter directory + ``report_name`` (JSON) out (for a CLI).

    ``base_model`` defaults to ``AutoModelForCausalLM.from_pretrained`` of the adapter config's
    ``base_model_name_or_path`` (a local path; nothing is downloaded by this function itself).
    ``stats`` is a :class:`ComponentStatistics` or the path of its JSON; statistics of another adapter
    (other layers or ranks) are refused before any model is loaded.
    """
    model, stats = load_adapter_dir(adapter_dir, out_dir, stats, base_model)
    report = prune(model, stats, threshold=threshold, keep_fraction=keep_fraction, batches=batches)
    model.save_pretrained(os.fspath(out_dir))
    write_json_atomic(Path(out_dir) / report_name, report.to_dict())
    return report
