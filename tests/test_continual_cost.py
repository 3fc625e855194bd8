"""The continual study's cost estimate (recipes/continual/measure_cost.py): hand-computed on made-up unit costs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "continual" / "measure_cost.py"


def _module():
    spec = importlib.util.spec_from_file_location("measure_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COSTS = {
    "batch_size": 2,
    "train_step_s": {m: {"a": s, "b": s} for m, s in (("lora", 2.0), ("disel", 4.0), ("osf", 6.0))},
    "score_s_per_example": {"a": 1.0, "b": 3.0},
}
PLAN = {
    "orders": 2,
    "sequential_arms": {"x": "lora", "y": "osf"},
    "multitask_arms": {"m": "disel"},
    "lr_grids": {"lora": 3},
    "examples_per_task": 10,
    "test_per_task": 5,
    "held_out": 4,
}


def test_estimate_by_hand():
    """Per training example: lora 1 s, disel 2 s, osf 3 s; scoring 2 s per example (mean over the 2 tasks).
    Sequential: 2 orders × 2 tasks × 10 × (1 + 3) = 160 s. Multitask: 2 × 10 × 2 = 40 s. Selection: 3 × 10 × 1
    = 30 s. Scoring: cells = 2 × 2 × 3 (lower triangle of 2 tasks) + 1 × 2 + 2 = 16, × 5 × 2 = 160, plus
    3 × 1 × 4 × 2 = 24 → 184 s."""
    hours = _module().estimate(COSTS, PLAN)
    expected = {"train_sequential": 160, "train_multitask": 40, "lr_selection_train": 30, "scoring": 184}
    for key, seconds in expected.items():
        assert hours[key] == pytest.approx(seconds / 3600)
    assert hours["total"] == pytest.approx(414 / 3600)


def test_estimate_command_reads_the_cost_file(tmp_path, capsys):
    """``--estimate`` prints the default plan's hours from the JSON file without loading a model."""
    path = tmp_path / "cost.json"
    costs = {**COSTS, "score_s_per_example": {"a": 1.0, "b": 3.0, "c": 1.0, "d": 3.0}}
    costs["train_step_s"] = {m: {t: v["a"] for t in "abcd"} for m, v in COSTS["train_step_s"].items()}
    path.write_text(json.dumps(costs))
    module = _module()
    assert module.main(["--out", str(path), "--estimate"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(module.estimate(costs))


def test_the_plan_counts_the_recipe_grids():
    """The selection's size comes from the recipe: every method it selects a rate for, with its grid's length."""
    import yaml

    module = _module()
    grids = yaml.safe_load(module.RECIPE.read_text())["continual"]["learning_rates"]["grids"]
    assert module.PLAN["lr_grids"] == {("osf" if m == "full" else m): len(r) for m, r in grids.items()}
    assert set(module.PLAN["lr_grids"]) == {"lora", "disel", "osf"}


def test_the_plan_counts_the_recipe_arms(tmp_path):
    """Every arm of the recipe, by kind, costed at its method's step (OSF's own); a new arm changes the plan."""
    import yaml

    module = _module()
    recipe = yaml.safe_load(module.RECIPE.read_text())
    plan = module.recipe_arms()
    assert set(plan["sequential_arms"]) | set(plan["multitask_arms"]) == set(recipe["arms"])
    assert plan["sequential_arms"]["osf"] == "osf" and plan["multitask_arms"]["multitask_disel"] == "disel"
    assert plan["sequential_arms"]["olora"] == "lora" and "multitask_lora" not in plan["sequential_arms"]
    recipe["arms"]["extra"] = {"overrides": ["method.name=disel", "training.learning_rate=3e-3"], "phases": "branches"}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert module.recipe_arms(path)["sequential_arms"]["extra"] == "disel"
