"""What the figures average before they draw: runs (seeds) of one ``(method, rank)``, step by step or at their
selected checkpoint. Reads nothing itself: it takes what :mod:`disel.experiments.schemas` read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from disel.experiments.schemas import MalformedResultFileError, TradeoffRow, TradeoffTable
from disel.experiments.tables import RunResults

__all__ = ["CheckpointCurve", "TradeoffPoint", "checkpoint_curves", "summarize_over_seeds"]


@dataclass(frozen=True)
class CheckpointCurve:
    """``metric`` over training steps for one ``(method, rank)``: the mean over its runs (seeds) at each
    step and the sample standard deviation (0 with one run)."""

    method: str
    rank: int | None
    steps: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    run_dirs: tuple[Path, ...]


def checkpoint_curves(runs: Sequence[RunResults], metric: str) -> list[CheckpointCurve]:
    """One :class:`CheckpointCurve` per ``(method, rank)``, ordered by method (first appearance) then rank.

    Runs that share ``(method, rank)`` must have checkpoints at the same steps.
    """
    groups: dict[tuple[str, int | None], list[RunResults]] = {}
    for run in runs:
        groups.setdefault((run.info.method, run.info.rank), []).append(run)
    methods = list(dict.fromkeys(method for method, _ in groups))
    curves = []
    for (method, rank), members in sorted(
        groups.items(), key=lambda item: (methods.index(item[0][0]), _rank_key(item[0][1]))
    ):
        series = [(run, *run.table.series(metric)) for run in members]
        steps = series[0][1]
        for run, other_steps, _ in series[1:]:
            if other_steps != steps:
                raise MalformedResultFileError(
                    run.table.path,
                    f"has checkpoints at steps {other_steps} but {series[0][0].table.path} (same method {method!r}, "
                    f"rank {rank}) has {steps}: seeds of one configuration must save at the same steps",
                )
        columns = list(zip(*(values for _, _, values in series)))
        curves.append(
            CheckpointCurve(
                method,
                rank,
                tuple(steps),
                tuple(_mean(c) for c in columns),
                tuple(_sample_std(c) for c in columns),
                tuple(run.info.run_dir for run in members),
            )
        )
    return curves


def _rank_key(rank: int | None) -> float:
    return math.inf if rank is None else rank


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (n − 1); 0 for a single value."""
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class TradeoffPoint:
    """One ``(method, rank)`` of a tradeoff table: mean and sample standard deviation over its seeds."""

    method: str
    rank: int | None
    seeds: tuple[int | None, ...]
    ft_mean: float
    ft_std: float
    retention_mean: float
    retention_std: float


def summarize_over_seeds(table: TradeoffTable) -> list[TradeoffPoint]:
    """One :class:`TradeoffPoint` per ``(method, rank)``, ordered by method (first appearance) then
    rank; the standard deviation is the sample one (n − 1), 0 for a single seed."""
    groups: dict[tuple[str, int | None], list[TradeoffRow]] = {}
    for row in table.rows:
        groups.setdefault((row.method, row.rank), []).append(row)
    methods = list(dict.fromkeys(method for method, _ in groups))
    points = []
    for (method, rank), rows in sorted(
        groups.items(), key=lambda item: (methods.index(item[0][0]), _rank_key(item[0][1]))
    ):
        ft = [r.ft_score for r in rows]
        retention = [r.retention for r in rows]
        points.append(
            TradeoffPoint(
                method,
                rank,
                tuple(r.seed for r in rows),
                _mean(ft),
                _sample_std(ft),
                _mean(retention),
                _sample_std(retention),
            )
        )
    return points
