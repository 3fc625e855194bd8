"""Partial (static) merge: fold the components whose gate is constant on the data into the base weights."""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from .._validate import check_non_negative_finite
from ..io import write_json_atomic
from .adapter_dir import load_adapter_dir
from .branches import (
    Branch,
    config_matches_layers,
    find_branches,
    keep_components,
    refuse_emptying_branched_layers,
    restore_modules,
    root_model,
    saved_modules,
    sync_peft_config,
    tuner_of,
)
from .measure import OutputChange, measure_output_change
from .statistics import ComponentStatistics, LayerComponents, matched_branches

__all__ = ["MergeReport", "has_static_merges", "merge_static", "merge_static_adapter_dir", "unmerge_static"]

MERGED_BASE_DIR = "merged_base"  # inside merge_static_adapter_dir's out_dir: the base model with the folds


@dataclass
class MergeReport:
    """What :func:`merge_static` did: folded component indices and remaining (gated) rank per layer, the
    measured output error on the given data (``None`` without data) and the summed error bound."""

    merged: dict[str, list[int]]
    remaining_rank: dict[str, int]
    std_threshold: float
    output_change: OutputChange | None = None
    error_bound: dict[str, float] = field(default_factory=dict)
    fully_static: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FOLD_SEQUENCE = itertools.count()
_STATIC_MERGES = "_disel_static_merges"  # attribute of a layer: its list of _StaticMerge records


@dataclass
class _StaticMerge:
    """Everything needed to undo one static merge on one branch exactly (kept on the layer, never saved)."""

    adapter: str
    weight_before: Tensor  # the base weight before the fold (a copy)
    modules: dict[str, nn.Module]  # the branch's modules before the fold (the originals)
    rank: int
    scaling: float
    delta: Tensor  # the folded s · B_S diag(ḡ_S) A_S, (m, d), for inspection
    config_before: Any = None
    sequence: int = field(default_factory=lambda: next(_FOLD_SEQUENCE))  # order of folds across layers


def _fold(branch: Branch, components: Tensor, gate_means: Tensor) -> Tensor:
    """Add ``s · B_S diag(ḡ_S) A_S`` to the base weight; returns that delta (m, d)."""
    base = branch.base
    if not isinstance(base, (nn.Linear, Conv1D)) or not base.weight.dtype.is_floating_point:
        raise TypeError(
            f"merge_static folds into a floating-point nn.Linear / Conv1D weight; {branch.path!r} has "
            f"{type(base).__name__} with dtype {getattr(base.weight, 'dtype', None)} "
            "(quantized bases cannot be folded into)"
        )
    with torch.no_grad():
        A = branch.A.weight[components].double()  # (k, d)
        B = branch.B.weight[:, components].double() * gate_means.double().to(A.device)  # (m, k)
        delta = (B @ A) * branch.scaling  # (m, d)
        weight = base.weight
        weight.add_((delta if isinstance(base, nn.Linear) else delta.t()).to(weight.device, weight.dtype))
    return delta


def _static_plan(model, stats, adapter_name, std_threshold) -> list[tuple[Branch, LayerComponents, Tensor, Tensor]]:
    """Per branch: its statistics, the indices of its static components and their pooled gate means."""
    plan = []
    for branch, entry in matched_branches(model, stats, adapter_name):
        stds = stats.max_gate_std(entry.module, entry.adapter)
        static = torch.tensor([i for i, sd in enumerate(stds) if sd < std_threshold], dtype=torch.long)
        plan.append((branch, entry, static, torch.tensor(entry.gate_mean, dtype=torch.float64)[static]))
    return plan


def _fold_and_record(model: nn.Module, branch: Branch, static: Tensor, means: Tensor) -> int:
    """Fold the static components into W0, drop them from the branch, record how to undo it; the rank left."""
    tuner = tuner_of(model)
    record = _StaticMerge(
        adapter=branch.adapter,
        weight_before=branch.base.weight.detach().clone(),
        modules=saved_modules(branch),
        rank=branch.rank,
        scaling=branch.scaling,
        delta=torch.empty(0),
        config_before=None if tuner is None else copy.deepcopy(tuner.peft_config[branch.adapter]),
    )
    record.delta = _fold(branch, static.to(branch.A.weight.device), means)
    keep = torch.tensor(sorted(set(range(branch.rank)) - set(static.tolist())), dtype=torch.long)
    keep_components(branch, keep.to(branch.A.weight.device))
    branch.layer.__dict__.setdefault(_STATIC_MERGES, []).append(record)
    return int(keep.numel())


def _gate_to_mean_change(branch: Branch, static: Tensor, means: Tensor):
    """``f(x)`` = the change of the branch's update when the static components' gates are replaced by their means."""

    def change(x: Tensor) -> Tensor:
        x = branch.adapter_input(x)
        return branch.static_update(x, static, means) - branch.update(x, static)

    return change


