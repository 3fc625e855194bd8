"""The command-line frame every result-reading figure script shares: draw, save, report.

A figure script's ``main(argv)`` parses its flags and hands :func:`render` a function that reads its
result files (through :mod:`disel.experiments.schemas`) and returns the figure. A missing or malformed
result file ends the script with exit status 2 and one line naming the file and what was wrong; no
partial figure is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from disel.experiments.schemas import ResultFileError

from .style import paper_style, savefig

__all__ = ["DEFAULT_OUT", "EXIT_BAD_INPUT", "figure_parser", "render", "toy_figure_main"]

DEFAULT_OUT = Path("paper_figs") / "out"
EXIT_BAD_INPUT = 2


def figure_parser(module_doc: str | None, prog: str) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of the script's docstring, with ``--out``."""
    description = (module_doc or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: paper_figs/out)")
    return parser


def results_figure_parser(
    module_doc: str | None, prog: str, *, results: Path, out: Path, what: str
) -> argparse.ArgumentParser:
    """:func:`figure_parser` for a study's figures: ``--results`` (default ``results``: ``what``) and ``--out``
    (default ``out``)."""
    parser = figure_parser(module_doc, prog)
    parser.set_defaults(out=out)
    parser.add_argument("--results", type=Path, default=results, help=what)
    return parser


def render(draw: Callable[[], Figure], stem: Path) -> int:
    """Draw (inside the paper style) and write ``stem.png`` and ``stem.pdf`` atomically.

    Returns 0, or :data:`EXIT_BAD_INPUT` after printing the error if a result file is missing or
    malformed (:class:`~disel.experiments.schemas.ResultFileError`).
    """
    try:
        with paper_style():
            fig = draw()
            try:
                paths = savefig(fig, stem)
            finally:
                plt.close(fig)
    except ResultFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0


def toy_figure_main(
    argv: Sequence[str] | None, *, script: str, module_doc: str | None, command: str, stem: str, plot: Callable
) -> int:
    """A toy figure's command (``python -m paper_figs.SCRIPT``): redraw from ``--from-json``, or train with
    ``python -m toy COMMAND`` (every option after ours goes to it), which writes ``OUT/STEM.json``; then draw
    ``plot(numbers)`` to ``OUT/STEM.{png,pdf}``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m paper_figs.{script}", description=(module_doc or "").split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("--from-json", type=Path, default=None, help=f"numbers written by `python -m toy {command}`")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args, rest = parser.parse_known_args(argv)
    if args.from_json is None:
        from toy.__main__ import main as toy_main

        status = toy_main([command, "--out", str(args.out), *rest])
        if status != 0:
            return status
        args.from_json = args.out / f"{stem}.json"
    elif rest:
        parser.error(f"unrecognised arguments with --from-json: {' '.join(rest)}")
    numbers = json.loads(args.from_json.read_text(encoding="utf-8"))
    return render(lambda: plot(numbers), args.out / stem)


def add_runs_arguments(parser: argparse.ArgumentParser, *, evaluator: str, what: str) -> None:
    """Flags of the checkpoint figures (6–9): which runs, which table, which column, which methods."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--runs-dir", type=Path, help="folder of training runs (each sub-folder with train_result.json)"
    )
    source.add_argument("--run", type=Path, nargs="+", help="run directories, listed explicitly")
    parser.add_argument(
        "--evaluator", default=evaluator,
        help=f"read retention_<EVALUATOR>.json in each run (default: {evaluator}, the {what})",
    )  # fmt: skip
    parser.add_argument(
        "--metric", default="mean", help="column of that table to plot (default: mean, its headline number)"
    )
    parser.add_argument("--methods", nargs="+", default=["disel", "lora"], help="one panel each, left to right")
    parser.add_argument("--ylabel", default=None, help=f"y-axis label (default: '{what} (<evaluator> <metric>)')")


def read_runs_from_args(args: argparse.Namespace):
    """The runs named by :func:`add_runs_arguments`' flags, with ``args.evaluator``'s tables."""
    from disel.experiments.tables import find_run_dirs, read_runs

    run_dirs = args.run if args.run else find_run_dirs(args.runs_dir)
    return read_runs(run_dirs, args.evaluator)
