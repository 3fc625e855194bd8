"""Evidence figure: the toy's failure signature on the LLM, for every DISeL arm over training.

Left: the fraction of rank components whose gate row is anti-aligned with its A row (cosine < −0.5).
Right: the mean gate on math (solid), English (dashed) and code (dotted) text. Mean over seeds.

    python -m paper_figs.evidence_gates --results runs/evidence/results.json
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

from ._cli import render
from .evidence_plots import arm_colors, evidence_parser, read_evidence
from .style import TEXT_WIDTH_IN

__all__ = ["main", "plot_evidence_gates"]

_DOMAIN_STYLES = {"math": "-", "english": "--", "code": ":"}


def _seed_mean(runs, value) -> list[float]:
    """Mean over the runs of ``value(checkpoint)`` at each checkpoint after the base (step 0)."""
    return [sum(value(r.checkpoints[i]) for r in runs) / len(runs) for i in range(1, len(runs[0].checkpoints))]


def has_gates(results) -> bool:
    """Whether some arm carries DISeL gate diagnostics."""
    return any(c.anti_aligned_fraction is not None for run in results.runs for c in run.checkpoints)


def plot_evidence_gates(results):
    arms = [
        arm
        for arm in results.seeds
        if all(c.anti_aligned_fraction is not None for c in results.runs_of(arm)[0].checkpoints[1:])
        and len(results.runs_of(arm)[0].checkpoints) > 1
    ]
    if not arms:
        raise ValueError("the results hold no DISeL arm (no gate diagnostics to draw)")
    colors = arm_colors(list(results.seeds))
    fig, (left, right) = plt.subplots(1, 2, figsize=(TEXT_WIDTH_IN, 2.4), constrained_layout=True)
    for arm in arms:
        runs = results.runs_of(arm)
        steps = [c.step for c in runs[0].checkpoints[1:]]  # step 0 is the base model: no adapter
        left.plot(
            steps, _seed_mean(runs, lambda c: c.anti_aligned_fraction), marker="o", ms=2.5, color=colors[arm], label=arm
        )
        for domain, style in _DOMAIN_STYLES.items():
            right.plot(
                steps,
                _seed_mean(runs, lambda c, d=domain: c.gate_means[d]),
                style,
                marker="o",
                ms=2,
                color=colors[arm],
                label=f"{arm} {domain}",
            )
    left.set_ylabel("anti-aligned fraction (cos < −0.5)")
    right.set_ylabel("mean gate")
    for ax in (left, right):
        ax.set_xlabel("training step")
    left.legend(loc="best", fontsize="x-small")
    right.legend(loc="best", fontsize="xx-small", ncol=2)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = evidence_parser(__doc__, "python -m paper_figs.evidence_gates").parse_args(argv)
    return render(lambda: plot_evidence_gates(read_evidence(args.results)), args.out / "evidence_gates")


if __name__ == "__main__":
    raise SystemExit(main())
