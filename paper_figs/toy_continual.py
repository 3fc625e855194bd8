"""The toy sequence (issue 18): a gated branch per task keeps every task, sequential LoRA keeps the last.

Left: the excess MSE on each population (pre-training and tasks 1..K) after each task, for DISeL with a
branch per task (solid) and sequential LoRA (dashed), with the Bayes predictor's MSE on each population
(dotted, ``toy.continual.bayes_correction_continual``; Monte Carlo). Right: each branch's mean gate on each
population against the pairwise posterior ``E_j σ(ℓ_k − ℓ_0)`` its sigmoid gate can represent (filled) and
the Bayes posterior ``E_j π_k`` (open). Every number comes from ``toy.run_continual`` (or its JSON).

    python -m paper_figs.toy_continual [--steps N] [--seed N] [--tasks K]   # train (python -m toy continual), draw
    python -m paper_figs.toy_continual --from-json paper_figs/out/toy_continual.json   # redraw from the numbers

The toy never imports this module: it computes and writes ``toy_continual.json``; this module draws. Not a
figure of the paper, so not named ``fig*`` and not in ``run_all`` (like the ``evidence_*`` scripts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ._cli import toy_figure_main
from .style import TEXT_WIDTH_IN

__all__ = ["main", "plot_toy_continual"]

_POPULATION_COLORS = ("#000000", "#E69F00", "#0072B2", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442")
_STYLES = {"disel_branches": ("-", "DISeL, a branch per task"), "lora": ("--", "sequential LoRA")}


def _population_names(numbers: Mapping[str, Any]) -> list[str]:
    return ["pre-training"] + [f"task {k}" for k in range(1, numbers["setting"]["num_tasks"] + 1)]


def _plot_mse(ax, numbers: Mapping[str, Any]) -> None:
    """Excess MSE on each population after each task, both methods, with the Bayes level per population."""
    names = _population_names(numbers)
    after = range(1, numbers["setting"]["num_tasks"] + 1)
    for method, (linestyle, _) in _STYLES.items():
        tables = numbers["runs"][method]["mse_after_task"]
        for j, _ in enumerate(names):
            values = [table["per_population"][j] for table in tables]
            color = _POPULATION_COLORS[j % len(_POPULATION_COLORS)]
            ax.plot(after, values, linestyle=linestyle, marker="o", markersize=2.5, color=color, linewidth=1.0)
    bayes = numbers["closed_form"]["bayes"]["per_population"]
    for j, value in enumerate(bayes):
        ax.axhline(value, color=_POPULATION_COLORS[j % len(_POPULATION_COLORS)], linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(list(after), [f"after task {k}" for k in after])
    ax.set_ylabel("excess MSE on the population")
    handles = [Line2D([], [], color="0.3", linestyle=style, label=label) for style, label in _STYLES.values()]
    handles.append(Line2D([], [], color="0.3", linestyle=":", label="Bayes"))
    handles += [Line2D([], [], color=_POPULATION_COLORS[j], linewidth=2, label=name) for j, name in enumerate(names)]
    ax.legend(handles=handles, fontsize=5.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, handlelength=1.8)


def _plot_gates(ax, numbers: Mapping[str, Any]) -> None:
    """Learned mean gate of branch k on population j against the pairwise and the Bayes posterior means."""
    learned = numbers["runs"]["disel_branches"]["gate_means"]
    pairwise = numbers["closed_form"]["pairwise_gate_means"]
    posterior = numbers["closed_form"]["posterior_means"]
    for k, row in enumerate(learned):
        color = _POPULATION_COLORS[(k + 1) % len(_POPULATION_COLORS)]
        ax.scatter(pairwise[k], row, s=12, color=color, zorder=3)
        ax.scatter(posterior[k], row, s=12, facecolors="none", edgecolors=color, zorder=3)
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.7, zorder=1)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("posterior mean on the population")
    ax.set_ylabel("learned mean gate of branch k")
    handles = [
        Line2D([], [], marker="o", linestyle="", color="0.3", markersize=3.5,
               label=r"pairwise $\sigma(\ell_k-\ell_0)$"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.3", markersize=3.5,
               label=r"Bayes $\pi_k$"),
    ]  # fmt: skip
    ax.legend(handles=handles, fontsize=5.5, loc="upper left")


def plot_toy_continual(numbers: Mapping[str, Any]) -> Figure:
    """Draw the figure from ``toy.ContinualResult.to_dict()`` numbers (or the JSON written from them)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(TEXT_WIDTH_IN, 2.9), gridspec_kw={"width_ratios": [1.6, 1]})
    _plot_mse(left, numbers)
    _plot_gates(right, numbers)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """Redraw from a JSON (``--from-json``), or train (``python -m toy continual``) and draw."""
    return toy_figure_main(
        argv,
        script="toy_continual",
        module_doc=__doc__,
        command="continual",
        stem="toy_continual",
        plot=plot_toy_continual,
    )


if __name__ == "__main__":
    raise SystemExit(main())
