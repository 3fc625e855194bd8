"""The frontier recipe (``recipes/frontier/smollm2_frontier.yaml``) end to end through ``disel-study`` on a tiny
Llama: a LoRA arm, a post-hoc intruder-reduced arm on it, a DISeL arm and a full fine-tuning arm; the per-text
records, the cached base log-probabilities, ``frontier.json`` / ``frontier.md``; a rerun that recomputes nothing,
a rerun from only the committed records (no weights, no checkpoints) that recomputes nothing either, and a run
whose checkpoints are gone before it was fully evaluated, which trains again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tiny_models import TINY_STUDY

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "frontier" / "smollm2_frontier.yaml"
ARMS = ["lora_lr5e-4", "lora_lr5e-4_intruder0.5", "disel_lr5e-4", "full_lr5e-5"]
TINY = [
    *TINY_STUDY,
    "evaluation.bootstrap_replicates=20",
    "evaluation.checkpoint_steps=[1,2]",
    "evaluation.task_prompts=3",
    "evaluation.keep_checkpoints=true",
    "frontier.replicates=20",
    # large learning rates, so two steps move every arm away from the base
    "arms.lora_lr5e-4.overrides=[method.name=lora,training.learning_rate=0.02]",
    "arms.disel_lr5e-4.overrides=[method.name=disel,training.learning_rate=0.02]",
    "arms.full_lr5e-5.overrides=[method.name=full,training.learning_rate=0.002]",
]


def _phase_one(folder: Path) -> Path:
    """The recipe with one seed per arm (its phase 2 gives some arms a second; an arm name holds a dot, so no
    ``arms.<name>.seeds`` override can reach it): a copy whose training recipe path is absolute."""
    import yaml

    raw = yaml.safe_load(RECIPE.read_text())
    for arm in raw["arms"].values():
        arm.pop("seeds", None)
    raw["training_recipe"] = str((RECIPE.parent / raw["training_recipe"]).resolve())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECIPE.name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / RECIPE.name


def _committed_only(out: Path) -> None:
    """What a fresh clone holds of the study (paper_figs/frontier/.gitignore): per run its ``eval/`` and
    ``train_result.json``, and the study's top-level records; no weights, checkpoints, adapters or data."""
    for run in (out / "runs").iterdir():
        for item in run.iterdir():
            if item.name not in ("eval", "train_result.json"):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    for folder in ("adapters", "data"):
        shutil.rmtree(out / folder)


def _spy(monkeypatch) -> dict[str, list]:
    """Count trainings, evaluations and transform calls of the runner."""
    from disel.experiments.study import run as study_run
    from disel.experiments.study import stages, transforms
    from disel.experiments.train import run as train_run

    calls: dict[str, list] = {"train": [], "evaluate": [], "transform": []}
    train, evaluate, transform = train_run.train, stages.evaluate_model, transforms.TRANSFORMS["intruder_reduced"]
    monkeypatch.setattr(train_run, "train", lambda config: calls["train"].append(config) or train(config))
    spy = lambda *a, **k: calls["evaluate"].append(k) or evaluate(*a, **k)  # noqa: E731
    monkeypatch.setattr(stages, "evaluate_model", spy)
    # run.py binds evaluate_model at import (the base stage): patched there too, or the count depends on whether
    # an earlier test imported run.py before this spy (the full suite did: 8 evaluations counted, not 9).
    monkeypatch.setattr(study_run, "evaluate_model", spy)
    monkeypatch.setitem(
        transforms.TRANSFORMS,
        "intruder_reduced",
        lambda model, **p: calls["transform"].append(p) or transform(model, **p),
    )
    return calls


def _records(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.glob("runs/*/eval/step-*.json"))}


