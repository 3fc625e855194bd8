"""Figure 2: GLUE accuracy against masked-LM perplexity (log scale), one marker per method and rank.

Reads one ``disel.tradeoff/1`` table (:mod:`disel.experiments.schemas`): per (method, rank, seed) the
mean GLUE accuracy (``ft_score``) and the mean masked-LM perplexity of the fine-tuned encoder with the
original MLM head (``retention``, lower is better; paper Appendix II.5). Markers are means over seeds
with ± one standard deviation error bars; the dashed line is the pre-trained model's perplexity.

    python -m paper_figs.fig2_glue_tradeoff --tradeoff results/tradeoff_glue.json --out paper_figs/out
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from disel.experiments.schemas import TradeoffTable, read_tradeoff_table

from ._cli import figure_parser, render
from .plots import draw_tradeoff
from .style import TEXT_WIDTH_IN

__all__ = ["main", "plot_figure2"]


def plot_figure2(table: TradeoffTable) -> Figure:
    """Draw Figure 2 from a tradeoff table (call inside :func:`paper_figs.style.paper_style`)."""
    fig, ax = plt.subplots(figsize=(0.62 * TEXT_WIDTH_IN, 2.6), constrained_layout=True)
    draw_tradeoff(ax, table, log_x=True, base_label="pre-trained")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = figure_parser(__doc__, "python -m paper_figs.fig2_glue_tradeoff")
    parser.add_argument(
        "--tradeoff", type=Path, required=True, help="disel.tradeoff/1 table (GLUE accuracy vs MLM perplexity)"
    )
    args = parser.parse_args(argv)
    return render(lambda: plot_figure2(read_tradeoff_table(args.tradeoff)), args.out / "figure2")


if __name__ == "__main__":
    raise SystemExit(main())
