"""Figure 10: attention vs MLP gate histograms per depth third on the fine-tuning domain (math model).

Reads one ``disel.gates/1`` file (:func:`disel.experiments.eval.gates.analyze_gates`, or
``python -m disel.experiments.cli.eval gates``): post-sigmoid gate values of a trained DISeL adapter
on held-out inputs, grouped by depth third (early / mid / late layers) and module kind. Each panel overlays
the normalised histograms of the attention projections (q, k, v, o) and of the MLP projections (gate,
up, down) on ``--domain`` (default ``math``), from ``by_depth_and_kind``; the legend gives each mean.

    python -m paper_figs.fig10_gates_by_kind --gates results/gates_math.json --domain math
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from disel.experiments.schemas import read_gates

from ._cli import figure_parser, render
from .plots import gates_by_kind_figure

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = figure_parser(__doc__, "python -m paper_figs.fig10_gates_by_kind")
    parser.add_argument("--gates", type=Path, required=True, help="disel.gates/1 file (disel-eval gates)")
    parser.add_argument("--domain", default="math", help="input domain (default: math)")
    args = parser.parse_args(argv)
    return render(lambda: gates_by_kind_figure(read_gates(args.gates), domain=args.domain), args.out / "figure10")


if __name__ == "__main__":
    raise SystemExit(main())