@pytest.mark.slow
def test_frontier_recipe_runs_exports_and_resumes_from_committed_records(tmp_path, tiny_llama_dir, monkeypatch):
    from disel.experiments.cli.study import main
    from disel.experiments.models import load_tokenizer
    from disel.experiments.study.frontier_results import load_frontier_results
    from disel.experiments.study.records import CheckpointEval, DataManifest

    out = tmp_path / "out"
    recipe = _phase_one(tmp_path / "recipe")
    argv = ["--recipe", str(recipe), "--output-dir", str(out), "--arms", *ARMS]
    argv += ["--override", *TINY, f"model_path={tiny_llama_dir}"]
    calls = _spy(monkeypatch)
    assert main(argv) == 0
    assert len(calls["train"]) == 3 and len(calls["evaluate"]) == 1 + 4 * 2  # the base, then 4 runs x 2 steps
    assert calls["transform"] == [{"mitigation_lambda": 0.5}] * 2  # every checkpoint of its source, transformed

    # Per checkpoint: per-text sums on English, code and the task's prompts that give back its KL and perplexity.
    base = CheckpointEval.read(out / "base.json")
    assert set(base.texts) == {"english", "code", "task"} and len(base.texts["task"]["tokens"]) == 3
    manifest = DataManifest.read(out / "data" / "manifest.json")
    tokenizer = load_tokenizer(tiny_llama_dir)
    lengths = [min(len(tokenizer(text)["input_ids"]), 32) - 1 for text in manifest.retention["code"]]
    assert base.texts["code"]["tokens"] == lengths  # per text, in the manifest's order
    for path in out.glob("runs/*/eval/step-*.json"):
        record = CheckpointEval.read(path)
        for domain, sums in record.texts.items():
            tokens = sum(sums["tokens"])
            assert sums["tokens"] == base.texts[domain]["tokens"]
            assert sum(sums["kl_sums"]) / tokens == pytest.approx(record.kl[domain], rel=1e-9)
            assert record.kl[domain] > 0, (path, domain)

    # The full fine-tuning arm's KL, from the cached base log-probabilities, is the live two-model computation.
    _check_cache_is_exact(out, tiny_llama_dir)
    _check_measured_stages(out)

    results = load_frontier_results(out / "frontier.json")
    assert {(run.method, run.configuration) for run in results.runs} == {
        ("lora", "lora_lr5e-4"),
        ("lora_intruder", "lora_lr5e-4_intruder0.5"),
        ("disel", "disel_lr5e-4"),
        ("full", "full_lr5e-5"),
    }
    for run in results.runs:
        assert run.steps == [0, 1, 2] and run.correct[0] == "".join(map(str, base.correct))
        assert set(run.texts) == {"english", "code", "task"} and not any(run.text("english").kl_sums[0])
    intruder = next(run for run in results.runs if run.method == "lora_intruder")
    assert intruder.source == "lora_lr5e-4" and intruder.settings == {"learning_rate": 0.02, "mitigation_lambda": 0.5}
    pairs = {(d.method, d.reference) for c in results.comparisons for d in c.differences}
    assert pairs <= {("disel", "lora"), ("disel", "full"), ("disel", "lora_intruder")}
    assert {b.method for b in results.best_accuracy} == {"lora", "lora_intruder", "disel", "full"}
    assert set(results.proxy) == {"english", "code"} and results.proxy["english"].n == 1 + 4 * 2
    summary = (out / "frontier.md").read_text()
    assert "| disel |" in summary and "| english |" in summary
    from paper_figs import frontier_all

    assert frontier_all.main(["--results", str(out / "frontier.json"), "--out", str(tmp_path / "figs")]) == 0
    assert len(list((tmp_path / "figs").glob("frontier*.png"))) == 3

    # A rerun, and a rerun from the committed records alone, recompute nothing and write the same analysis.
    frontier = (out / "frontier.json").read_text()
    before = _records(out)
    calls = _spy(monkeypatch)
    assert main(argv) == 0
    _committed_only(out)
    assert main(argv) == 0
    assert calls == {"train": [], "evaluate": [], "transform": []}
    assert _records(out) == before and (out / "frontier.json").read_text() == frontier
    # The analysis alone, from the records (no model loaded): the same file.
    from disel.experiments.study.config import load_study_config
    from disel.experiments.study.export import refresh_frontier

    (out / "frontier.json").unlink()
    refresh_frontier(load_study_config(recipe, [*TINY, f"model_path={tiny_llama_dir}"], arms=ARMS), out)
    assert (out / "frontier.json").read_text() == frontier

    # A run whose checkpoints are gone before its post-hoc arm was evaluated trains again, post-hoc arm and all.
    (out / "runs" / "lora_lr5e-4_intruder0.5-seed0" / "eval" / "step-2.json").unlink()
    calls = _spy(monkeypatch)
    assert main(argv) == 0
    assert len(calls["train"]) == 1 and len(calls["evaluate"]) == 2 * 2 and len(calls["transform"]) == 2
    assert {k: v for k, v in _records(out).items() if "lora_lr5e-4" not in k} == {
        k: v for k, v in before.items() if "lora_lr5e-4" not in k
    }


