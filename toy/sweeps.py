"""Sweeps that teach the toy (THEORY.md §2): the mixture loss as separation and rank vary.

* :func:`separation_sweep`: as the populations move apart (|μ| grows), the Bayes loss (eq. 25) falls
  towards 0 while the best fixed correction (eq. 16) stays stuck at the half-correction conflict, so the
  gap between a fixed and an input-dependent update widens. At |μ| = 0 the populations coincide,
  π(x) ≡ p_ft and the two closed forms are equal: there is nothing for a gate to key on.
* :func:`rank_sweep`: on a problem with rank Δ = k, the best rank-r fixed correction (reduced-rank
  regression, :func:`toy.fixed_optimum` with ``rank=r``) improves until r = k and then stays at the
  full-rank fixed optimum; trained LoRA follows it, and trained DISeL reaches the Bayes loss once r ≥ k
  (eq. 31 needs a factorisation Δ = B A of inner dimension r).

Closed forms are evaluated at every point (cheap); training happens only at the points listed in
``trained`` (a few seconds each). Results are plain dataclasses with ``to_dict()``; plotting lives in
the figure code and notebooks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .closed_form import PopulationMSE, bayes_mse, fixed_mse, fixed_optimum
from .problem import MixtureProblem
from .train import METHODS, ToyTrainConfig, train_method

__all__ = [
    "SweepPoint",
    "Sweep",
    "check_means",
    "check_rank_delta",
    "check_ranks",
    "check_trained",
    "separation_sweep",
    "rank_sweep",
]


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One value of the swept parameter.

    Fields:
        value: the parameter's value (|μ| for a separation sweep, the rank r for a rank sweep).
        fixed: closed-form MSE of the best fixed correction at this point (rank-r for a rank sweep).
        bayes: closed-form MSE of the Bayes correction (eq. 25); the same at every r of a rank sweep.
        trained: method → excess MSE on fresh samples of a trained layer; empty where nothing trained.
    """

    value: float
    fixed: PopulationMSE
    bayes: PopulationMSE
    trained: Mapping[str, PopulationMSE] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep: the parameter's name, its points in order, and the training recipe used."""

    parameter: str
    points: tuple[SweepPoint, ...]
    config: ToyTrainConfig
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready numbers (what ``python -m toy sweep-*`` writes)."""

        def mse(value: PopulationMSE) -> dict[str, float]:
            return {"ft": value.ft, "pt": value.pt, "mixture": value.mixture}

        return {
            "parameter": self.parameter,
            "description": self.description,
            "config": dataclasses.asdict(self.config),
            "points": [
                {
                    "value": point.value,
                    "fixed": mse(point.fixed),
                    "bayes": mse(point.bayes),
                    "trained": {method: mse(value) for method, value in point.trained.items()},
                }
                for point in self.points
            ],
        }

    def table(self) -> str:
        """Mixture MSE per point: the closed forms, then each trained method (blank where untrained)."""
        methods = [method for method in METHODS if any(method in p.trained for p in self.points)]
        header = [self.parameter, "fixed", "Bayes", *methods]
        rows = [header]
        for point in self.points:
            value = f"{point.value:g}"
            trained = [f"{point.trained[m].mixture:.4g}" if m in point.trained else "" for m in methods]
            rows.append([value, f"{point.fixed.mixture:.4g}", f"{point.bayes.mixture:.4g}", *trained])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)


def check_trained(trained: Sequence, values: Sequence, name: str) -> None:
    """``trained`` must be among ``values`` (the sweep's ``name``): a trained point is a point of the sweep."""
    missing = [value for value in trained if value not in values]
    if missing:
        raise ValueError(f"trained must be a subset of {name}={list(values)}, got extra values {missing}")


def check_means(means: Sequence[float]) -> list[float]:
    """The means as floats; each a finite |μ| >= 0 (checked before any point is trained)."""
    means = [float(mean) for mean in means]
    if not means or any(not math.isfinite(mean) or mean < 0 for mean in means):
        raise ValueError(f"means must be finite numbers >= 0 (|μ|), at least one, got {means}")
    return means


def check_ranks(ranks: Sequence[int]) -> list[int]:
    """The ranks as ints; each a positive integer (checked before any point is trained)."""
    ranks = [int(rank) for rank in ranks]
    if not ranks or any(rank < 1 for rank in ranks):
        raise ValueError(f"ranks must be positive integers, at least one, got {ranks}")
    return ranks


def check_rank_delta(rank_delta: int, d: int = 10, m: int = 10) -> None:
    """Δ of rank ``rank_delta`` needs ``1 <= rank_delta <= min(d, m)``."""
    if isinstance(rank_delta, bool) or not isinstance(rank_delta, int) or not 1 <= rank_delta <= min(d, m):
        raise ValueError(f"rank_delta must be an integer in [1, min(d, m)] = [1, {min(d, m)}], got {rank_delta!r}")


def separation_sweep(
    means: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0),
    trained: Sequence[float] = (0.5, 1.0, 2.0),
    config: ToyTrainConfig = ToyTrainConfig(),
    *,
    d: int = 10,
    m: int = 10,
    on_step: Callable[[], Any] | None = None,
) -> Sweep:
    """Mixture loss against the mean magnitude |μ| (``μ_ft = +|μ| e₁``, ``μ_pt = −|μ| e₁``, Σ = I).

    Every point uses ``MixtureProblem.figure1(seed=config.seed, d, m, rank=config.rank, mean=|μ|)``:
    the same ``W0`` and Δ (their draws do not depend on the mean), only the populations move. DISeL is
    trained with ``config`` at the means in ``trained``.

    Returns:
        A :class:`Sweep` with parameter ``"separation"``; ``trained`` entries under ``"disel"``.
    """
    means = check_means(means)
    check_trained([float(t) for t in trained], means, "means")
    points = []
    for mean in means:
        problem = MixtureProblem.figure1(seed=config.seed, d=d, m=m, rank=config.rank, mean=mean)
        runs = {}
        if mean in [float(t) for t in trained]:
            runs["disel"] = train_method(problem, "disel", config, on_step=on_step).mse
        points.append(
            SweepPoint(
                value=mean,
                fixed=fixed_mse(problem, fixed_optimum(problem)),
                bayes=bayes_mse(problem),
                trained=runs,
            )
        )
    return Sweep(
        parameter="separation",
        points=tuple(points),
        config=config,
        description="mean magnitude |μ|; μ_ft = +|μ| e1, μ_pt = −|μ| e1, Σ = I; trained: DISeL",
    )


