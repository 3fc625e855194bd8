"""Continual-learning measures from the accuracy matrix, with bootstrap intervals (NumPy only; issue 18).

A run learns T tasks in sequence; after stage i (having learned tasks 0..i of its order) every task's test set
is scored. ``R[i, j]`` is the accuracy on task j (the j-th of the order) after stage i, from per-example
correctness. The published measures (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018):

* average accuracy  AA  = (1/T) Σ_j R[T-1, j];
* backward transfer BWT = (1/(T-1)) Σ_{j<T-1} (R[T-1, j] − R[j, j])  (negative: learning later tasks hurt);
* forgetting        F   = (1/(T-1)) Σ_{j<T-1} (max_{j ≤ l ≤ T-2} R[l, j] − R[T-1, j]).

Forgetting takes the best accuracy on task j over the stages *after it was learned* and before the last one
(Chaudhry et al. take every earlier stage; before task j is learned its accuracy measures transfer, not
something that can be forgotten, and the two agree whenever the best accuracy comes after learning the task).

**Bootstrap over test examples.** The same test examples are scored at every stage, so one replicate draws each
task's examples with replacement once and uses those indices for every stage (and every task order, which
share the test sets): differences such as R[T-1, j] − R[j, j] are paired, as the data are.

**Across task orders.** The reported value is the mean over the orders. A replicate also draws the orders with
replacement, so the interval carries the order-to-order spread; with 3 orders that resampling is coarse (10
distinct draws) and understates it, so the per-order values are reported as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MEASURES",
    "OrderRun",
    "average_accuracy",
    "backward_transfer",
    "choose_learning_rate",
    "continual_summary",
    "forgetting",
]


@dataclass(frozen=True)
class OrderRun:
    """One task order's per-example correctness.

    Attributes:
        tasks: the T task names in training order.
        correct: task name → (T, n_task) 0/1 array; row i is after stage i, column e the same test example at
            every stage. A row of NaN marks a stage at which the task was not scored (a runner that scores only
            the tasks learned so far leaves R's upper triangle NaN; no measure reads it).
    """

    tasks: tuple[str, ...]
    correct: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        if sorted(self.tasks) != sorted(self.correct):
            raise ValueError(f"correct must have one entry per task of {list(self.tasks)}, got {sorted(self.correct)}")
        checked = {}
        for name, values in self.correct.items():
            array = np.asarray(values)
            if array.ndim != 2 or array.shape[0] != len(self.tasks) or array.shape[1] < 1:
                raise ValueError(
                    f"correct[{name!r}] must be a ({len(self.tasks)} stages, examples) array, got shape {array.shape}"
                )
            skipped = np.isnan(array).all(axis=1) if array.dtype.kind == "f" else np.zeros(len(array), dtype=bool)
            if not np.isin(array[~skipped], (0, 1)).all():
                raise ValueError(f"correct[{name!r}] must hold booleans or 0/1 values (or whole rows of NaN)")
            checked[name] = np.where(skipped[:, None], np.nan, array).astype(np.float64)
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "correct", checked)

    def matrix(self, indices: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """R: (T, T) accuracies, or (B, T, T) when ``indices`` gives each task (B, n) resampled example indices."""
        columns = []
        for name in self.tasks:
            values = self.correct[name]  # (T, n)
            if indices is None:
                columns.append(values.mean(axis=1))  # (T,)
            else:
                columns.append(values[:, indices[name]].mean(axis=-1).T)  # (T, B, n) → (B, T)
        return np.stack(columns, axis=-1)  # (T, T) or (B, T, T)


def average_accuracy(matrix: np.ndarray) -> np.ndarray:
    """AA = mean_j R[T-1, j] of ``matrix`` (..., T, T)."""
    return matrix[..., -1, :].mean(axis=-1)


def backward_transfer(matrix: np.ndarray) -> np.ndarray:
    """BWT = mean_{j<T-1} (R[T-1, j] − R[j, j]) of ``matrix`` (..., T, T), T ≥ 2."""
    t = _stages(matrix)
    diagonal = np.diagonal(matrix, axis1=-2, axis2=-1)[..., : t - 1]  # (..., T-1)
    return (matrix[..., -1, : t - 1] - diagonal).mean(axis=-1)


def forgetting(matrix: np.ndarray) -> np.ndarray:
    """F = mean_{j<T-1} (max_{j ≤ l ≤ T-2} R[l, j] − R[T-1, j]) of ``matrix`` (..., T, T), T ≥ 2."""
    t = _stages(matrix)
    stage = np.arange(t)[:, None]  # (T, 1)
    learned = (stage >= np.arange(t)[None, :]) & (stage < t - 1)  # (T, T): stages l with j ≤ l ≤ T-2
    best = np.where(learned, matrix, -np.inf).max(axis=-2)[..., : t - 1]  # (..., T-1)
    return (best - matrix[..., -1, : t - 1]).mean(axis=-1)


def _stages(matrix: np.ndarray) -> int:
    if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2] or matrix.shape[-1] < 2:
        raise ValueError(f"matrix must be (..., T, T) with T ≥ 2 tasks, got shape {matrix.shape}")
    return matrix.shape[-1]


MEASURES = {"AA": average_accuracy, "BWT": backward_transfer, "forgetting": forgetting}
"""Each measure's name in the summary and the function computing it from R."""


def _draw_examples(runs: Sequence[OrderRun], rng: np.random.Generator, replicates: int) -> dict[str, np.ndarray]:
    sizes = {}
    for run in runs:
        for name, values in run.correct.items():
            if sizes.setdefault(name, values.shape[1]) != values.shape[1]:
                raise ValueError(
                    f"task {name!r} has {sizes[name]} test examples in one order, {values.shape[1]} in another"
                )
    return {name: rng.integers(0, n, size=(replicates, n)) for name, n in sorted(sizes.items())}


def continual_summary(
    runs: Sequence[OrderRun], *, replicates: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, dict]:
    """AA, BWT and forgetting: the mean over ``runs`` (one per task order), its bootstrap interval, per-order values.

    Returns ``{measure: {"value", "low", "high", "per_order"}}`` plus ``"matrices"`` (each order's R as lists).
    """
    if not runs:
        raise ValueError("runs must hold at least one task order")
    if not 0 < confidence < 1 or replicates < 1:
        raise ValueError(f"need 0 < confidence < 1 and replicates ≥ 1, got {confidence=}, {replicates=}")
    rng = np.random.default_rng(seed)
    indices = _draw_examples(runs, rng, replicates)
    point = np.stack([run.matrix() for run in runs])  # (K, T, T)
    resampled = np.stack([run.matrix(indices) for run in runs], axis=1)  # (B, K, T, T)
    orders = rng.integers(0, len(runs), size=(replicates, len(runs)))  # (B, K): orders drawn with replacement
    tail = (1 - confidence) / 2
    summary: dict[str, dict] = {}
    for name, measure in MEASURES.items():
        per_order = measure(point)  # (K,)
        draws = np.take_along_axis(measure(resampled), orders, axis=1).mean(axis=1)  # (B,)
        low, high = np.quantile(draws, [tail, 1 - tail])
        summary[name] = {
            "value": float(per_order.mean()),
            "low": float(low),
            "high": float(high),
            "per_order": [float(v) for v in per_order],
        }
    matrices = [[[None if np.isnan(v) else float(v) for v in row] for row in matrix] for matrix in point]
    summary["matrices"] = {"orders": [list(run.tasks) for run in runs], "R": matrices}  # None: not scored
    return summary


def choose_learning_rate(held_out_accuracy: Mapping[float, float]) -> float:
    """The study's one learning-rate rule, for every method: the rate with the highest held-out label accuracy
    (on the first task's held-out split); ties go to the smaller rate (the smaller step disturbs the base less)."""
    if not held_out_accuracy:
        raise ValueError("held_out_accuracy must map at least one learning rate to its held-out accuracy")
    return min(held_out_accuracy, key=lambda rate: (-held_out_accuracy[rate], rate))