def _check_cache_is_exact(out: Path, model_path: Path) -> None:
    from disel.experiments.models import load_model_for_eval
    from disel.experiments.study.kl import mean_token_kl
    from disel.experiments.study.records import DataManifest
    from disel.experiments.study.task_kl import in_text_order, text_batches

    manifest = DataManifest.read(out / "data" / "manifest.json")
    run = out / "runs" / "full_lr5e-5-seed0"
    tuned, tokenizer = load_model_for_eval(run / "checkpoint-2", None, tokenizer_path=model_path)[:2]
    base = load_model_for_eval(model_path, None)[0]
    batches, order = text_batches(tokenizer, manifest.retention["code"], 32, 8)
    live = mean_token_kl(tuned, batches, base_model=base)
    record = json.loads((run / "eval" / "step-2.json").read_text())
    assert record["kl"]["code"] == pytest.approx(live.mean_kl, rel=1e-6, abs=1e-9)
    expected = in_text_order(live.sequence_kl_sums, order)
    assert record["texts"]["code"]["kl_sums"] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_checkpoint_steps_the_training_does_not_save_are_refused_naming_the_key(tmp_path, capsys):
    from disel.experiments.cli.study import main

    argv = ["--recipe", str(RECIPE), "--output-dir", str(tmp_path / "out"), "--arms", "lora_lr5e-4"]
    assert main([*argv, "--override", *TINY, "evaluation.checkpoint_steps=[1,3]"]) == 2
    error = capsys.readouterr().err
    assert "evaluation.checkpoint_steps" in error and "at steps [3]" in error
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_the_recipe_has_every_arm_the_issue_asks_for():
    """LoRA and DISeL at 4 learning rates spanning 8x, DISeL's gate ratio at 2 other values at one rate, full
    fine-tuning at 3 rates below LoRA's, the intruder reduction at 2 strengths on every LoRA arm, 4 checkpoints."""
    from disel.experiments.study.config import load_study_config

    config = load_study_config(RECIPE)
    specs = config.run_specs("/m", Path("/t.jsonl"), Path("/o"))
    by_method: dict[str, list] = {}
    for spec in specs:
        by_method.setdefault(config.frontier.method_of(spec.arm), []).append(spec)
    rates = {m: sorted({s.config.training.learning_rate for s in runs}) for m, runs in by_method.items()}
    assert len(rates["lora"]) == 4 and rates["lora"][-1] / rates["lora"][0] >= 8
    assert rates["disel"] == rates["lora"] and len(rates["full"]) == 3 and max(rates["full"]) < min(rates["lora"])
    ratios = {s.config.method.gate_lr_ratio for s in by_method["disel"] if s.config.training.learning_rate == 5e-4}
    assert len(ratios) == 3
    for lora in by_method["lora"]:
        strengths = {s.arm_config.transform_params["mitigation_lambda"] for s in by_method["lora_intruder"]
                     if s.arm_config.from_arm == lora.arm}  # fmt: skip
        assert len(strengths) >= 2
    assert len(config.evaluation.checkpoint_steps) >= 4
    assert {s.config.method.r for s in specs} == {8}


def _check_measured_stages(out: Path) -> None:
    """frontier_cost reads this study's own stage times: medians of its LoRA-like evaluations, seconds per
    training step by method, DISeL's extra evaluation time."""
    import statistics

    from disel.experiments.schemas import TrainResult
    from disel.experiments.study.frontier_cost import measured_stages
    from disel.experiments.study.records import CheckpointEval

    stages = measured_stages(out, Path(__file__).resolve().parents[1] / "paper_figs" / "evidence" / "results.json")
    records = {p: CheckpointEval.read(p) for p in out.glob("runs/*/eval/step-*.json")}
    plain = [r for p, r in records.items() if "disel" not in str(p)]
    assert stages.generation_s == statistics.median(r.generation_s for r in plain)
    assert stages.retention_s == statistics.median(r.retention_s for r in plain)
    per_step = {}
    for arm in ("lora_lr5e-4", "full_lr5e-5"):
        train = TrainResult.read(out / "runs" / f"{arm}-seed0")
        per_step[arm] = (train.trainer_runtime_s or train.runtime_s) / train.global_step
    assert stages.train_s_per_step == per_step["lora_lr5e-4"]
    assert stages.full_step_factor == pytest.approx(per_step["full_lr5e-5"] / per_step["lora_lr5e-4"])
    assert set(stages.sources.values()) == {"this study"}


