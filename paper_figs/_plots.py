"""Plot types shared by several paper figures; each draws exactly the numbers it is given.

* :func:`draw_tradeoff` — fine-tuning score vs retention, one marker per (method, rank), seed error bars,
  the base model's retention as a dashed line (Figures 2, 3).
* :func:`draw_checkpoint_panels` — a metric over training steps, one curve per rank, one panel per
  method, the base model as a dashed line (Figures 6–9).
* :func:`gate_histogram_panels` — normalised gate histograms overlaid, one panel per depth third
  (Figures 4, 5, 10, 12, 13).
* :func:`draw_gate_means` — mean gate per module and depth third as grouped bars (Figures 11, 14).

Inputs are the typed results of :mod:`disel.experiments.results`; nothing here reads files. Call inside
:func:`paper_figs.style.paper_style`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from disel.experiments.results import (
    DEPTH_THIRDS,
    MODULE_ORDER,
    CheckpointCurve,
    GateHistogram,
    GatesFile,
    TradeoffTable,
    summarize_over_seeds,
)

from .style import METHOD_COLORS, METHOD_LABELS, TEXT_WIDTH_IN, rank_colors

__all__ = [
    "BASE_LINE",
    "depth_thirds",
    "draw_checkpoint_panels",
    "draw_gate_histograms",
    "draw_gate_means",
    "draw_tradeoff",
    "gate_histogram_panels",
    "method_display",
    "module_means_by_depth",
    "ordered",
    "rank_label",
]

# The base (pre-trained) model's reference line in every figure.
BASE_LINE = {"color": "black", "linestyle": "--", "linewidth": 0.8}


def method_display(method: str) -> tuple[str, str]:
    """(label, colour) of a method key; a key the style does not know is shown as written, in grey."""
    return METHOD_LABELS.get(method, method), METHOD_COLORS.get(method, "#7f7f7f")


def rank_label(rank: int | None) -> str:
    return "full" if rank is None else f"r = {rank}"


def ordered(names: Sequence[str], order: Sequence[str]) -> list[str]:
    """``names`` in ``order``'s order, the names ``order`` lacks after them in their own order."""
    known = [name for name in order if name in names]
    return known + [name for name in names if name not in order]


def _direction(higher_is_better: bool) -> str:
    return "higher is better" if higher_is_better else "lower is better"


# ------------------------------------------------------------------------------------------------
# Tradeoff (Figures 2, 3)
# ------------------------------------------------------------------------------------------------


def draw_tradeoff(ax: Axes, table: TradeoffTable, *, log_x: bool, base_label: str = "base model") -> None:
    """Fine-tuning score (y) vs retention (x) of ``table`` on ``ax``.

    One marker per (method, rank) at the mean over seeds, error bars ± the sample standard deviation
    across seeds (drawn only with two or more seeds); the rank is written beside the marker and the
    marker grows with it. The base model's retention is a dashed vertical line.
    """
    points = summarize_over_seeds(table)
    ranks = [p.rank for p in points if p.rank is not None]
    smallest = min(ranks, default=1)
    for point in points:
        label, color = method_display(point.method)
        multi_seed = len(point.seeds) > 1
        # Marker area doubles with each doubling of the rank: rank reads from size and from the number.
        size = 3.0 if point.rank is None else 3.0 + 1.2 * math.log2(max(point.rank / smallest, 1.0))
        ax.errorbar(
            point.retention_mean, point.ft_mean,
            xerr=point.retention_std if multi_seed else None, yerr=point.ft_std if multi_seed else None,
            fmt="o", ms=size, color=color, mec="white", mew=0.4, elinewidth=0.7, capsize=1.5, zorder=3,
        )  # fmt: skip
        ax.annotate(
            "full" if point.rank is None else str(point.rank), (point.retention_mean, point.ft_mean),
            xytext=(3, 3), textcoords="offset points", fontsize=6, color=color,
        )  # fmt: skip
    ax.axvline(table.base_retention, **BASE_LINE, zorder=1)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(f"{table.retention_metric} ({_direction(table.retention_higher_is_better)})")
    ax.set_ylabel(table.ft_metric)
    if table.title:
        ax.set_title(table.title)
    methods = list(dict.fromkeys(p.method for p in points))
    handles = [Line2D([], [], marker="o", ls="", color=method_display(m)[1], label=method_display(m)[0]) for m in methods]
    handles.append(Line2D([], [], **BASE_LINE, label=base_label))
    ax.legend(handles=handles, loc="best")


# ------------------------------------------------------------------------------------------------
# Metric over checkpoints (Figures 6–9)
# ------------------------------------------------------------------------------------------------


