"""Figure 13: attention vs MLP gate histograms per depth third, second model (code-tuned).

Reads one ``disel.gates/1`` file (:func:`disel.experiments.eval.gates.analyze_gates`, or
``python -m disel.experiments.cli.eval gates``): post-sigmoid gate values of a trained DISeL adapter
on held-out inputs, grouped by depth third (early / mid / late layers). The view of Figure 10 for the second
model, on ``--domain`` (default ``code``, its fine-tuning domain).

    python -m paper_figs.fig13_code_gates_by_kind --gates results/gates_code.json --domain code
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from disel.experiments.schemas import read_gates

from ._cli import figure_parser, render
from .plots import gates_by_kind_figure

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = figure_parser(__doc__, "python -m paper_figs.fig13_code_gates_by_kind")
    parser.add_argument("--gates", type=Path, required=True, help="disel.gates/1 file (disel-eval gates)")
    parser.add_argument("--domain", default="code", help="input domain (default: code)")
    args = parser.parse_args(argv)
    return render(lambda: gates_by_kind_figure(read_gates(args.gates), domain=args.domain), args.out / "figure13")


if __name__ == "__main__":
    raise SystemExit(main())
