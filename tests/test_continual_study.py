"""The continual study through the one runner (issue 18): every kind of arm trains its phases end to end on a
tiny Llama and tiny two-task data, a killed run resumes at the next phase, the results file and the gate table."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from disel.experiments.study.config import load_study_config

TASKS = {"agnews": ["World", "Sports"], "yelp": ["1 star", "5 stars"]}
WORDS = {"World": "election minister", "Sports": "match goal", "1 star": "awful rude", "5 stars": "lovely great"}


def _tiny_data(folder: Path) -> Path:
    """Two tasks of two labels: 8 training and 4 test rows each, the label's words in the text."""
    for task, labels in TASKS.items():
        (folder / task).mkdir(parents=True)
        (folder / task / "labels.json").write_text(json.dumps(labels))
        for split, n in (("train", 8), ("test", 4)):
            rows = [{"text": f"{WORDS[labels[i % 2]]} {i}", "label": labels[i % 2]} for i in range(n)]
            (folder / task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


ARMS = {
    "sequential_lora": ("lora", "sequential"),
    "disel_branches": ("disel", "branches"),
    "sequential_disel": ("disel", "sequential"),
    "olora": ("lora", "olora"),
    "osf": ("full", "osf"),
    "multitask_lora": ("lora", "multitask"),
}


def _recipe(tmp_path: Path, model_dir: Path, arms=ARMS, selection: bool = False) -> Path:
    training = {
        "name": "tiny_continual",
        "model": {"path": "set-by-runner", "task_type": "causal_lm"},
        "data": {"train_files": ["set-by-runner.jsonl"], "template": "alpaca", "max_length": 96},
        "method": {"name": "lora", "r": 2, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "training": {"output_dir": "x", "learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_steps": 2},
    }
    study = {
        "name": "tiny_continual",
        "model_path": str(model_dir),
        "training_recipe": "training.json",
        "reference_arm": next(iter(arms)),
        "arms": {
            name: {"overrides": [f"method.name={m}", *extra], "phases": p} for name, (m, p, *extra) in arms.items()
        },
        "evaluation": {
            "retention_tokens": 40,
            "retention_max_length": 32,
            "gate_sequences": 2,
            "bootstrap_replicates": 50,
        },
        "continual": {
            "data_dir": str(_tiny_data(tmp_path / "data")),
            "tasks": list(TASKS),
            "orders": {"order1": ["agnews", "yelp"], "order2": ["yelp", "agnews"]},
            "max_text_tokens": None,
            "test_per_task": 3,
            **({"learning_rates": {"held_out_fraction": 0.25, "grids": {"lora": [1e-4, 1e-3]}}} if selection else {}),
        },
    }
    (tmp_path / "training.json").write_text(json.dumps(training))
    (tmp_path / "study.json").write_text(json.dumps(study))
    return tmp_path / "study.json"


def _one_order(tmp_path: Path, model_dir: Path, arm: str, method: str, phases: str):
    """The tiny study with one arm and one order, ``o``: agnews then yelp."""
    config = load_study_config(_recipe(tmp_path, model_dir, arms={arm: (method, phases)}))
    return config.model_copy(
        update={"continual": config.continual.model_copy(update={"orders": {"o": ["agnews", "yelp"]}})}
    )


@pytest.fixture(scope="module")
def finished(tiny_llama_dir, tmp_path_factory):
    """One whole tiny study, every arm kind, two orders, with learning-rate selection for LoRA."""
    from disel.experiments.study.run import run_study

    tmp = tmp_path_factory.mktemp("continual")
    config = load_study_config(_recipe(tmp, tiny_llama_dir, selection=True))
    lines: list[str] = []
    summary = run_study(config, tmp / "out", echo=lines.append)
    return config, tmp / "out", summary, lines


def test_every_arm_kind_trains_two_phases_and_scores_them(finished):
    """Each (arm, order) has a scores.json per phase (the multitask arm one) holding the lower triangle."""
    config, out, _, _ = finished
    for arm, (_, mode) in ARMS.items():
        for order_name, order in config.continual.orders.items():
            folder = out / "runs" / f"{arm}-seed0" / ("multitask" if mode == "multitask" else order_name)
            phases = sorted(folder.glob("phase-*/scores.json"))
            expected = 1 if mode == "multitask" else 2
            assert len(phases) == expected, (arm, order_name)
            scored = [set(json.loads(p.read_text())["correct"]) for p in phases]
            assert scored == ([set(order)] if mode == "multitask" else [{order[0]}, set(order)])
            assert (folder / "final.json").is_file()


def test_phases_continue_from_the_previous_weights(finished, tiny_llama_dir):
    """Branches: phase 1's adapter holds a frozen copy of phase 0's branch; O-LoRA: two adapters; OSF: the merged
    weights moved from the base, and only the newest merged model is kept."""
    from safetensors.torch import load_file

    _, out, _, _ = finished
    runs = out / "runs"
    phase0 = load_file(str(runs / "disel_branches-seed0/order1/phase-0-agnews/adapter/adapter_model.safetensors"))
    phase1 = load_file(str(runs / "disel_branches-seed0/order1/phase-1-yelp/adapter/adapter_model.safetensors"))
    frozen = {k: v for k, v in phase1.items() if "disel_frozen" in k}
    assert frozen, "phase 1 should carry phase 0's branch as frozen tensors"
    a_keys = sorted(k for k in phase0 if k.endswith("disel_A.weight"))
    first_frozen = sorted(k for k in frozen if k.endswith(".A"))
    assert len(a_keys) == len(first_frozen)
    assert all(np.array_equal(phase0[a].numpy(), frozen[f].numpy()) for a, f in zip(a_keys, first_frozen))
    assert sorted(p.name for p in (runs / "olora-seed0/order1/phase-1-yelp/adapter").iterdir() if p.is_dir()) == [
        "task0",
        "task1",
    ]
    base = load_file(str(tiny_llama_dir / "model.safetensors"))
    merged = load_file(str(runs / "osf-seed0/order1/phase-1-yelp/model/model.safetensors"))
    assert any(not np.array_equal(base[k].numpy(), merged[k].numpy()) for k in base if "q_proj" in k)
    assert not (runs / "osf-seed0/order1/phase-0-agnews/model").exists(), "only the newest merged model is kept"


def test_results_file_and_gate_table(finished):
    """results.json: every arm, its matrices matching the phase records, AA/BWT/forgetting with intervals; DISeL
    branch arms carry a (branch x task) gate table of means in (0, 1); the learning rate chosen by the rule."""
    from disel.experiments.study.continual_metrics import choose_learning_rate

    config, out, summary, _ = finished
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == set(ARMS)
    entry = results["arms"]["sequential_lora"]
    run = next(r for r in entry["runs"] if r["order"] == "order2")
    phase0, phase1 = (
        json.loads(p.read_text())
        for p in sorted((out / "runs/sequential_lora-seed0/order2").glob("phase-*/scores.json"))
    )
    assert run["R"][1][0] == pytest.approx(np.mean(phase1["correct"]["yelp"]))
    assert run["R"][0][1] is None  # upper triangle not scored
    assert run["train_loss"] == [phase0["train_loss"], phase1["train_loss"]]
    assert entry["AA"]["low"] <= entry["AA"]["value"] <= entry["AA"]["high"]
    assert entry["BWT"]["value"] is not None and results["arms"]["multitask_lora"]["BWT"]["value"] is None
    gates = results["arms"]["disel_branches"]["gates"]
    assert gates["branches"] == list(TASKS) and np.array(gates["mean"]).shape == (2, 2)
    assert all(0 < g < 1 for row in gates["mean"] for g in row)
    assert results["arms"]["sequential_disel"]["gates"]["branches"] == ["all"]
    held = {float(k): v for k, v in results["learning_rates"]["lora"]["held_out"].items()}
    assert results["learning_rates"]["lora"]["chosen"] == choose_learning_rate(held)
    assert entry["learning_rate"] == choose_learning_rate(held)
    assert "sequential_lora" in summary["table"] and (out / "summary.md").is_file()


def test_a_killed_run_resumes_at_the_next_phase(tiny_llama_dir, tmp_path):
    """A run whose second phase's record is lost redoes that phase only; phase 0 is not retrained."""
    from disel.experiments.study.run import run_study

    config = _one_order(tmp_path, tiny_llama_dir, "disel_branches", "disel", "branches")
    out = tmp_path / "out"
    run_study(config, out, echo=lambda _: None)
    folder = out / "runs/disel_branches-seed0/o"
    first = (folder / "phase-0-agnews/scores.json").read_text()
    (folder / "phase-1-yelp/scores.json").unlink()  # killed during phase 1
    (folder / "final.json").unlink()
    lines: list[str] = []
    run_study(config, out, echo=lines.append)
    assert [line for line in lines if "phase" in line and line.startswith("[")] == [
        next(line for line in lines if "phase 1 yelp" in line)
    ]
    assert (folder / "phase-0-agnews/scores.json").read_text() == first
    assert (folder / "final.json").is_file()
    shutil.rmtree(folder / "phase-0-agnews/adapter")  # a fresh checkout: records kept, weights lost
    lines.clear()
    run_study(config, out, echo=lines.append)
    assert not any("phase" in line for line in lines), "a complete order is skipped without its weights"


def test_continual_recipe_refuses_mismatched_arms(tiny_llama_dir, tmp_path):
    """A branches arm must be DISeL, an order must be a permutation of the tasks."""
    from disel.experiments.config import ConfigError

    with pytest.raises(ConfigError, match="branches need disel"):
        load_study_config(_recipe(tmp_path, tiny_llama_dir, arms={"bad": ("lora", "branches")}))
    path = _recipe(tmp_path / "b", tiny_llama_dir) if (tmp_path / "b").mkdir() is None else None
    raw = json.loads(path.read_text())
    raw["continual"]["orders"]["order2"] = ["yelp", "yelp"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="is not an order"):
        load_study_config(path)


def test_run_all_draws_the_continual_figures(finished, tmp_path):
    """``python -m paper_figs.run_all --continual results.json --only continual`` draws the three figures from a
    finished study's file, and refuses a file of another kind with exit status 2."""
    from paper_figs import run_all

    _, out, _, _ = finished
    argv = ["--continual", str(out / "results.json"), "--only", "continual", "--out", str(tmp_path)]
    assert run_all.main(argv) == 0
    for stem in ("continual_matrices", "continual_measures", "continual_gates"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0, stem
    (tmp_path / "other.json").write_text(json.dumps({"schema": "disel.study.eval/1"}))
    argv[1] = str(tmp_path / "other.json")
    assert run_all.main(argv) == 2


def test_matrix_by_task_name_reindexes_each_order():
    """A run in order (b, a) puts its R[0][0] (accuracy on b after learning b) at cell (b, b) of the task-name
    matrix; the two orders' values at the same cell are averaged; unscored cells stay NaN."""
    from paper_figs.continual_matrices import by_task_name

    entry = {
        "phases": "sequential",
        "runs": [
            {"tasks": ["a", "b"], "R": [[0.2, None], [0.4, 0.6]]},
            {"tasks": ["b", "a"], "R": [[0.8, None], [0.1, 0.3]]},
        ],
    }
    matrix = by_task_name(entry, ["a", "b"])
    assert matrix[0, 0] == pytest.approx((0.2 + 0.3) / 2)  # a after learning a: order 1 R[0][0], order 2 R[1][1]
    assert matrix[1, 1] == pytest.approx((0.6 + 0.8) / 2)
    assert matrix[1, 0] == pytest.approx(0.4) and matrix[0, 1] == pytest.approx(0.1)
    assert np.isnan(by_task_name({"phases": "sequential", "runs": [entry["runs"][0]]}, ["a", "b"])[0, 1])


def test_cell_values_are_written_legibly_on_the_heat_map():
    """Every finite cell gets its value, black on the light end of the colour map and white on the dark end; an
    unscored (NaN) cell gets none."""
    import matplotlib.pyplot as plt

    from paper_figs.continual_plots import annotate_cells

    values = np.array([[0.02, 0.97], [np.nan, 0.5]])
    fig, ax = plt.subplots()
    annotate_cells(ax, ax.imshow(values, vmin=0, vmax=1, cmap="viridis"), values)
    texts = {t.get_text(): t.get_color() for t in ax.texts}
    plt.close(fig)
    assert set(texts) == {"0.02", "0.97", "0.50"}
    assert texts["0.02"] == "w" and texts["0.97"] == "k"


def test_results_report_the_measured_cost(finished):
    """results.json's cost sums the seconds recorded by every phase, final and selection file."""
    _, out, _, _ = finished
    cost = json.loads((out / "results.json").read_text())["cost"]
    phases = [json.loads(p.read_text()) for p in (out / "runs").glob("*/*/phase-*/scores.json")]
    assert cost["train_s"] == pytest.approx(sum(p["train_s"] for p in phases))
    total = cost["selection_s"] + cost["train_s"] + cost["score_s"] + cost["final_s"]
    assert cost["worker_hours"] == pytest.approx(total / 3600)


def test_gate_table_slices_each_branch(tiny_llama_dir):
    """gate_table's row k is branch k: with the frozen first branch's gates forced open (W_g = 0, b_g = +20:
    σ = 1) and the trainable second's shut (b_g = -20: σ ≈ 0), the rows are [1, 1] and [0, 0] on both tasks."""
    import torch
    from peft import get_peft_model

    import disel
    from disel.experiments.data.continual import ContinualTask, LabelledRow
    from disel.experiments.models import load_model, load_tokenizer
    from disel.experiments.study.continual_run import gate_table
    from disel.tuner.layer import DiselLayer

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    config = disel.DiselConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    model = disel.add_task_branch(get_peft_model(load_model(str(tiny_llama_dir)), config))
    with torch.no_grad():
        for layer in (m for m in model.modules() if isinstance(m, DiselLayer)):
            frozen = layer.frozen_branches("default")[0]
            frozen.gate_weight.zero_()
            frozen.gate_bias.fill_(20.0)
            layer.disel_gate["default"].weight.zero_()
            layer.disel_gate["default"].bias.fill_(-20.0)
    rows = (LabelledRow("agnews", "What topic? sport", "Sports", 0),)
    tasks = {name: ContinualTask(name, ("Sports",), rows, rows) for name in ("agnews", "yelp")}
    table = gate_table(model, tokenizer, tasks, ["agnews", "yelp"], "alpaca", 1)
    assert table["branches"] == ["agnews", "yelp"] and table["tasks"] == ["agnews", "yelp"]
    np.testing.assert_allclose(table["mean"], [[1.0, 1.0], [0.0, 0.0]], atol=1e-6)


def test_aggregate_alone_rebuilds_the_results_from_the_records(finished, tmp_path):
    """aggregate_continual (no model loaded) rebuilds results.json from a copy of the records alone (weights
    left out, as in a commit), equal to what the run wrote."""
    from disel.experiments.study.continual_results import aggregate_continual

    config, out, _, _ = finished
    copy = tmp_path / "records"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("adapter", "model", "trainer", "work"))
    written = json.loads((out / "results.json").read_text())
    rebuilt = aggregate_continual(config, copy)["results"]
    rebuilt["cost"], written["cost"] = rebuilt["cost"]["train_s"], written["cost"]["train_s"]
    assert rebuilt == written


def test_records_of_another_learning_rate_are_refused_not_reused(tiny_llama_dir, tmp_path):
    """A changed learning rate (a recipe edit, or a selection grid that now chooses another rate) must not continue
    a run from phase records made at the old rate: refused naming the folder and both rates."""
    from disel.experiments.study.run import run_study

    config = _one_order(tmp_path, tiny_llama_dir, "sequential_lora", "lora", "sequential")
    out = tmp_path / "out"
    run_study(config, out, echo=lambda _: None)
    folder = out / "runs/sequential_lora-seed0/o"
    (folder / "phase-1-yelp/scores.json").unlink()
    path = tmp_path / "study.json"
    training = json.loads((tmp_path / "training.json").read_text())
    training["training"]["learning_rate"] = 2e-3
    (tmp_path / "training.json").write_text(json.dumps(training))
    changed = load_study_config(path).model_copy(update={"continual": config.continual})
    with pytest.raises(ValueError, match=r"phase-0-agnews.*learning rate 0\.001 .*now gives 0\.002 .*delete"):
        run_study(changed, out, echo=lambda _: None)
    assert not (folder / "phase-1-yelp/scores.json").exists()  # nothing trained on top of the old phase


def test_a_rate_chosen_at_the_edge_of_its_grid_is_reported(finished):
    """LoRA's grid here is [1e-4, 1e-3]: whichever wins lies at an edge, where the best rate may be outside the grid."""
    lines = finished[3]
    chosen = next(line for line in lines if line.startswith("[learning rate lora]") and "edge" not in line)
    rate = chosen.split()[-1]
    assert f"[learning rate lora] {rate} is at the edge of its grid [0.0001, 0.001]: widen the grid" in lines


def test_two_workers_run_the_selection_and_every_arm_order_and_resume_from_their_records(tiny_llama_dir, tmp_path):
    """``workers=2``: every selection candidate and every (arm, order) runs in a spawned process; the records are
    all there, the chosen rate is the rule's on the candidates' files, and a rerun in one process trains nothing."""
    from disel.experiments.study.continual_metrics import choose_learning_rate
    from disel.experiments.study.records import PhaseScores, SelectionScores
    from disel.experiments.study.run import run_study

    arms = {"sequential_lora": ("lora", "sequential"), "disel_branches": ("disel", "branches")}
    config = load_study_config(_recipe(tmp_path, tiny_llama_dir, arms=arms, selection=True))
    out = tmp_path / "out"
    lines: list[str] = []
    run_study(config, out, echo=lines.append, workers=2)
    candidates = {rate: SelectionScores.read(out / "selection" / f"lora-lr{rate:g}.json") for rate in (1e-4, 1e-3)}
    chosen = choose_learning_rate({rate: record.accuracy for rate, record in candidates.items()})
    assert f"[learning rate lora] {chosen:g}" in lines
    assert sum(line.startswith("[selection lora ") for line in lines) == 2
    for arm in arms:
        for order, tasks in (("order1", ["agnews", "yelp"]), ("order2", ["yelp", "agnews"])):
            folder = out / "runs" / f"{arm}-seed0" / order
            scores = [PhaseScores.read(folder / f"phase-{i}-{task}" / "scores.json") for i, task in enumerate(tasks)]
            assert [s.task for s in scores] == tasks and (folder / "final.json").is_file()
            if arm == "sequential_lora":
                assert {s.learning_rate for s in scores} == {chosen}
    assert (out / "results.json").is_file()
    lines.clear()
    run_study(config, out, echo=lines.append)
    assert not any(" phase " in line for line in lines), lines


def test_an_arm_that_sets_its_learning_rate_keeps_it_beside_the_selected_one(tiny_llama_dir, tmp_path):
    """A sensitivity arm (``training.learning_rate`` in its overrides) trains at its own rate and adds no selection
    candidate; the other arm of the same method trains at the selected rate; results.json reports each arm's."""
    from disel.experiments.study.continual_metrics import choose_learning_rate
    from disel.experiments.study.records import PhaseScores, SelectionScores
    from disel.experiments.study.run import run_study

    arms = {
        "sequential_lora": ("lora", "sequential"),
        "sequential_lora_lr5e-4": ("lora", "sequential", "training.learning_rate=5e-4"),
    }
    config = load_study_config(_recipe(tmp_path, tiny_llama_dir, arms=arms, selection=True))
    config = config.model_copy(
        update={"continual": config.continual.model_copy(update={"orders": {"o": ["agnews", "yelp"]}})}
    )
    out = tmp_path / "out"
    lines: list[str] = []
    run_study(config, out, echo=lines.append)
    assert sorted(p.name for p in (out / "selection").glob("*.json")) == ["lora-lr0.0001.json", "lora-lr0.001.json"]
    chosen = choose_learning_rate(
        {rate: SelectionScores.read(out / "selection" / f"lora-lr{rate:g}.json").accuracy for rate in (1e-4, 1e-3)}
    )
    assert "[learning rate sequential_lora_lr5e-4] 0.0005" in lines and f"[learning rate lora] {chosen:g}" in lines
    for arm, rate in (("sequential_lora", chosen), ("sequential_lora_lr5e-4", 5e-4)):
        scores = [PhaseScores.read(p) for p in sorted((out / "runs" / f"{arm}-seed0/o").glob("phase-*/scores.json"))]
        assert len(scores) == 2 and {s.learning_rate for s in scores} == {rate}
    results = json.loads((out / "results.json").read_text())
    assert results["arms"]["sequential_lora_lr5e-4"]["learning_rate"] == 5e-4
    assert results["arms"]["sequential_lora"]["learning_rate"] == chosen == results["learning_rates"]["lora"]["chosen"]


def test_the_shipped_recipe_loads_and_its_sensitivity_arms_fix_a_rate_of_their_grid():
    """recipes/continual/smollm2_continual.yaml passes the study checks; exactly the ``*_lr<rate>`` arms fix their
    learning rate, at that rate, a candidate of their method's selection grid."""
    from disel.experiments.study.config import fixes_learning_rate

    config = load_study_config(Path(__file__).resolve().parents[1] / "recipes/continual/smollm2_continual.yaml")
    specs = {s.arm: s for s in config.run_specs("<model_path>", Path("<train_file>"), Path("<out>"))}
    fixed = {arm for arm, settings in config.arms.items() if fixes_learning_rate(settings)}
    assert fixed and fixed == {arm for arm in config.arms if "_lr" in arm}
    for arm in fixed:
        rate = specs[arm].config.training.learning_rate
        assert float(arm.rpartition("_lr")[2]) == rate
        assert rate in config.continual.learning_rates.grids[specs[arm].config.method.name]


def test_a_phase_another_order_already_ran_is_copied_not_retrained(tiny_llama_dir, tmp_path):
    """Two orders that begin with the same task share phase 0: the second copies it (weights and scores, its
    record naming the source and counting no seconds) and its next phase comes out exactly as the first order's.
    OSF keeps only its newest weights, so there the first phase is trained again."""
    from disel.experiments.study.records import PhaseScores
    from disel.experiments.study.run import run_study

    arms = {"sequential_lora": ("lora", "sequential"), "osf": ("full", "osf")}
    config = load_study_config(_recipe(tmp_path, tiny_llama_dir, arms=arms))
    orders = {"o1": ["agnews", "yelp"], "o2": ["agnews", "yelp"]}
    config = config.model_copy(update={"continual": config.continual.model_copy(update={"orders": orders})})
    out = tmp_path / "out"
    lines: list[str] = []
    run_study(config, out, echo=lines.append)

    def phase(arm, order, i):
        return PhaseScores.read(next((out / "runs" / f"{arm}-seed0" / order).glob(f"phase-{i}-*/scores.json")))

    first, copied = phase("sequential_lora", "o1", 0), phase("sequential_lora", "o2", 0)
    assert copied.shared_from == "o1" and first.shared_from is None
    assert (copied.order, copied.train_s, copied.score_s) == ("o2", 0.0, 0.0)
    assert copied.correct == first.correct and copied.train_loss == first.train_loss
    assert (out / "runs/sequential_lora-seed0/o2/phase-0-agnews/adapter/adapter_model.safetensors").is_file()
    assert "[sequential_lora-seed0 o2 phase-0-agnews] copied from o1 (the same phase)" in lines
    trained, again = phase("sequential_lora", "o1", 1), phase("sequential_lora", "o2", 1)
    assert again.shared_from is None and again.train_s > 0  # the last phase is never copied: _final needs its model
    assert (again.correct, again.train_loss) == (trained.correct, trained.train_loss)
    assert phase("osf", "o2", 0).shared_from is None and phase("osf", "o2", 0).train_s > 0
