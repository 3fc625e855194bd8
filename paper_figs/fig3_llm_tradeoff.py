"""Figure 3: fine-tuning accuracy against retention, one panel per model, one marker per method and rank.

Reads one ``disel.tradeoff/1`` table per panel (:mod:`disel.experiments.schemas`; the paper: Llama-2-7B
on MetaMathQA scored by GSM8K, Mistral-7B on Magicoder scored by HumanEval; retention = mean accuracy
over the 14-benchmark lm-eval suite). Markers are means over seeds (error bars with two or more seeds);
the dashed line is the base model's retention. A table's optional ``title`` names its panel.

    python -m paper_figs.fig3_llm_tradeoff --tradeoff results/tradeoff_llama.json results/tradeoff_mistral.json
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

__all__ = ["main", "plot_figure3"]


def plot_figure3(tables: Sequence[TradeoffTable], *, log_x: bool = False) -> Figure:
    """Draw Figure 3, one panel per table (call inside :func:`paper_figs.style.paper_style`)."""
    if not tables:
        raise ValueError("plot_figure3 needs at least one tradeoff table")
    width = min(TEXT_WIDTH_IN, 0.5 * TEXT_WIDTH_IN * len(tables) + 0.6)
    fig, axes = plt.subplots(1, len(tables), figsize=(width, 2.6), squeeze=False, constrained_layout=True)
    for ax, table in zip(axes[0], tables):
        draw_tradeoff(ax, table, log_x=log_x, base_label="base model")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = figure_parser(__doc__, "python -m paper_figs.fig3_llm_tradeoff")
    parser.add_argument(
        "--tradeoff", type=Path, nargs="+", required=True, help="disel.tradeoff/1 tables, one panel each"
    )
    parser.add_argument(
        "--log-x", action="store_true", help="log-scale retention axis (for a perplexity retention metric)"
    )
    args = parser.parse_args(argv)
    return render(
        lambda: plot_figure3([read_tradeoff_table(path) for path in args.tradeoff], log_x=args.log_x),
        args.out / "figure3",
    )


if __name__ == "__main__":
    raise SystemExit(main())
