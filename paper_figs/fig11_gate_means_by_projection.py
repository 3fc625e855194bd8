"""Figure 11: mean gate value per projection and depth third on the fine-tuning domain (math model).

Reads one ``disel.gates/1`` file (:func:`disel.experiments.eval.gates.analyze_gates`, or
``python -m disel.experiments.cli.eval gates``): post-sigmoid gate values of a trained DISeL adapter
on held-out inputs, grouped by depth third (early / mid / late layers) and module. Grouped bars: for each
projection (q_proj … down_proj, every recorded module unless ``--modules``) the mean gate in the early,
mid and late layers on ``--domain`` (default ``math``), from ``by_depth_and_module``.

    python -m paper_figs.fig11_gate_means_by_projection --gates results/gates_math.json --domain math
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from disel.experiments.schemas import read_gates

from ._cli import figure_parser, render
from .plots import gate_means_figure

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = figure_parser(__doc__, "python -m paper_figs.fig11_gate_means_by_projection")
    parser.add_argument("--gates", type=Path, required=True, help="disel.gates/1 file (disel-eval gates)")
    parser.add_argument("--domain", default="math", help="input domain (default: math)")
    parser.add_argument("--modules", nargs="+", default=None, help="projections to show (default: all recorded)")
    args = parser.parse_args(argv)
    return render(
        lambda: gate_means_figure(read_gates(args.gates), domain=args.domain, modules=args.modules),
        args.out / "figure11",
    )


if __name__ == "__main__":
    raise SystemExit(main())