def rank_sweep(
    ranks: Sequence[int] = (1, 2, 3, 4, 5, 6, 8),
    trained: Sequence[int] = (1, 2, 4, 6),
    config: ToyTrainConfig = ToyTrainConfig(),
    *,
    rank_delta: int = 4,
    mean: float = 2.0,
    methods: Sequence[str] = ("lora", "disel"),
    d: int = 10,
    m: int = 10,
    on_step: Callable[[], Any] | None = None,
) -> Sweep:
    """Mixture loss against the adapter rank r on a problem with rank Δ = ``rank_delta``.

    The problem is ``MixtureProblem.figure1(seed=config.seed, d, m, rank=rank_delta, mean)``. At each r
    the closed-form fixed reference is the best rank-r fixed correction (``fixed_optimum(rank=r)``,
    reduced-rank regression); the Bayes reference does not depend on r. ``methods`` (LoRA, DISeL) are
    trained at the ranks in ``trained`` with ``config`` (its ``rank`` field is replaced by r).
    """
    ranks = check_ranks(ranks)
    check_trained([int(t) for t in trained], ranks, "ranks")
    check_rank_delta(rank_delta, d, m)
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        raise ValueError(f"methods must be among {METHODS}, got {unknown}")
    problem = MixtureProblem.figure1(seed=config.seed, d=d, m=m, rank=rank_delta, mean=mean)
    bayes = bayes_mse(problem)
    points = []
    for rank in ranks:
        runs = {}
        if rank in [int(t) for t in trained]:
            rank_config = dataclasses.replace(config, rank=rank)
            for method in methods:
                runs[method] = train_method(problem, method, rank_config, on_step=on_step).mse
        points.append(
            SweepPoint(
                value=rank,
                fixed=fixed_mse(problem, fixed_optimum(problem, rank=rank)),
                bayes=bayes,
                trained=runs,
            )
        )
    return Sweep(
        parameter="rank",
        points=tuple(points),
        config=config,
        description=f"adapter rank r; rank Δ = {rank_delta}, |μ| = {mean:g}; trained: {', '.join(methods)}",
    )
