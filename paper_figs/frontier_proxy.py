"""Frontier figure: KL to the base on the task's own inputs against KL on English, every checkpoint after the base.

Is task-input KL a cheap proxy for forgetting (RL's Razor)? The line and its R² and Spearman rank
correlation are the results file's ``proxy["english"]`` (:func:`disel.experiments.study.fronts.r_squared`
over every point, the base once), read, not refitted.

    python -m paper_figs.frontier_proxy --results runs/frontier/results.json --out paper_figs/frontier
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ._cli import render
from .frontier_plots import frontier_parser, method_colors, method_name, read_frontier
from .style import TEXT_WIDTH_IN

__all__ = ["main", "plot_proxy"]


def plot_proxy(results, domain: str = "english"):
    from disel.experiments.schemas import MalformedResultFileError

    if domain not in results.proxy:
        raise MalformedResultFileError(results.path or "results", f"no proxy fit for {domain!r}: analyse it first")
    fit = results.proxy[domain]
    fig, ax = plt.subplots(figsize=(TEXT_WIDTH_IN / 2, 2.4), constrained_layout=True)
    colors = method_colors(results.methods)
    for method in results.methods:
        runs = [run for run in results.runs if run.method == method]
        x = np.concatenate([run.text("task").measure("kl")[1:] for run in runs])
        y = np.concatenate([run.text(domain).measure("kl")[1:] for run in runs])
        ax.scatter(x, y, s=6, alpha=0.6, color=colors[method], linewidths=0, label=method_name(method))
    line = np.array(ax.get_xlim())
    ax.plot(line, fit.intercept + fit.slope * line, color="black", lw=1)
    ax.set_title(f"R² = {fit.r_squared:.2f}, Spearman {fit.spearman:.2f} (n = {fit.n})", fontsize="small")
    ax.set_xlabel("KL to base, task inputs")
    ax.set_ylabel(f"KL to base, {domain}")
    ax.legend(loc="best", fontsize="xx-small")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = frontier_parser(__doc__, "python -m paper_figs.frontier_proxy").parse_args(argv)
    return render(lambda: plot_proxy(read_frontier(args.results)), args.out / "frontier_proxy")


if __name__ == "__main__":
    raise SystemExit(main())
