"""AA, BWT, forgetting and their bootstrap intervals (disel.experiments.study.continual_metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from disel.experiments.study.continual_metrics import (
    OrderRun,
    average_accuracy,
    backward_transfer,
    choose_learning_rate,
    continual_summary,
    forgetting,
)

# R[i, j] after stage i on task j, each a multiple of 1/20 so 20 examples realise it exactly.
R = np.array([[0.80, 0.10, 0.00], [0.60, 0.90, 0.20], [0.50, 0.70, 0.95]])
TASKS = ("a", "b", "c")


def _correct(matrix: np.ndarray, tasks=TASKS, n: int = 20) -> dict[str, np.ndarray]:
    """Per-example correctness realising ``matrix`` exactly: example e of task j is right at stage i iff
    e < R[i, j]·n."""
    counts = np.rint(matrix * n).astype(int)
    return {name: np.arange(n)[None, :] < counts[:, j, None] for j, name in enumerate(tasks)}


def test_measures_on_a_hand_computed_matrix():
    """AA = (0.5 + 0.7 + 0.95)/3; BWT = ((0.5 − 0.8) + (0.7 − 0.9))/2 = −0.25;
    F = ((max(0.8, 0.6) − 0.5) + (0.9 − 0.7))/2 = 0.25."""
    assert average_accuracy(R) == pytest.approx(2.15 / 3)
    assert backward_transfer(R) == pytest.approx(-0.25)
    assert forgetting(R) == pytest.approx(0.25)
    assert OrderRun(TASKS, _correct(R)).matrix() == pytest.approx(R)


def test_forgetting_ignores_stages_before_a_task_is_learned():
    """Task b scored 0.9 by transfer before it was learned (stage 0) and 0.4 after: forgetting uses 0.4.
    F = ((0.8 − 0.5) + (0.4 − 0.4))/2 = 0.15."""
    matrix = np.array([[0.8, 0.9, 0.1], [0.6, 0.4, 0.2], [0.5, 0.4, 0.9]])
    assert forgetting(matrix) == pytest.approx(0.15)
    assert forgetting(np.stack([matrix, R])) == pytest.approx([0.15, 0.25])


def test_summary_averages_orders_and_reports_each():
    """Two orders: the value is the mean of the per-order values (hand-computed for the reversed order)."""
    reversed_tasks = ("c", "b", "a")
    other = np.array([[0.9, 0.3, 0.2], [0.85, 0.8, 0.3], [0.6, 0.8, 0.7]])  # AA 0.7, BWT -0.15, F 0.15
    runs = [OrderRun(TASKS, _correct(R)), OrderRun(reversed_tasks, _correct(other, reversed_tasks))]
    summary = continual_summary(runs, replicates=200)
    assert summary["AA"]["per_order"] == pytest.approx([2.15 / 3, 0.7])
    assert summary["BWT"]["value"] == pytest.approx((-0.25 - 0.15) / 2)
    assert summary["forgetting"]["value"] == pytest.approx((0.25 + 0.15) / 2)
    for name in ("AA", "BWT", "forgetting"):
        assert summary[name]["low"] <= summary[name]["value"] <= summary[name]["high"]
        assert summary[name]["low"] < summary[name]["high"]


def test_bootstrap_is_paired_across_stages():
    """Claim: a task's examples are resampled jointly across stages. When every example is right at every
    stage or wrong at every stage (R[j, j] = R[T-1, j] exactly), every replicate has BWT = 0, so the interval
    is the point 0; resampling stages independently would widen it."""
    n = 40
    steady = np.arange(n) < 25  # the same 25 examples right at every stage
    correct = {name: np.tile(steady, (3, 1)) for name in TASKS}
    summary = continual_summary([OrderRun(TASKS, correct)], replicates=300)
    assert summary["BWT"]["low"] == summary["BWT"]["high"] == 0.0
    assert summary["AA"]["low"] < summary["AA"]["high"]


def _simulate(truth: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Example e of task j is right at stage i iff its difficulty u_e < truth[i, j] (one u per example shared by
    the stages: the pairing of real data)."""
    return {name: rng.random(n)[None, :] < truth[:, j, None] for j, name in enumerate(TASKS)}


@pytest.mark.parametrize("measure", ["AA", "BWT"])
def test_interval_coverage_on_a_synthetic_case(measure):
    """Claim: the 95% interval covers the true value in about 95% of repeated experiments. 300 experiments of
    150 examples per task from known accuracies; the count of misses is Binomial(300, 0.05) (mean 15, sd 3.8),
    so coverage in [0.89, 0.99] is within about 4 sd."""
    truth = np.array([[0.7, 0.3, 0.2], [0.55, 0.8, 0.3], [0.45, 0.65, 0.9]])
    true_value = {"AA": average_accuracy(truth), "BWT": backward_transfer(truth)}[measure]
    rng = np.random.default_rng(0)
    hits = 0
    for experiment in range(300):
        summary = continual_summary([OrderRun(TASKS, _simulate(truth, 150, rng))], replicates=400, seed=experiment)
        hits += summary[measure]["low"] <= true_value <= summary[measure]["high"]
    assert 0.89 <= hits / 300 <= 0.99


def test_inputs_are_checked():
    """Wrong shapes, non-binary values, mismatched test sets and T < 2 are refused with what was expected."""
    with pytest.raises(ValueError, match="stages"):
        OrderRun(TASKS, {name: np.ones((2, 5)) for name in TASKS})
    with pytest.raises(ValueError, match="0/1"):
        OrderRun(TASKS, {name: np.full((3, 5), 0.5) for name in TASKS})
    with pytest.raises(ValueError, match="one entry per task"):
        OrderRun(TASKS, {"a": np.ones((3, 5))})
    with pytest.raises(ValueError, match="test examples"):
        continual_summary([OrderRun(TASKS, _correct(R)), OrderRun(TASKS, _correct(R, n=40))])
    with pytest.raises(ValueError, match="T ≥ 2"):
        backward_transfer(np.ones((1, 1)))


def test_unscored_upper_triangle_changes_nothing():
    """Claim: AA, BWT and forgetting read only R[i, j] with i ≥ j, so NaN rows for the stages before a task is
    learned give the same summary, and the reported matrix shows them as None."""
    full = _correct(R)
    lower = {name: values.astype(float) for name, values in full.items()}
    for j, name in enumerate(TASKS):
        lower[name][:j] = np.nan
    a = continual_summary([OrderRun(TASKS, full)], replicates=100)
    b = continual_summary([OrderRun(TASKS, lower)], replicates=100)
    for name in ("AA", "BWT", "forgetting"):
        assert a[name] == b[name]
    assert b["matrices"]["R"][0][0] == [0.8, None, None]


def test_learning_rate_rule_prefers_accuracy_then_the_smaller_rate():
    """Highest held-out accuracy wins; among equals the smallest rate; an empty grid is refused."""
    assert choose_learning_rate({1e-4: 0.5, 3e-4: 0.7, 1e-3: 0.6}) == 3e-4
    assert choose_learning_rate({1e-3: 0.7, 1e-4: 0.7, 3e-4: 0.2}) == 1e-4
    with pytest.raises(ValueError, match="at least one"):
        choose_learning_rate({})
