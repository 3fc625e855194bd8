"""Plot types shared by several paper figures; each draws exactly the numbers it is given.

* :func:`draw_tradeoff` — fine-tuning score vs retention, one marker per (method, rank), seed error bars,
  the base model's retention as a dashed line (Figures 2, 3).
* :func:`draw_checkpoint_panels` — a metric over training steps, one curve per rank, one panel per
  method, the base model as a dashed line (Figures 6–9).
* :func:`gate_histogram_panels` — normalised gate histograms overlaid, one panel per depth third
  (Figures 4, 5, 10, 12, 13).
* :func:`draw_gate_means` — mean gate per module and depth third as grouped bars (Figures 11, 14).
* the figure views built from them, so that the figure scripts stay thin and the notebooks draw with
  the same code: :func:`gates_by_domain_figure` (4, 12), :func:`gates_by_module_figure` (5),
  :func:`gates_by_kind_figure` (10, 13), :func:`gate_means_figure` (11, 14), :func:`checkpoint_figure` (6–9).

Inputs are the typed results of :mod:`disel.experiments.schemas`; nothing here reads files. Call inside
:func:`paper_figs.style.paper_style`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from disel.experiments.schemas import (
    DEPTH_THIRDS,
    MODULE_ORDER,
    GateHistogram,
    GatesFile,
    MissingResultFileError,
    TradeoffTable,
)
from disel.experiments.tables import RunResults, shared_base_value

from .aggregate import CheckpointCurve, checkpoint_curves, summarize_over_seeds
from .style import METHOD_COLORS, METHOD_LABELS, TEXT_WIDTH_IN, palette_color, rank_colors

__all__ = [
    "BASE_LINE",
    "checkpoint_figure",
    "depth_thirds",
    "draw_checkpoint_panels",
    "draw_gate_histograms",
    "draw_gate_means",
    "draw_tradeoff",
    "gate_histogram_panels",
    "gate_means_figure",
    "gates_by_domain_figure",
    "gates_by_kind_figure",
    "gates_by_module_figure",
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
        _log_x(ax, [p.retention_mean for p in points] + [table.base_retention])
    ax.set_xlabel(f"{table.retention_metric} ({_direction(table.retention_higher_is_better)})")
    ax.set_ylabel(table.ft_metric)
    if table.title:
        ax.set_title(table.title)
    methods = list(dict.fromkeys(p.method for p in points))
    handles = [
        Line2D([], [], marker="o", ls="", color=method_display(m)[1], label=method_display(m)[0]) for m in methods
    ]
    handles.append(Line2D([], [], **BASE_LINE, label=base_label))
    ax.legend(handles=handles, loc="best")


def _log_x(ax: Axes, values: Sequence[float]) -> None:
    """Log x scale with plain-number tick labels: at 1, 2, 5 × 10^k when the data span two of them,
    else at a few evenly spaced values (a narrow range would otherwise get overlapping minor labels)."""
    ax.set_xscale("log")
    axis = ax.xaxis
    low, high = min(values), max(values)
    decade_ticks = [
        m * 10.0**k for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1) for m in (1, 2, 5)
    ]
    if sum(low <= t <= high for t in decade_ticks) >= 2:
        axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    else:
        axis.set_major_locator(mticker.MaxNLocator(nbins=4))
    axis.set_major_formatter(mticker.FuncFormatter(lambda value, _: f"{value:.4g}"))
    axis.set_minor_formatter(mticker.NullFormatter())


def _pad_flat_range(ax: Axes, values: Sequence[float]) -> None:
    """Give a y axis whose values are all equal a visible range around them (matplotlib would otherwise
    pick a meaningless ±1e-17 span for a curve that is flat at 0)."""
    low, high = min(values), max(values)
    if high - low <= 1e-12 * max(1.0, abs(high)):
        pad = max(0.05 * abs(high), 0.05)
        ax.set_ylim(low - pad, high + pad)


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
    fig, axes = plt.subplots(
        1, len(methods), figsize=(TEXT_WIDTH_IN, 2.2), sharey=True, squeeze=False, constrained_layout=True
    )
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
        ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        ax.legend(loc="best")
    axes[0][0].set_ylabel(ylabel)
    values = [v for c in curves if c.method in methods for v in c.mean] + ([] if base is None else [base])
    _pad_flat_range(axes[0][0], values)
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
    fig, axes = plt.subplots(
        1, len(depths), figsize=(TEXT_WIDTH_IN, 2.0), sharey=True, squeeze=False, constrained_layout=True
    )
    for ax, depth in zip(axes[0], depths):
        draw_gate_histograms(ax, gates.bin_edges, overlays_for_depth(depth))
        ax.set_title(f"{depth} layers")
        ax.legend(loc="upper right", fontsize=6)
    axes[0][0].set_ylabel("fraction of gate values")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig


def draw_gate_means(
    ax: Axes, means: Mapping[str, Mapping[str, float]], *, groups: Sequence[str], colors: Mapping[str, str]
) -> None:
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
    # Outside the axes, right: tall bars anywhere cannot hide under it.
    ax.legend(title="layers", loc="upper left", bbox_to_anchor=(1.0, 1.0), title_fontsize=7)


def module_means_by_depth(
    gates: GatesFile, domain: str, *, modules: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
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


# ------------------------------------------------------------------------------------------------
# The figure views (each script is a thin main() over one of these)
# ------------------------------------------------------------------------------------------------


def gates_by_domain_figure(gates: GatesFile, *, domains: Sequence[str] | None = None) -> Figure:
    """Figures 4 and 12: per depth third, the gate histograms of every domain overlaid."""
    from .style import DOMAIN_COLORS

    names = list(gates.domains) if domains is None else list(domains)
    for name in names:
        gates.domain(name)  # a clear error for an unknown domain before drawing
    return gate_histogram_panels(
        gates,
        lambda depth: [
            (name, gates.group(name, "by_depth", depth), palette_color(DOMAIN_COLORS, name, i))
            for i, name in enumerate(names)
        ],
        depths=depth_thirds(gates, names[0]),
    )


def gates_by_module_figure(gates: GatesFile, *, domain: str, modules: Sequence[str]) -> Figure:
    """Figure 5: per depth third, the gate histograms of the given modules on one domain."""
    from .style import MODULE_COLORS

    return gate_histogram_panels(
        gates,
        lambda depth: [
            (module, gates.group(domain, "by_depth_and_module", depth, module), palette_color(MODULE_COLORS, module, i))
            for i, module in enumerate(modules)
        ],
        depths=depth_thirds(gates, domain),
        suptitle=f"{domain} inputs",
    )


def gates_by_kind_figure(gates: GatesFile, *, domain: str) -> Figure:
    """Figures 10 and 13: per depth third, attention vs MLP gate histograms on one domain."""
    from .style import KIND_COLORS

    def overlays(depth: str) -> list[Overlay]:
        kinds = ordered(list(gates.group(domain, "by_depth_and_kind", depth)), ("attention", "mlp", "other"))
        return [
            (kind, gates.group(domain, "by_depth_and_kind", depth, kind), palette_color(KIND_COLORS, kind, i))
            for i, kind in enumerate(kinds)
        ]

    return gate_histogram_panels(gates, overlays, depths=depth_thirds(gates, domain), suptitle=f"{domain} inputs")


def gate_means_figure(gates: GatesFile, *, domain: str, modules: Sequence[str] | None = None) -> Figure:
    """Figures 11 and 14: mean gate per projection and depth third on one domain."""
    from .style import DEPTH_COLORS

    means = module_means_by_depth(gates, domain, modules=modules)
    fig, ax = plt.subplots(figsize=(TEXT_WIDTH_IN, 2.2), constrained_layout=True)
    depths = depth_thirds(gates, domain)
    draw_gate_means(
        ax, means, groups=depths, colors={d: palette_color(DEPTH_COLORS, d, i) for i, d in enumerate(depths)}
    )
    ax.set_title(f"{domain} inputs")
    return fig


def checkpoint_figure(runs: Sequence[RunResults], *, metric: str, methods: Sequence[str], ylabel: str) -> Figure:
    """Figures 6–9: ``metric`` of each run's table over checkpoints, one panel per method (runs of other
    methods are left out), one curve per rank (mean over seeds), the base model dashed."""
    selected = [run for run in runs if run.info.method in methods]
    found = sorted({run.info.method for run in runs})
    for method in methods:
        if not any(run.info.method == method for run in selected):
            where = runs[0].info.run_dir.parent if runs else Path(".")
            raise MissingResultFileError(
                where, f"has no run of method {method!r} (train_result.json 'method'); methods found: {found}"
            )
    curves = checkpoint_curves(selected, metric)
    base = shared_base_value(selected, metric)
    return draw_checkpoint_panels(curves, methods=methods, base=base, ylabel=ylabel)
