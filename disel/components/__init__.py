"""Gate statistics put to work: per-component statistics, pruning and a partial (static) merge (issue 11).

A DISeL layer is a sum of gated rank-one components, ``s · B diag(g(x)) A x = Σ_i s · g_i(x) (a_iᵀx) b_i``.
Per adapted layer and component ``i`` (``a_i`` row i of ``A``, ``b_i`` column i of ``B``):

* gate mean ``ḡ_i = E[g_i(x)]`` and standard deviation ``sd_i = sqrt(E[g_i²] − ḡ_i²)`` over the tokens seen;
* contribution ``c_i = s · E[g_i(x) · |a_iᵀx|] · ‖b_i‖``: the expected norm of the component's output, so
  removing a set ``S`` of components moves the layer output by at most ``Σ_{i∈S} c_i`` on average
  (triangle inequality), and a component with ``b_i = 0`` or a shut gate has ``c_i = 0``;
* merge error bound ``e_i = s · ‖b_i‖ · sd_i · sqrt(E[(a_iᵀx)²]) ≥ E‖s (g_i(x) − ḡ_i) b_i a_iᵀx‖``
  (Cauchy–Schwarz): the error of replacing the gate by its mean, i.e. of folding ``s ḡ_i b_i a_iᵀ`` into W0.

:func:`component_statistics` measures these on data, per named domain too (:mod:`.statistics`);
:func:`prune` removes components in place, per adapter, writing the ranks to ``rank_pattern`` so plain PEFT
calls save and reload the result (:mod:`.prune`); :func:`merge_static` folds the components whose gate is
constant on all the data into the base weights, exactly undone by :func:`unmerge_static` (:mod:`.merge`);
:func:`align_components` puts components sharing one gate in a basis where pruning can lower their rank
(:mod:`.align`). :func:`prune_adapter_dir` and :func:`merge_static_adapter_dir` are the
adapter-directory-in, directory-out forms behind ``disel-prune`` and ``disel-merge-static``; they refuse
statistics of another adapter before loading any model (:mod:`.adapter_dir`). Every function given data
checks each batch against the model's input before running it (:func:`.measure.checked_batches`). The "cat"
combination of adapters (``add_weighted_adapter``) lives with the tuner, in :mod:`disel.tuner.combine`.
"""

from __future__ import annotations

from .align import AlignReport, align_components
from .measure import OutputChange
from .merge import (
    MergeReport,
    has_static_merges,
    merge_static,
    merge_static_adapter_dir,
    unmerge_static,
)
from .prune import PruneReport, prune, prune_adapter_dir
from .statistics import ComponentStatistics, LayerComponents, component_statistics

__all__ = [
    "AlignReport",
    "ComponentStatistics",
    "LayerComponents",
    "MergeReport",
    "OutputChange",
    "PruneReport",
    "align_components",
    "component_statistics",
    "has_static_merges",
    "merge_static",
    "merge_static_adapter_dir",
    "prune",
    "prune_adapter_dir",
    "unmerge_static",
]
