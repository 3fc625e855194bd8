"""Frontier figure: every checkpoint of every run faint, each method's front bold, in (forgetting, exact match).

A method's front (:mod:`disel.experiments.study.fronts`) is, at each exact-match level, the lowest forgetting
reached by any of its configurations and checkpoints, interpolated along each configuration's seed-mean
path; drawn here as observed (the naive front: the results' ``comparisons`` hold the selection-aware
differences with intervals). Panels: KL to the base on English, on code, and English perplexity. A front
further left at the same height keeps more of the base model at equal accuracy.

    python -m paper_figs.frontier --results runs/frontier/results.json --out paper_figs/frontier
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ._cli import render
from .frontier_plots import frontier_parser, method_colors, method_name, read_frontier
from .style import TEXT_WIDTH_IN

__all__ = ["PANELS", "main", "plot_frontier"]

PANELS: tuple[tuple[str, str], ...] = (("kl", "english"), ("kl", "code"), ("perplexity", "english"))
LEVELS = 101  # exact-match levels per drawn front


def plot_frontier(results):
    from disel.experiments.study.fronts import observed_front

    fig, axes = plt.subplots(1, len(PANELS), figsize=(TEXT_WIDTH_IN, 2.4), sharey=True, constrained_layout=True)
    colors = method_colors(results.methods)
    for ax, (kind, domain) in zip(axes, PANELS):
        for method in results.methods:
            runs = [run for run in results.runs if run.method == method]
            x = np.concatenate([run.text(domain).measure(kind) for run in runs])
            y = np.concatenate([run.exact_match for run in runs])
            ax.scatter(x, y, s=4, alpha=0.25, color=colors[method], linewidths=0)
        frontier_runs = [run.frontier_run(kind, domain) for run in results.runs]
        base = min(float(run.exact_match[0]) for run in results.runs)
        top = max(float(run.exact_match.max()) for run in results.runs)
        levels = np.linspace(base, top, LEVELS)
        for method, values in observed_front(frontier_runs, levels, exponentiate=kind == "perplexity").items():
            # a post-hoc method's front dashed and on top: where it equals its source's, both stay visible
            posthoc = all(run.source for run in results.runs if run.method == method)
            style = dict(lw=1.2, ls="--", zorder=3) if posthoc else dict(lw=2)
            ax.plot(values, levels, color=colors[method], label=method_name(method), **style)
        ax.set_xlabel(f"{'KL to base' if kind == 'kl' else 'perplexity'}, {domain}")
    axes[0].set_ylabel("exact match (held-out)")
    axes[-1].legend(loc="lower right", fontsize="x-small")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = frontier_parser(__doc__, "python -m paper_figs.frontier").parse_args(argv)
    return render(lambda: plot_frontier(read_frontier(args.results)), args.out / "frontier")


if __name__ == "__main__":
    raise SystemExit(main())
