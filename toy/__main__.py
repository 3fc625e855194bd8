"""Command line of the toy (THEORY.md §2): reproduce Figure 1 and run the teaching sweeps.

    python -m toy figure1 [--seed N] [--out DIR] [--steps N] [--no-progress]
    python -m toy sweep-separation [--seed N] [--out DIR] [--steps N] [--means ...] [--trained ...]
    python -m toy sweep-rank [--seed N] [--out DIR] [--steps N] [--ranks ...] [--trained ...] [--rank-delta K]
    python -m toy continual [--seed N] [--out DIR] [--steps N] [--tasks K] [--mean M]

``figure1`` trains full FT, LoRA and DISeL (``toy.run_figure1``), prints a table next to the closed
forms, and writes ``DIR/figure1.json`` (the numbers). The toy computes and writes; drawing is
``paper_figs.fig1_toy``'s job (``python -m paper_figs.fig1_toy`` trains through this command, then draws;
``scripts/figure1.sh`` runs that). The sweeps write ``DIR/sweep_<name>.json`` and print a table.
``continual`` trains DISeL with a branch per task and sequential LoRA through K tasks (``toy.continual``)
and writes ``DIR/toy_continual.json`` (``python -m paper_figs.toy_continual`` draws it).
``DIR`` defaults to ``paper_figs/out`` under the current directory. Every value is checked before any
training (the configuration's and the sweeps' own checks): a refused one prints one line
``python -m toy: error: --FLAG: …`` and exits with status 2. Every file is written atomically (temporary
file, then rename).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from disel.io import check_output_dir, write_json_atomic

from . import sweeps
from .train import METHODS, ToyTrainConfig, run_figure1

DEFAULT_OUT = Path("paper_figs") / "out"


def _progress(total: int, enabled: bool, desc: str):
    """A tqdm bar (to stderr) or a no-op context with the same ``update`` method."""
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


class _Refused(Exception):
    """A flag's value that the configuration or a sweep refuses (the message names the flag)."""


def _check(flag: str, check: Callable[..., Any], *values: Any) -> Any:
    """``check(*values)``, its ``ValueError`` turned into :class:`_Refused` naming ``flag``."""
    try:
        return check(*values)
    except ValueError as error:
        raise _Refused(f"{flag}: {error}") from None


def _check_seed(seed: int) -> None:
    if seed < 0:  # NumPy's generators refuse it, after the command has started
        raise ValueError(f"seed must be an integer >= 0, got {seed}")


def _check_args(args: argparse.Namespace) -> None:
    """Every value the run will use, checked before any training; :class:`_Refused` naming the flag."""
    _check("--seed", _check_seed, args.seed)
    _check("--steps", _config_from_args, args)
    if args.command == "sweep-separation":
        means = _check("--means", sweeps.check_means, args.means)
        _check("--trained", sweeps.check_trained, [float(t) for t in args.trained], means, "means")
    elif args.command == "sweep-rank":
        ranks = _check("--ranks", sweeps.check_ranks, args.ranks)
        _check("--trained", sweeps.check_trained, args.trained, ranks, "ranks")
        _check("--rank-delta", sweeps.check_rank_delta, args.rank_delta)
    elif args.command == "continual":
        from .continual import ContinualProblem

        _check("--tasks", lambda k: ContinualProblem.random(0, num_tasks=k), args.tasks)
        _check("--mean", _check_task_mean, args.mean)
    _check("--out", check_output_dir, args.out)


def _check_task_mean(mean: float) -> None:
    if not math.isfinite(mean) or mean <= 0:  # 0 puts every task on the pre-training population
        raise ValueError(f"must be a finite number > 0 (distance of each task mean from μ_0), got {mean}")


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
    print(
        f"Figure 1 (seed {config.seed}, {config.steps} steps, d = m = {result.problem.d}, "
        f"r = rank Δ = {result.problem.rank_delta}); excess MSE on fresh samples:"
    )
    print(result.table())
    print("fixed optimum = ¼ tr(Δ S Δᵀ) (eq. 19–20); Bayes = E[(1−π)²‖Δx‖²] on P_ft, E[π²‖Δx‖²] on P_pt (eq. 25)")
    print(f"trained and evaluated in {seconds:.1f} s")
    print(f"wrote {json_path}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
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


def _continual(args: argparse.Namespace) -> int:
    from .continual import ContinualProblem
    from .continual_train import CONTINUAL_RECIPE, format_continual_table, run_continual

    overrides = {"seed": args.seed} | ({} if args.steps is None else {"steps": args.steps})
    overrides["gate_delay_steps"] = min(CONTINUAL_RECIPE.gate_delay_steps, overrides.get("steps", 10**9) // 4)
    config = dataclasses.replace(CONTINUAL_RECIPE, **overrides)
    problem = ContinualProblem.random(args.seed, num_tasks=args.tasks, mean=args.mean)
    start = time.perf_counter()
    with _progress(2 * config.steps * args.tasks, args.progress, "continual") as bar:
        result = run_continual(problem, config, on_step=bar.update)
    numbers = result.to_dict() | {"runtime_seconds": time.perf_counter() - start}
    path = write_json_atomic(args.out / "toy_continual.json", numbers)
    print(format_continual_table(numbers))
    print(f"done in {numbers['runtime_seconds']:.1f} s; wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m toy", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--seed", type=int, default=0, help="seeds the problem, the training and the evaluation (default 0)"
        )
        sub.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
        sub.add_argument(
            "--steps",
            type=int,
            default=None,
            help=f"optimizer steps per method (default {ToyTrainConfig().steps})",
        )
        sub.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    figure1 = commands.add_parser(
        "figure1",
        help="train full FT, LoRA, DISeL; write figure1.json (python -m paper_figs.fig1_toy draws it)",
        allow_abbrev=False,
    )
    common(figure1)
    figure1.set_defaults(handler=_figure1)

    separation = commands.add_parser(
        "sweep-separation", help="mixture MSE against |μ| (closed forms + DISeL)", allow_abbrev=False
    )
    common(separation)
    separation.add_argument("--means", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0])
    separation.add_argument(
        "--trained", type=float, nargs="*", default=[0.5, 1.0, 2.0], help="means at which DISeL trains"
    )
    separation.set_defaults(handler=_sweep)

    rank = commands.add_parser(
        "sweep-rank", help="mixture MSE against rank r (closed forms + LoRA, DISeL)", allow_abbrev=False
    )
    common(rank)
    rank.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 8])
    rank.add_argument(
        "--trained", type=int, nargs="*", default=[1, 2, 4, 6], help="ranks at which LoRA and DISeL train"
    )
    rank.add_argument("--rank-delta", type=int, default=4, help="rank of the task update Δ (default 4)")
    rank.set_defaults(handler=_sweep)

    continual = commands.add_parser(
        "continual", help="a branch per task vs sequential LoRA over K tasks (toy.continual)", allow_abbrev=False
    )
    common(continual)
    continual.add_argument("--tasks", type=int, default=3, help="number of tasks K (default 3)")
    continual.add_argument("--mean", type=float, default=4.0, help="distance of each task mean from μ_0 (default 4)")
    continual.set_defaults(handler=_continual)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_args(args)  # before training: a refused value must not cost a run
    except _Refused as problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