@pytest.mark.slow
def test_two_workers_run_each_posthoc_arm_on_its_source_and_then_drop_the_checkpoints(tmp_path, tiny_llama_dir):
    """``--workers 2``: a post-hoc arm runs once its source is trained (its checkpoints still there), and a source's
    checkpoints are deleted once it and its post-hoc arms are evaluated (``evaluation.keep_checkpoints`` false)."""
    from disel.experiments.cli.study import main

    out = tmp_path / "out"
    overrides = [*TINY, "evaluation.keep_checkpoints=false", f"model_path={tiny_llama_dir}"]
    recipe = _phase_one(tmp_path / "recipe")
    argv = ["--recipe", str(recipe), "--output-dir", str(out), "--arms", *ARMS, "--workers", "2"]
    assert main([*argv, "--override", *overrides]) == 0
    for arm in ARMS:
        run = out / "runs" / f"{arm}-seed0"
        assert sorted(p.name for p in (run / "eval").glob("step-*.json")) == ["step-1.json", "step-2.json"], arm
        assert not list(run.glob("checkpoint-*")), arm


def test_the_second_seeds_go_where_the_phase_one_fronts_say():
    """Phase 2's rule (recipes/frontier/README.md): seeds [0, 1] on each method's two configurations with the
    largest share of its observed English-KL front in the committed phase-1 records; seed 0 alone elsewhere."""
    from disel.experiments.study.config import checkpoint_steps_of, load_study_config
    from disel.experiments.study.frontier_results import load_frontier_results
    from disel.experiments.study.fronts import front_shares

    config = load_study_config(RECIPE)
    specs = config.run_specs("model", Path("train.jsonl"), Path("out"))
    longer = {s.arm for s in specs if checkpoint_steps_of(s, config) != config.evaluation.checkpoint_steps}
    committed = RECIPE.parents[2] / "paper_figs" / "frontier" / "frontier.json"
    runs = load_frontier_results(committed).runs
    phase_one = [run for run in runs if run.seed == 0 and run.configuration not in longer]  # the 120-step arms
    shares = front_shares([run.frontier_run("kl", "english") for run in phase_one])
    chosen = {name for by in shares.values() for name in sorted(by, key=lambda n: -by[n])[:2]}
    assert {arm for arm, settings in config.arms.items() if settings.seeds == [0, 1]} == chosen
    assert all(settings.seeds in ([0], [0, 1]) for settings in config.arms.values())


def test_a_longer_arm_evaluates_its_own_checkpoints_and_its_post_hoc_arm_inherits_them():
    """``arms.<arm>.checkpoint_steps`` replaces ``evaluation.checkpoint_steps`` for that arm (and a post-hoc arm on
    it); a step it does not save is refused naming the arm's key; fronts then tell the lengths apart."""
    from disel.experiments.config import ConfigError
    from disel.experiments.study.config import load_study_config
    from disel.experiments.study.export import _frontier_settings
    from disel.experiments.study.stages import evaluated_steps

    config = load_study_config(RECIPE)
    specs = {spec.arm: spec for spec in config.run_specs("model", Path("train.jsonl"), Path("out")) if spec.seed == 0}
    assert evaluated_steps(specs["lora_lr1e-3"], config) == [20, 40, 60, 120]
    assert evaluated_steps(specs["lora_lr1e-3_steps240"], config) == [60, 120, 180, 240]
    assert evaluated_steps(specs["lora_lr1e-3_steps240_intruder0.5"], config) == [60, 120, 180, 240]
    with pytest.raises(ConfigError, match=r"arms\.full_lr5e-5_steps240\.checkpoint_steps .* steps \[90\]"):
        load_study_config(RECIPE, ["arms.full_lr5e-5_steps240.checkpoint_steps=[60,90]"])
    assert _frontier_settings(specs["lora_lr1e-3_steps240"], True) == {"learning_rate": 1e-3, "max_steps": 240.0}
    assert _frontier_settings(specs["lora_lr1e-3_steps240"], False) == {"learning_rate": 1e-3}
