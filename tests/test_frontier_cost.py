"""The frontier study's cost model (disel.experiments.study.frontier_cost): the evidence timing it falls back on,
the sums of a plan, the interpolation error of fewer checkpoints. Stage times measured on a study's records:
tests/test_frontier_study.py."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from disel.experiments.study.frontier_cost import (
    MeasuredStages,
    StudyPlan,
    evidence_timing,
    interpolation_error,
    study_cost,
)

EVIDENCE = Path(__file__).resolve().parents[1] / "paper_figs" / "evidence" / "results.json"


def test_timing_is_the_medians_and_total_of_the_evidence_file():
    raw = json.loads(EVIDENCE.read_text())
    timing = evidence_timing(EVIDENCE)
    per_step = [r["timing"]["train_runtime_s"] / r["timing"]["train_steps"] for r in raw["runs"]]
    assert timing.train_s_per_step == pytest.approx(statistics.median(per_step))
    lora = [r["timing"]["eval_s"] / (len(r["checkpoints"]) - 1) for r in raw["runs"] if r["arm"] == "lora"]
    assert timing.eval_s_per_checkpoint["lora"] == pytest.approx(statistics.median(lora))
    total = sum(r["timing"]["train_runtime_s"] + r["timing"]["eval_s"] for r in raw["runs"])
    assert timing.total_s == pytest.approx(total) and timing.runs == len(raw["runs"])


def test_a_plan_costs_its_evaluations_and_steps_at_the_measured_stage_times():
    stages = MeasuredStages(
        train_s_per_step=10.0, generation_s=100.0, retention_s=50.0, other_s=5.0, gates_s=20.0, base_s=300.0,
        full_step_factor=2.0,
    )  # fmt: skip
    plan = StudyPlan(adapter_runs=3, disel_runs=1, full_runs=2, checkpoints=4, posthoc_evaluations=8)
    cost = study_cost(stages, plan)
    evaluations = (3 + 2) * 4 + 8
    assert cost["training"] == 10.0 * 120 * (3 + 2 * 2)
    assert cost["generation"] == 100.0 * evaluations and cost["kl_passes"] == 50.0 * evaluations
    assert cost["other"] == 5.0 * evaluations + 20.0 * 1 * 4 + 300.0
    assert cost["total"] == pytest.approx(sum(v for k, v in cost.items() if k != "total"))
    doubled = study_cost(stages, StudyPlan(3, 1, 2, 8, 16))
    assert doubled["training"] == cost["training"] and doubled["generation"] == 2 * cost["generation"]


def test_interpolation_error_is_zero_with_every_checkpoint_and_refuses_unknown_steps():
    assert interpolation_error(EVIDENCE, [20, 40, 60, 80, 100, 120]) == 0.0
    assert interpolation_error(EVIDENCE, [20, 60, 120]) > interpolation_error(EVIDENCE, [20, 40, 60, 120])
    with pytest.raises(ValueError, match="30"):
        interpolation_error(EVIDENCE, [30, 60])
