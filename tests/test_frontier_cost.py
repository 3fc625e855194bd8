"""The frontier study's cost model (disel.experiments.study.frontier_cost) on the committed evidence timing."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from disel.experiments.study.frontier_cost import (
    EvaluationSplit,
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


def test_evaluation_parts_scale_with_checkpoints_and_caching_halves_the_kl_passes():
    timing = evidence_timing(EVIDENCE)
    split = EvaluationSplit(generation_s_per_problem=1.0, forward_s_per_token=0.02)
    plan = StudyPlan(10, 3, 4, 32, 0, 0.6)
    cost = study_cost(timing, split, plan)
    doubled = study_cost(timing, split, replace(plan, checkpoints=8, posthoc_evaluations=64))
    assert doubled["training"] == cost["training"]
    assert doubled["generation"] == pytest.approx(2 * cost["generation"])
    assert doubled["kl_passes"] == pytest.approx(2 * cost["kl_passes"])
    cached = study_cost(timing, split, replace(plan, base_logits_cached=True))
    assert cached["kl_passes"] == pytest.approx(cost["kl_passes"] / 2)
    assert cost["total"] == pytest.approx(cost["training"] + cost["generation"] + cost["kl_passes"])
    # Without task texts and new arms, one evidence-like run costs what the file says a run costs (LoRA only).
    one = study_cost(timing, split, StudyPlan(1, 0, timing.checkpoints_per_run, 0, 0, 0.0))
    expected = timing.train_s_per_step * 120 + timing.eval_s_per_checkpoint["lora"] * timing.checkpoints_per_run
    assert one["total"] == pytest.approx(expected)


def test_interpolation_error_is_zero_with_every_checkpoint_and_refuses_unknown_steps():
    assert interpolation_error(EVIDENCE, [20, 40, 60, 80, 100, 120]) == 0.0
    assert interpolation_error(EVIDENCE, [20, 60, 120]) > interpolation_error(EVIDENCE, [20, 40, 60, 120])
    with pytest.raises(ValueError, match="30"):
        interpolation_error(EVIDENCE, [30, 60])
