"""``add_weighted_adapter`` for DISeL: the "cat" combination, the one that is exact for gated updates.

A DISeL layer computes ``Σ_i s · g_i(x) (a_iᵀx) b_i``; each rank-one component carries its own gate, so a
weighted sum of adapters is again a DISeL adapter whose components are all of theirs, side by side, with
each ``b_i`` scaled by its adapter's weight and scaling.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner

from .layer import DiselLayer

__all__ = ["CAT_ONLY_REASON", "combine_cat"]

CAT_ONLY_REASON = (
    "DISeL adapters combine only with combination_type='cat': a DISeL update s · B diag(g(x)) A x has no "
    "fixed weight ΔW (each component carries its own input-dependent gate), so combinations that sum or "
    "SVD-compress B A products, or average A, B and W_g entry-wise (linear, svd, ties, dare_*, "
    "magnitude_prune*), do not give the weighted sum of the adapters' gated updates. 'cat' stacks the "
    "components with their gates and is exact (the new rank is the sum of the ranks)."
)

# PEFT's add_weighted_adapter options of the other combination types, at the values meaning "not used".
_UNUSED_OPTION_DEFAULTS = {"svd_full_matrices": True, "majority_sign_method": "total"}


def combine_cat(
    tuner: BaseTuner,
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    *,
    combination_type: str = "cat",
    **other_options: Any,
) -> None:
    """Add ``adapter_name`` to the DISeL tuner computing exactly ``Σ_k weights[k] · update_k(x)`` on every layer.

    Per layer, the components of the adapters present there are stacked: ``A`` (r_k, d), ``W_g`` (r_k, d)
    and ``b_g`` (r_k,) rows concatenated, ``B`` (m, r_k) columns concatenated after scaling by
    ``weights[k] · s_k``; the new scaling is 1 (``lora_alpha = r``). The new config targets exactly those
    layers, with their ranks in ``rank_pattern``, so it saves and reloads with plain PEFT calls. The new
    adapter is not activated.
    """
    _check_cat_arguments(tuner, adapters, weights, adapter_name, combination_type, other_options)
    plan = []  # (path, layer, [(adapter, weight)]) for each layer holding at least one of the adapters
    for path, layer in tuner.model.named_modules():
        if isinstance(layer, DiselLayer):
            present = [(a, float(w)) for a, w in zip(adapters, weights) if a in layer.disel_A]
            if present:
                plan.append((path, layer, present))
    if not plan:
        raise ValueError(f"adapters {list(adapters)} adapt no layer of the model")
    ranks = {path: sum(layer.r[a] for a, _ in present) for path, layer, present in plan}
    tuner.peft_config[adapter_name] = _cat_config(tuner.peft_config[adapters[0]], ranks)
    tuner.inject_adapter(tuner.model, adapter_name)
    with torch.no_grad():
        for path, layer, present in plan:
            _copy_stacked(layer, adapter_name, present)
            if layer.scaling[adapter_name] != 1.0:
                raise AssertionError(
                    f"combined adapter scaling at {path!r} is {layer.scaling[adapter_name]}, expected 1"
                )


def _check_cat_arguments(tuner, adapters, weights, adapter_name, combination_type, other_options) -> None:
    """ValueError naming the argument for anything ``combine_cat`` cannot do exactly."""
    if combination_type != "cat":
        raise ValueError(f"combination_type={combination_type!r} is not supported. {CAT_ONLY_REASON}")
    used = sorted(k for k, v in other_options.items() if v is not None and v != _UNUSED_OPTION_DEFAULTS.get(k))
    if used:
        raise ValueError(f"add_weighted_adapter: {used} apply to other combination types only. {CAT_ONLY_REASON}")
    if isinstance(adapters, str) or not isinstance(adapters, Sequence) or not adapters:
        raise ValueError(f"adapters must be a non-empty list of adapter names, got adapters={adapters!r}")
    missing = [a for a in adapters if a not in tuner.peft_config]
    if missing:
        raise ValueError(f"adapters {missing} do not exist; the model holds {sorted(tuner.peft_config)}")
    branched = [a for a in adapters if tuner.peft_config[a].frozen_branches]
    if branched:
        raise ValueError(
            f"adapters {branched} hold frozen task branches (disel.add_task_branch); combining them is not "
            "implemented: 'cat' would stack only their trainable branches and drop the frozen ones"
        )
    if len(set(adapters)) != len(adapters):
        raise ValueError(f"adapters must not repeat a name, got adapters={list(adapters)!r}")
    if (
        isinstance(weights, (str, bytes))
        or not isinstance(weights, Sequence)
        or len(weights) != len(adapters)
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights)
    ):
        raise ValueError(f"weights must be {len(adapters)} finite numbers (one per adapter), got weights={weights!r}")
    if not isinstance(adapter_name, str) or not adapter_name or adapter_name in tuner.peft_config:
        raise ValueError(
            f"adapter_name must be a new adapter name, got adapter_name={adapter_name!r} "
            f"(existing: {sorted(tuner.peft_config)})"
        )
    with_heads = [a for a in adapters if tuner.peft_config[a].modules_to_save]
    if with_heads:
        raise ValueError(f"adapters {with_heads} train modules_to_save (full modules), which cannot be stacked")


def _cat_config(template, ranks: dict[str, int]):
    """``template`` retargeted at exactly the layers in ``ranks`` (module path → rank), scaling 1 on each."""
    keys = {path: "^" + re.escape(path) for path in ranks}  # matches exactly this module under PEFT's get_pattern_key
    return dataclasses.replace(
        template,
        r=max(ranks.values()),
        lora_alpha=max(ranks.values()),
        target_modules=set(ranks),
        exclude_modules=None,
        layers_to_transform=None,
        layers_pattern=None,
        rank_pattern={keys[p]: r for p, r in ranks.items()},
        alpha_pattern={keys[p]: float(r) for p, r in ranks.items()},  # scaling 1: the weights go into B
    )


def _copy_stacked(layer: DiselLayer, adapter_name: str, present: list[tuple[str, float]]) -> None:
    """Fill ``adapter_name``'s parameters on ``layer`` with the stacked components of ``present``."""
    A = torch.cat([layer.disel_A[a].weight for a, _ in present])  # (R, d)
    W = torch.cat([layer.disel_gate[a].weight for a, _ in present])  # (R, d)
    b = torch.cat([layer.disel_gate[a].bias for a, _ in present])  # (R,)
    B = torch.cat([layer.disel_B[a].weight * (w * layer.scaling[a]) for a, w in present], dim=1)  # (m, R)
    layer.disel_A[adapter_name].weight.copy_(A)
    layer.disel_gate[adapter_name].weight.copy_(W)
    layer.disel_gate[adapter_name].bias.copy_(b)
    layer.disel_B[adapter_name].weight.copy_(B)
