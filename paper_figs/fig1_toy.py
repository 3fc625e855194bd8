"""Figure 1: a fixed update must forget, an input-dependent gate need not (THEORY.md §2).

Grouped bars: the excess MSE of trained full FT, LoRA and DISeL on the fine-tuning population P_ft and
on the pre-training population P_pt (error bars: Monte Carlo standard errors), with the closed forms as
reference lines over each group: the best fixed correction (``¼ tr(Δ S Δᵀ)``, eq. 19–20, via
``toy.fixed_mse(problem, toy.fixed_optimum(problem))``) and the Bayes-optimal input-dependent correction
(eq. 25, ``toy.bayes_mse``). Every number drawn comes from ``toy.run_figure1`` (or the JSON it wrote).

    python -m paper_figs.fig1_toy [--steps N] [--seed N]   # train (python -m toy figure1), then draw
    python -m paper_figs.fig1_toy --from-json paper_figs/out/figure1.json   # redraw from the numbers

The toy never imports this module: it computes and writes ``figure1.json``; this module draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ._cli import toy_figure_main
from .style import REFERENCE_COLORS, TEXT_WIDTH_IN, method_color, method_label

__all__ = ["plot_figure1", "main"]

POPULATIONS = (("ft", r"$P_{\mathrm{ft}}$ (adapt)"), ("pt", r"$P_{\mathrm{pt}}$ (retain)"))
_BAR_WIDTH = 0.26


def plot_figure1(numbers: Mapping[str, Any]) -> Figure:
    """Draw Figure 1 from ``toy.Figure1Result.to_dict()`` numbers (or the JSON written from them).

    Call inside :func:`paper_figs.style.paper_style` for the paper's fonts and sizes.
    """
    methods = list(numbers["methods"])
    fixed = numbers["closed_form"]["fixed_optimum"]
    bayes = numbers["closed_form"]["bayes"]
    fig, ax = plt.subplots(figsize=(0.62 * TEXT_WIDTH_IN, 2.5))
    offsets = [(i - (len(methods) - 1) / 2) * _BAR_WIDTH for i in range(len(methods))]
    half_span = (len(methods) / 2) * _BAR_WIDTH + 0.06
    top = max(max(entry["mse"][p] for entry in numbers["methods"].values()) for p, _ in POPULATIONS)
    top = max(top, fixed["ft"], fixed["pt"])
    for group, (population, _) in enumerate(POPULATIONS):
        for offset, method in zip(offsets, methods):
            entry = numbers["methods"][method]
            value = entry["mse"][population]
            stderr = (entry.get("mse_stderr") or {}).get(population)
            ax.bar(
                group + offset, value, _BAR_WIDTH * 0.92, color=method_color(method),
                yerr=stderr, error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "0.25"}, zorder=2,
            )  # fmt: skip
            # Tall bars carry their value at mid-height (clear of the reference lines), short ones above.
            inside = value > 0.25 * top
            ax.annotate(
                f"{value:.3g}", (group + offset, value / 2 if inside else value),
                xytext=(0, 0 if inside else 2), textcoords="offset points", ha="center",
                va="center" if inside else "bottom", fontsize=6, zorder=4, color="white" if inside else "black",
            )  # fmt: skip
        span = (group - half_span, group + half_span)
        ax.hlines(fixed[population], *span, colors=REFERENCE_COLORS["fixed"], linestyles="--", linewidth=0.9, zorder=3)
        ax.hlines(bayes[population], *span, colors=REFERENCE_COLORS["bayes"], linestyles=":", linewidth=1.5, zorder=3)
    ax.set_xticks(range(len(POPULATIONS)), [label for _, label in POPULATIONS])
    ax.set_xlim(-0.55, len(POPULATIONS) - 0.45)
    ax.set_ylim(0, 1.08 * top)
    ax.set_ylabel("excess MSE")
    ax.tick_params(axis="x", length=0)
    handles = [Patch(color=method_color(method), label=method_label(method)) for method in methods]
    handles += [
        Line2D([], [], color=REFERENCE_COLORS["fixed"], linestyle="--", linewidth=0.9,
               label=r"best fixed, $\frac{1}{4}\mathrm{tr}(\Delta S \Delta^\top)$"),
        Line2D([], [], color=REFERENCE_COLORS["bayes"], linestyle=":", linewidth=1.5,
               label=r"Bayes, $\pi(x)\,\Delta x$"),
    ]  # fmt: skip
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2, handlelength=1.8)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """Redraw from a JSON (``--from-json``), or train (``python -m toy figure1``) and draw."""
    return toy_figure_main(
        argv, script="fig1_toy", module_doc=__doc__, command="figure1", stem="figure1", plot=plot_figure1
    )


if __name__ == "__main__":
    raise SystemExit(main())
