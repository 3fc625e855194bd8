"""Figure 12: gate histograms by input domain per depth third, second model (code-tuned).

Reads one ``disel.gates/1`` file (:func:`disel.experiments.eval.gates.analyze_gates`, or
``python -m disel.experiments.cli.eval gates``): post-sigmoid gate values of a trained DISeL adapter
on held-out inputs, grouped by depth third (early / mid / late layers). The view of Figure 4 for the second
model (the paper: Mistral-7B tuned on Magicoder, so code is the fine-tuning domain); every domain of
the file, or ``--domains`` in that order, is overlaid.

    python -m paper_figs.fig12_code_gates_by_domain --gates results/gates_code.json
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from disel.experiments.schemas import read_gates

from ._cli import figure_parser, render
from .plots import gates_by_domain_figure

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = figure_parser(__doc__, "python -m paper_figs.fig12_code_gates_by_domain")
    parser.add_argument("--gates", type=Path, required=True, help="disel.gates/1 file (disel-eval gates)")
    parser.add_argument("--domains", nargs="+", default=None, help="domains to overlay, in order (default: all)")
    args = parser.parse_args(argv)
    return render(lambda: gates_by_domain_figure(read_gates(args.gates), domains=args.domains), args.out / "figure12")


if __name__ == "__main__":
    raise SystemExit(main())
