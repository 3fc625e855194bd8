"""Evidence figure (issue 11): exact match and KL to the base against the fraction of DISeL components removed
(pruning) or folded into the base (static merge).

Left: held-out exact match with its 95% bootstrap interval per level; the grey band is the unpruned adapter's
interval. Right: KL to the base on English (solid) and code (dashed); the dotted lines mark the unpruned
adapter's. One colour per operation; filled markers are the levels that keep exact match and retention.

    python -m paper_figs.evidence_compression --results paper_figs/evidence/compression/compression.json \
        --out paper_figs/evidence
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt

from ._cli import render
from .evidence_plots import arm_colors, evidence_parser, read_typed
from .plots import BASE_LINE
from .style import TEXT_WIDTH_IN

__all__ = ["main", "plot_compression", "read_compression"]

DEFAULT_RESULTS = Path("paper_figs") / "evidence" / "compression" / "compression.json"


def read_compression(path: Path):
    """The :class:`~disel.experiments.study.results.CompressionResults` in ``path``, or a ResultFileError."""
    from disel.experiments.study.results import load_compression_results

    return read_typed(
        path, load_compression_results, "python -m disel.experiments.study.compression", "compression results"
    )


def plot_compression(results):
    fig, (left, right) = plt.subplots(1, 2, figsize=(TEXT_WIDTH_IN, 2.5), constrained_layout=True)
    reference = results.reference
    left.axhspan(reference.exact_match.low, reference.exact_match.high, color="0.85", lw=0, label="unpruned 95%")
    operations = list(dict.fromkeys(r.operation for r in results.levels))
    colors = arm_colors(operations)
    for operation in operations:
        levels = sorted((r for r in results.levels if r.operation == operation), key=lambda r: r.fraction_reduced)
        if levels[0].fraction_reduced > 0:  # every curve starts at the unpruned adapter
            levels.insert(0, reference)
        x = [r.fraction_reduced for r in levels]
        em = [r.exact_match.estimate for r in levels]
        errors = [
            [e - r.exact_match.low for e, r in zip(em, levels)],
            [r.exact_match.high - e for e, r in zip(em, levels)],
        ]
        left.errorbar(x, em, yerr=errors, color=colors[operation], marker="o", ms=3, capsize=2, label=operation)
        for domain, style in (("english", "-"), ("code", "--")):
            right.plot(
                x,
                [r.kl[domain] for r in levels],
                style,
                color=colors[operation],
                marker="o",
                ms=3,
                label=f"{operation} ({domain})",
            )
        for r in levels:
            if not r.acceptable:  # open markers: the level moved exact match or retention
                left.plot(r.fraction_reduced, r.exact_match.estimate, "o", ms=5, mfc="white", color=colors[operation])
    for domain in ("english", "code"):
        right.axhline(
            reference.kl[domain], **{**BASE_LINE, "linestyle": ":"}, label="unpruned" if domain == "english" else None
        )
    left.set_xlabel("fraction of components removed / merged")
    left.set_ylabel("exact match (held-out)")
    right.set_xlabel("fraction of components removed / merged")
    right.set_ylabel("KL to base (lower keeps more)")
    left.legend(loc="best", fontsize="x-small")
    right.legend(loc="best", fontsize="x-small")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = evidence_parser(__doc__, "python -m paper_figs.evidence_compression")
    parser.set_defaults(results=DEFAULT_RESULTS)
    args = parser.parse_args(argv)
    return render(lambda: plot_compression(read_compression(args.results)), args.out / "evidence_compression")


if __name__ == "__main__":
    raise SystemExit(main())