def merge_static(
    model: nn.Module,
    stats: ComponentStatistics,
    *,
    std_threshold: float,
    adapter_name: str | None = None,
    batches: Iterable | Mapping[str, Iterable] | None = None,
) -> MergeReport:
    """Fold the components whose gate is (nearly) constant into the base weights, keep the rest gated.

    A component is static when its gate standard deviation is below ``std_threshold`` on the pooled data
    and on every domain of ``stats``; it is folded as ``W0 += s · ḡ_i · b_i a_iᵀ`` (ḡ_i its pooled gate
    mean) and removed from the adapter. The fold is recorded on the layer and :func:`unmerge_static`
    undoes it exactly (the weights and parameters before are kept, as copies / the original modules).
    ``merge_and_unload`` still refuses while any gated component is left; once every component of every
    layer is folded (``report.fully_static``) it merges completely. The saved adapter of a partially
    merged model holds only the gated rest: deploy it on the merged base (:func:`merge_static_adapter_dir`
    saves both), or undo first to save the original. The folds live in the base weights, so
    ``disable_adapter()`` and ``unload()`` keep them: call :func:`unmerge_static` first to get the
    pre-trained base back.

    With ``batches``, the output error is measured before the fold, by replacing each static component's
    gate by its mean at each layer: ``E‖s (g_i(x) − ḡ_i) b_i a_iᵀx‖`` summed through the model.
    """
    std_threshold = check_non_negative_finite("merge_static", "std_threshold", std_threshold)
    plan = _static_plan(model, stats, adapter_name, std_threshold)
    refuse_emptying_branched_layers("merge_static", [(b, b.rank - int(static.numel())) for b, _, static, _ in plan])
    output_change = None
    if batches is not None:
        corrections = [
            (branch.layer, _gate_to_mean_change(branch, static, means))
            for branch, _, static, means in plan
            if static.numel()
        ]
        output_change = measure_output_change(model, batches, corrections)
    report = MergeReport(merged={}, remaining_rank={}, std_threshold=float(std_threshold), output_change=output_change)
    for branch, entry, static, means in plan:
        report.merged[branch.name] = static.tolist()
        report.error_bound[branch.name] = float(sum(entry.merge_error_bound[i] for i in static.tolist()))
        report.remaining_rank[branch.name] = (
            _fold_and_record(model, branch, static, means) if static.numel() else branch.rank
        )
    adapters = {b.adapter for b, *_ in plan}
    sync_peft_config(model, adapters)
    report.fully_static = not any(b.rank for adapter in adapters for b in find_branches(model, adapter))
    return report


def unmerge_static(model: nn.Module) -> int:
    """Undo every :func:`merge_static` on ``model`` exactly (base weights, adapter parameters and config
    restored bit for bit); returns the number of layer folds undone."""
    undone = 0
    earliest: dict[str, _StaticMerge] = {}  # per adapter, the first fold: its config is the one before any fold
    for path, layer in root_model(model).named_modules():
        records = layer.__dict__.get(_STATIC_MERGES)
        while records:
            record = records.pop()
            branch = Branch(path, record.adapter, layer)
            with torch.no_grad():
                branch.base.weight.copy_(record.weight_before)
            restore_modules(branch, record.modules, record.rank, record.scaling)
            if record.adapter not in earliest or record.sequence < earliest[record.adapter].sequence:
                earliest[record.adapter] = record
            undone += 1
    tuner = tuner_of(model)
    if tuner is not None:
        for adapter, record in earliest.items():
            if record.config_before is not None:
                tuner.peft_config[adapter] = record.config_before
            # A prune after the merge changed ranks that config does not know: write the ranks as they are.
            if not config_matches_layers(tuner, adapter):
                sync_peft_config(model, [adapter])
    return undone


def has_static_merges(layer: nn.Module) -> bool:
    """Whether :func:`merge_static` folded components into this layer's base weight (and not undone)."""
    return bool(layer.__dict__.get(_STATIC_MERGES))


def merge_static_adapter_dir(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    stats: ComponentStatistics | str | os.PathLike,
    *,
    std_threshold: float,
    base_model: nn.Module | None = None,
    batches: Iterable | Mapping[str, Iterable] | None = None,
    report_name: str = "merge_report.json",
) -> MergeReport:
    """Adapter directory in; out: ``out_dir/merged_base/`` (the base model with the static components
    folded in, ``save_pretrained`` form), the gated rest as an adapter in ``out_dir`` (its
    ``base_model_name_or_path`` is that merged base; no adapter when ``report.fully_static``: the merged
    base is then the whole model) and ``report_name`` (JSON).

    ``base_model`` (the model ``adapter_dir`` was trained on) defaults to ``AutoModelForCausalLM
    .from_pretrained`` of the adapter config's ``base_model_name_or_path``, as in :func:`prune_adapter_dir`;
    ``stats`` is a :class:`ComponentStatistics` or the path of its JSON; statistics of another adapter (other
    layers or ranks) are refused before any model is loaded. Load the result with
    ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out_dir / "merged_base"), out_dir)``.
    """
    out_dir = Path(out_dir)
    model, stats = load_adapter_dir(adapter_dir, out_dir, stats, base_model)
    report = merge_static(model, stats, std_threshold=std_threshold, batches=batches)
    merged_base = out_dir / MERGED_BASE_DIR
    if not report.fully_static:
        for config in model.peft_config.values():
            config.base_model_name_or_path = str(merged_base.resolve())
        # PEFT's save reads the base's config.json (to see whether the vocabulary changed): write it first.
        model.get_base_model().config.save_pretrained(merged_base)
        model.save_pretrained(os.fspath(out_dir))
    model.unload().save_pretrained(os.fspath(merged_base))  # unload keeps the folds in the base weights
    write_json_atomic(out_dir / report_name, report.to_dict())
    return report
