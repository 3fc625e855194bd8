"""Frontier figure: each configuration's best exact match against its learning rate, one line per method.

A configuration's best exact match is the highest of its seed-mean checkpoints (step 0, the base, included);
post-hoc arms draw one line per setting (e.g. intruder reduction at each ``mitigation_lambda``) at the
learning rate of the run they transform. Where a method's line peaks is its best learning rate; full
fine-tuning's sits about 10x lower.

    python -m paper_figs.frontier_lr --results runs/frontier/results.json --out paper_figs/frontier
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ._cli import render
from .frontier_plots import frontier_parser, method_colors, method_name, read_frontier
from .style import TEXT_WIDTH_IN

__all__ = ["best_by_learning_rate", "main", "plot_accuracy_by_learning_rate"]


def best_by_learning_rate(results) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Line label → (learning rates, best seed-mean exact match), sorted by learning rate.

    Lines: one per method and setting other than the learning rate (``settings`` of each run).
    """
    from disel.experiments.schemas import MalformedResultFileError

    configurations: dict[tuple[str, str], list] = {}
    for run in results.runs:
        configurations.setdefault((run.method, run.configuration), []).append(run)
    lines: dict[str, list[tuple[float, float]]] = {}
    for (method, _), runs in configurations.items():
        settings = runs[0].settings
        if "learning_rate" not in settings:
            raise MalformedResultFileError(results.path or "results", f"run {runs[0].label} has no learning_rate")
        others = ", ".join(f"{k}={v:g}" for k, v in sorted(settings.items()) if k != "learning_rate")
        label = method_name(method) + (f" ({others})" if others else "")
        best = float(np.mean([run.exact_match for run in runs], axis=0).max())
        lines.setdefault(label, []).append((settings["learning_rate"], best))
    return {label: tuple(np.array(v) for v in zip(*sorted(points))) for label, points in lines.items()}


def plot_accuracy_by_learning_rate(results):
    fig, ax = plt.subplots(figsize=(TEXT_WIDTH_IN, 2.4), constrained_layout=True)
    colors = method_colors(results.methods)
    styles = iter(("-", "--", ":", "-.") * 8)
    labels = {method_name(m): m for m in results.methods}
    for label, (rates, best) in best_by_learning_rate(results).items():
        method = labels.get(label.split(" (")[0], results.methods[0])
        ax.plot(rates, best, next(styles) if "(" in label else "-", marker="o", ms=3, color=colors[method], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best exact match (held-out)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="xx-small")  # outside: many lines, few points
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = frontier_parser(__doc__, "python -m paper_figs.frontier_lr").parse_args(argv)
    return render(lambda: plot_accuracy_by_learning_rate(read_frontier(args.results)), args.out / "frontier_lr")


if __name__ == "__main__":
    raise SystemExit(main())
