"""Figure 5: gate histograms of selected modules on the fine-tuning domain, one panel per depth third.

Reads one ``disel.gates/1`` file (:func:`disel.experiments.eval.gates.analyze_gates`, or
``python -m disel.experiments.cli.eval gates``): post-sigmoid gate values of a trained DISeL adapter
on held-out inputs, grouped by depth third (early / mid / late layers) and module. Each panel overlays the
normalised histograms of ``--modules`` (default ``v_proj up_proj down_proj``, the paper's choice) on
``--domain`` (default ``math``), from the file's ``by_depth_and_module`` groups.

    python -m paper_figs.fig5_gates_by_module --gates results/gates_math.json --domain math
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from disel.experiments.schemas import read_gates

from ._cli import figure_parser, render
from .plots import gates_by_module_figure

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = figure_parser(__doc__, "python -m paper_figs.fig5_gates_by_module")
    parser.add_argument("--gates", type=Path, required=True, help="disel.gates/1 file (disel-eval gates)")
    parser.add_argument("--domain", default="math", help="input domain (default: math, the fine-tuning domain)")
    parser.add_argument("--modules", nargs="+", default=["v_proj", "up_proj", "down_proj"], help="modules to overlay")
    args = parser.parse_args(argv)
    return render(
        lambda: gates_by_module_figure(read_gates(args.gates), domain=args.domain, modules=args.modules),
        args.out / "figure5",
    )


if __name__ == "__main__":
    raise SystemExit(main())
