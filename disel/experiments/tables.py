"""Tables built from result files: the training runs under a folder, each with its per-checkpoint tables
(:func:`find_run_dirs`, :func:`read_runs`), and the tradeoff table of Figures 2 and 3 from them
(:func:`tradeoff_table_from_runs`; from the shell: ``disel-tradeoff``).

A run directory (for the checkpoint figures 6–9) holds ``train_result.json``, which names its method, rank and
seed, and one ``retention_<evaluator>.json`` per evaluator (:mod:`disel.experiments.schemas`). No torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .schemas import (
    RETENTION_SCHEMA,
    TRAIN_RESULT_FILE,
    MalformedResultFileError,
    MissingResultFileError,
    RetentionTable,
    TradeoffRow,
    TradeoffTable,
    TrainResult,
)

__all__ = ["RunResults", "find_run_dirs", "read_runs", "shared_base_value", "tradeoff_table_from_runs"]


@dataclass(frozen=True)
class RunResults:
    """One training run and one of its retention tables."""

    info: TrainResult
    table: RetentionTable


def find_run_dirs(runs_dir: str | os.PathLike) -> list[Path]:
    """The run directories under ``runs_dir``: ``runs_dir`` itself if it holds ``train_result.json``,
    else its sub-folders (any depth) that do, sorted by path."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise MissingResultFileError(
            runs_dir, "is not a directory; expected a folder of training runs, each with train_result.json"
        )
    if (runs_dir / TRAIN_RESULT_FILE).is_file():
        return [runs_dir]
    found = sorted(path.parent for path in runs_dir.rglob(TRAIN_RESULT_FILE))
    if not found:
        raise MissingResultFileError(
            runs_dir,
            f"holds no run: no {TRAIN_RESULT_FILE} in it or in any sub-folder (written when disel-train finishes)",
        )
    return found


def read_runs(run_dirs: Iterable[str | os.PathLike], evaluator: str) -> list[RunResults]:
    """Each run directory's ``train_result.json`` and its ``retention_<evaluator>.json``."""
    runs = []
    for run_dir in map(Path, run_dirs):
        info = TrainResult.read(run_dir)
        table_path = run_dir / f"retention_{evaluator}.json"
        if not table_path.is_file():
            present = sorted(p.name for p in run_dir.glob("retention_*.json"))
            raise MissingResultFileError(
                table_path,
                f"does not exist; expected the {RETENTION_SCHEMA} table of evaluator {evaluator!r} "
                f"(python -m disel.experiments.cli.eval retention ...); the run has {present or 'no retention table'}",
            )
        runs.append(RunResults(info, RetentionTable.read(table_path)))
    return runs


def shared_base_value(runs: Sequence[RunResults], metric: str, *, rel_tol: float = 1e-4) -> float | None:
    """The base model's ``metric``, on which every run's table must agree within ``rel_tol`` (else
    :class:`MalformedResultFileError` naming two tables); ``None`` if no table has a base row."""
    values = [(run.table.path, run.table.value(run.table.base, metric)) for run in runs if run.table.base is not None]
    if not values:
        return None
    first_path, first = values[0]
    for path, value in values[1:]:
        if not math.isclose(value, first, rel_tol=rel_tol, abs_tol=0.0):
            raise MalformedResultFileError(
                path,
                f"base-model {metric!r} is {value!r} but {first_path} has {first!r}: the runs were evaluated against "
                "different base models or evaluator settings and cannot share one base line",
            )
    return first


def _selected_row(
    ft_run: RunResults, retention_run: RunResults, ft_metric: str, retention_metric: str, select: str
) -> TradeoffRow:
    """One run's point: its best (ties: the earliest) or last checkpoint by ``ft_metric``, and that
    checkpoint's retention."""
    candidates = ft_run.table.checkpoints
    if not candidates:
        raise MalformedResultFileError(ft_run.table.path, "has no checkpoint rows to select from")
    if select == "best":
        chosen = max(candidates, key=lambda row: (ft_run.table.value(row, ft_metric), -row.step))
    else:
        chosen = candidates[-1]
    retention = retention_run.table.value(retention_run.table.row(chosen.checkpoint), retention_metric)
    info = ft_run.info
    return TradeoffRow(info.method, info.rank, info.seed, ft_run.table.value(chosen, ft_metric), retention)


def tradeoff_table_from_runs(
    run_dirs: Iterable[str | os.PathLike],
    *,
    ft_evaluator: str,
    retention_evaluator: str,
    retention_higher_is_better: bool,
    ft_metric: str = "mean",
    retention_metric: str = "mean",
    select: str = "best",
    ft_metric_name: str | None = None,
    retention_metric_name: str | None = None,
    title: str | None = None,
) -> TradeoffTable:
    """A tradeoff table (in memory, ``path`` None) from training runs and their per-checkpoint tables.

    Each run's point is its checkpoint with the highest ``ft_metric`` in ``retention_<ft_evaluator>.json``
    (``select="best"``, the paper's protocol, Appendix II.5; ties: the earliest) or its last one (``"last"``),
    with ``retention_metric`` of that checkpoint in ``retention_<retention_evaluator>.json``. The base scores
    come from the tables' base rows (fine-tuning score ``None`` without one). Metric names default to
    ``"<evaluator> <metric>"``.
    """
    if select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got select={select!r}")
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    if not run_dirs:
        raise ValueError("run_dirs is empty: no run to put in the table")
    ft_runs = read_runs(run_dirs, ft_evaluator)
    retention_runs = read_runs(run_dirs, retention_evaluator)
    rows = [_selected_row(ft, kept, ft_metric, retention_metric, select) for ft, kept in zip(ft_runs, retention_runs)]
    base_retention = shared_base_value(retention_runs, retention_metric)
    if base_retention is None:
        raise MalformedResultFileError(
            retention_runs[0].table.path,
            "has no base-model row (evaluate_checkpoints(include_base=True)); the table needs the base retention",
        )
    raw = {
        "ft_metric": ft_metric_name or f"{ft_evaluator} {ft_metric}",
        "retention_metric": retention_metric_name or f"{retention_evaluator} {retention_metric}",
        "retention_higher_is_better": retention_higher_is_better,
        "title": title,
        "rows": rows,
        "base": {"retention": base_retention, "ft_score": shared_base_value(ft_runs, ft_metric)},
    }
    table = TradeoffTable.from_dict(raw, f"<tradeoff table from runs {run_dirs[0]}, ...>")
    return dataclasses.replace(table, path=None)
