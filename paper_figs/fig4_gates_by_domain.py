"""Figure 4: gate histograms by input domain, one panel per depth third (math-tuned model).

Reads one ``disel.gates/1`` file (:func:`disel.experiments.eval.gates.analyze_gates`, or
``python -m disel.experiments.cli.eval gates``): post-sigmoid gate values of a trained DISeL adapter
on held-out inputs, grouped by depth third (early / mid / late layers) and module. Each panel overlays the
normalised histograms (fraction of gate values per bin) of every domain in the file, or of ``--domains``
in that order; the legend gives each domain's mean gate. The paper: Llama-2-7B, rank-32 DISeL adapter
tuned on MetaMathQA; domains math (GSM8K, response tokens), general text (WikiText-2, all tokens), code
(HumanEval, response tokens).

    python -m paper_figs.fig4_gates_by_domain --gates results/gates_math.json --out paper_figs/out
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from disel.experiments.schemas import read_gates

from ._cli import figure_parser, render
from .plots import gates_by_domain_figure

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = figure_parser(__doc__, "python -m paper_figs.fig4_gates_by_domain")
    parser.add_argument("--gates", type=Path, required=True, help="disel.gates/1 file (disel-eval gates)")
    parser.add_argument("--domains", nargs="+", default=None, help="domains to overlay, in order (default: all)")
    args = parser.parse_args(argv)
    return render(lambda: gates_by_domain_figure(read_gates(args.gates), domains=args.domains), args.out / "figure4")


if __name__ == "__main__":
    raise SystemExit(main())