def draw_checkpoint_panels(
    curves: Sequence[CheckpointCurve],
    *,
    methods: Sequence[str],
    base: float | None,
    ylabel: str,
) -> Figure:
    """One panel per method in ``methods`` (left to right, shared y axis), one line per rank (colour by
    rank, shared across panels), ± one standard deviation across seeds shaded where there are several;
    the base model's value as a dashed line."""
    fig, axes = plt.subplots(1, len(methods), figsize=(TEXT_WIDTH_IN, 2.2), sharey=True, squeeze=False, constrained_layout=True)
    colors = rank_colors([c.rank for c in curves if c.method in methods])
    for ax, method in zip(axes[0], methods):
        for curve in (c for c in curves if c.method == method):
            color = colors[curve.rank]
            ax.plot(curve.steps, curve.mean, marker="o", ms=2.5, color=color, label=rank_label(curve.rank))
            if any(s > 0 for s in curve.std):
                low = [m - s for m, s in zip(curve.mean, curve.std)]
                high = [m + s for m, s in zip(curve.mean, curve.std)]
                ax.fill_between(curve.steps, low, high, color=color, alpha=0.2, lw=0)
        if base is not None:
            ax.axhline(base, **BASE_LINE, label="base model")
        ax.set_title(method_display(method)[0])
        ax.set_xlabel("training step")
        ax.legend(loc="best")
    axes[0][0].set_ylabel(ylabel)
    return fig


# ------------------------------------------------------------------------------------------------
# Gate histograms and means (Figures 4, 5, 10–14)
# ------------------------------------------------------------------------------------------------

Overlay = tuple[str, GateHistogram, str]  # (legend label, histogram, colour)


def draw_gate_histograms(ax: Axes, bin_edges: Sequence[float], overlays: Sequence[Overlay]) -> None:
    """Normalised histograms (fractions of the recorded gate values per bin) as outlined steps with a
    light fill; each legend entry carries the group's mean gate."""
    for label, histogram, color in overlays:
        fractions = histogram.normalized()
        ax.stairs(fractions, bin_edges, color=color, linewidth=1.0, label=f"{label} (mean {histogram.mean:.2f})")
        ax.stairs(fractions, bin_edges, color=color, fill=True, alpha=0.12, linewidth=0)
    ax.set_xlim(bin_edges[0], bin_edges[-1])
    ax.set_xlabel("gate value σ(W_g x + b_g)")


def gate_histogram_panels(
    gates: GatesFile,
    overlays_for_depth: Callable[[str], Sequence[Overlay]],
    *,
    depths: Sequence[str] = DEPTH_THIRDS,
    suptitle: str | None = None,
) -> Figure:
    """One panel per depth third (early, mid, late; shared y axis) of overlaid normalised histograms,
    ``overlays_for_depth(depth)`` giving each panel's (label, histogram, colour) triples."""
    fig, axes = plt.subplots(1, len(depths), figsize=(TEXT_WIDTH_IN, 2.0), sharey=True, squeeze=False, constrained_layout=True)
    for ax, depth in zip(axes[0], depths):
        draw_gate_histograms(ax, gates.bin_edges, overlays_for_depth(depth))
        ax.set_title(f"{depth} layers")
        ax.legend(loc="upper right", fontsize=6)
    axes[0][0].set_ylabel("fraction of gate values")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig


def draw_gate_means(ax: Axes, means: Mapping[str, Mapping[str, float]], *, groups: Sequence[str], colors: Mapping[str, str]) -> None:
    """Grouped bars: for each x position (a module, in ``means``' order) one bar per group (depth
    third) in ``groups``, height = the mean gate; a (module, group) absent from ``means`` has no bar."""
    modules = list(means)
    width = 0.8 / max(len(groups), 1)
    for j, group in enumerate(groups):
        xs = [i + (j - (len(groups) - 1) / 2) * width for i, module in enumerate(modules) if group in means[module]]
        heights = [means[module][group] for module in modules if group in means[module]]
        ax.bar(xs, heights, width * 0.95, color=colors[group], label=group, zorder=2)
    ax.set_xticks(range(len(modules)), modules, rotation=0)
    ax.set_ylabel("mean gate value")
    ax.set_ylim(bottom=0)
    ax.legend(title="layers", loc="upper left", title_fontsize=7)


def module_means_by_depth(gates: GatesFile, domain: str, *, modules: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """``{module: {depth third: mean gate}}`` on ``domain`` (every recorded module by default, in
    network order), read from ``by_depth_and_module``."""
    summary = gates.domain(domain)
    present = list(dict.fromkeys(m for per_depth in summary.by_depth_and_module.values() for m in per_depth))
    chosen = ordered(present, MODULE_ORDER) if modules is None else list(modules)
    result: dict[str, dict[str, float]] = {}
    for module in chosen:
        result[module] = {}
        for depth in ordered(list(summary.by_depth_and_module), DEPTH_THIRDS):
            if module in summary.by_depth_and_module[depth]:
                result[module][depth] = summary.by_depth_and_module[depth][module].mean
        if not result[module]:
            gates.group(domain, "by_module", module)  # raises, listing the modules the file has
    return result


def depth_thirds(gates: GatesFile, domain: str) -> list[str]:
    """The depth thirds recorded for ``domain``, in order (a 2-layer model has no late third)."""
    return ordered(list(gates.domain(domain).by_depth), DEPTH_THIRDS)

