"""Command line of the toy (THEORY.md §2): reproduce Figure 1 and run the teaching sweeps.

    python -m toy figure1 [--seed N] [--out DIR] [--steps N] [--no-progress]
    python -m toy sweep-separation [--seed N] [--out DIR] [--steps N] [--means ...] [--trained ...]
    python -m toy sweep-rank [--seed N] [--out DIR] [--steps N] [--ranks ...] [--trained ...] [--rank-delta K]

``figure1`` trains full FT, LoRA and DISeL (``toy.run_figure1``), prints a table next to the closed
forms, and writes ``DIR/figure1.json`` (the numbers) and ``DIR/figure1.png`` / ``.pdf`` (drawn by
``paper_figs.fig1_toy`` from those numbers). The sweeps write ``DIR/sweep_<name>.json`` and print a table.
``DIR`` defaults to ``paper_figs/out`` under the current directory (run from the repository root, as
``scripts/figure1.sh`` does). Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .train import METHODS, ToyTrainConfig, run_figure1

DEFAULT_OUT = Path("paper_figs") / "out"


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return path


def _progress(total: int, enabled: bool, desc: str):
    """A tqdm bar (to stderr) or a no-op context with the same ``update`` method."""
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def _config_from_args(args: argparse.Namespace) -> ToyTrainConfig:
    overrides = {"seed": args.seed}
    if args.steps is not None:
        overrides["steps"] = args.steps
        # The delay is about B A growing (absolute steps at a given lr), so it is kept, except that a
        # short smoke run (a quarter of the default delay or less) keeps the delay under a quarter of it.
        overrides["gate_delay_steps"] = min(ToyTrainConfig().gate_delay_steps, args.steps // 4)
    return dataclasses.replace(ToyTrainConfig(), **overrides)


def _figure1(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    start = time.perf_counter()
    with _progress(config.steps * len(METHODS), args.progress, "figure 1") as bar:
        result = run_figure1(config, on_step=bar.update)
    numbers = result.to_dict()
    seconds = time.perf_counter() - start
    numbers["runtime_seconds"] = seconds
    json_path = write_json_atomic(args.out / "figure1.json", numbers)
    print(f"Figure 1 (seed {config.seed}, {config.steps} steps, d = m = {result.problem.d}, "
          f"r = rank Δ = {result.problem.rank_delta}); excess MSE on fresh samples:")
    print(result.table())
    print(
        "fixed optimum = ¼ tr(Δ S Δᵀ) (eq. 19–20); "
        "Bayes = E[(1−π)²‖Δx‖²] on P_ft, E[π²‖Δx‖²] on P_pt (eq. 25)"
    )
    print(f"trained and evaluated in {seconds:.1f} s")
    paths = [json_path]
    if args.figure:
        try:
            from paper_figs.fig1_toy import render_figure1
        except ImportError as error:
            raise SystemExit(
                f"cannot draw the figure: paper_figs is not importable ({error}); run from the repository "
                "root (as scripts/figure1.sh does) or pass --no-figure"
            ) from None
        paths += render_figure1(numbers, args.out / "figure1")
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from . import sweeps

    config = _config_from_args(args)
    start = time.perf_counter()
    if args.command == "sweep-separation":
        trained_runs = len(args.trained)
        with _progress(config.steps * trained_runs, args.progress, "separation sweep") as bar:
            sweep = sweeps.separation_sweep(args.means, args.trained, config, on_step=bar.update)
        name = "separation"
    else:
        trained_runs = 2 * len(args.trained)
        with _progress(config.steps * trained_runs, args.progress, "rank sweep") as bar:
            sweep = sweeps.rank_sweep(args.ranks, args.trained, config, rank_delta=args.rank_delta, on_step=bar.update)
        name = "rank"
    numbers = sweep.to_dict()
    numbers["runtime_seconds"] = time.perf_counter() - start
    path = write_json_atomic(args.out / f"sweep_{name}.json", numbers)
    print(f"{sweep.description}; mixture excess MSE:")
    print(sweep.table())
    print(f"done in {numbers['runtime_seconds']:.1f} s; wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m toy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--seed", type=int, default=0, help="seeds the problem, the training and the evaluation (default 0)"
        )
        sub.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
        sub.add_argument(
            "--steps", type=int, default=None,
            help=f"optimizer steps per method (default {ToyTrainConfig().steps})",
        )
        sub.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    figure1 = commands.add_parser("figure1", help="train full FT, LoRA, DISeL; write figure1.{json,png,pdf}")
    common(figure1)
    figure1.add_argument("--no-figure", dest="figure", action="store_false", help="write the JSON and table only")
    figure1.set_defaults(handler=_figure1)

    separation = commands.add_parser("sweep-separation", help="mixture MSE against |μ| (closed forms + DISeL)")
    common(separation)
    separation.add_argument("--means", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0])
    separation.add_argument(
        "--trained", type=float, nargs="*", default=[0.5, 1.0, 2.0], help="means at which DISeL trains"
    )
    separation.set_defaults(handler=_sweep)

    rank = commands.add_parser("sweep-rank", help="mixture MSE against rank r (closed forms + LoRA, DISeL)")
    common(rank)
    rank.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8])
    rank.add_argument(
        "--trained", type=int, nargs="*", default=[1, 2, 4, 6], help="ranks at which LoRA and DISeL train"
    )
    rank.add_argument("--rank-delta", type=int, default=4, help="rank of the task update Δ (default 4)")
    rank.set_defaults(handler=_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
