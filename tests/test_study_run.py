"""``disel-study`` end to end on a tiny Llama model: every stage, the results file, the figures ``paper_figs``
draws from it, a resumed run that recomputes nothing already done, the command-line checks (device and bf16
override parsing); the methods x ranks comparison recipe with its export for ``paper_figs``; a post-hoc arm and
a full fine-tuning arm."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_portable_adapters import absolute_paths

from tiny_models import TINY_STUDY

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "evidence" / "smollm2_tradeoff.yaml"
TINY = [
    *TINY_STUDY,
    "training.learning_rate=0.01",
    "evaluation.bootstrap_replicates=50",
    "arms.lora.seeds=[0,1]",
    "arms.disel_paper.seeds=[0]",
    "arms.disel_toy.seeds=[0]",
    "arms.disel_delay.seeds=[0]",
]


def _overrides(tmp_path: Path, model: Path) -> list[str]:
    return [
        *TINY,
        f"model_path={model}",
        f"figures_dir={tmp_path / 'figs'}",
        "arms.disel_delay.overrides=[method.name=disel,method.gate_delay_steps=1]",
    ]


def _mtimes(out: Path) -> dict[str, int]:
    keep = ("base.json", "manifest.json", "train_result.json")
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("*.json") if p.name in keep or p.parent.name == "eval"}


@pytest.mark.slow
def test_evidence_runs_end_to_end_then_resumes_without_recomputing(tmp_path, monkeypatch, tiny_llama_dir):
    from disel.experiments.cli.study import main
    from disel.experiments.models import recorded_path
    from disel.experiments.schemas import TrainResult
    from disel.experiments.study import stages
    from disel.experiments.study.results import load_results
    from disel.io import read_json

    model = tiny_llama_dir
    out = tmp_path / "out"
    argv = ["--recipe", str(RECIPE), "--output-dir", str(out), "--override", *_overrides(tmp_path, model)]
    assert main(argv) == 0
    results = load_results(out / "results.json")
    assert results.n_test_problems == 6
    assert results.seeds == {"lora": [0, 1], "disel_paper": [0], "disel_toy": [0], "disel_delay": [0]}
    for run in results.runs:
        assert [c.step for c in run.checkpoints] == [0, 1, 2]  # base + 2 checkpoints
        assert run.checkpoints[0].kl == {"english": 0.0, "code": 0.0}
        assert all(c.kl["english"] > 0 for c in run.checkpoints[1:])
        assert (run.arm == "lora") == (run.checkpoints[-1].anti_aligned_fraction is None)
        assert (Path(recorded_path(run.adapter)) / "adapter_model.safetensors").is_file()
    assert absolute_paths(read_json(out / "results.json")) == []  # every input was given as an absolute path
    assert {(c.arm, c.kind, c.domain) for c in results.comparisons} >= {("disel_paper", "kl", "english")}
    speed = results.throughput["arms"]["lora"]  # measured on the arm's first run: its steps x tokens / runtime
    train = TrainResult.read(out / "runs" / speed["run"])
    tokens = train.global_step * train.config["training"]["per_device_train_batch_size"] * speed["mean_padded_length"]
    assert speed["tokens_per_s"] == pytest.approx(tokens / train.trainer_runtime_s)
    assert speed["fraction_of_flop_limit"] == pytest.approx(speed["tokens_per_s"] / speed["flop_limit_tokens_per_s"])
    from paper_figs import evidence_all

    assert not (tmp_path / "figs" / "evidence_accuracy.png").exists()  # the runner draws nothing
    assert evidence_all.main(["--results", str(out / "results.json"), "--out", str(tmp_path / "figs")]) == 0
    for stem in ("evidence_tradeoff_kl", "evidence_accuracy", "evidence_retention_kl", "evidence_gates"):
        assert (tmp_path / "figs" / f"{stem}.png").is_file()
    summary = (out / "summary.md").read_text()
    final_table, matched, sentences, *_ = summary.split("\n\n")
    assert "| lora | 2 |" in final_table and "| retention |" in matched and "disel_paper" in sentences
    diagnostics = summary.split("| arm | seeds | max anti-aligned fraction")[1]
    assert "| disel_toy | 1 |" in diagnostics and "| lora |" not in diagnostics  # DISeL arms only
    assert "| lora (lora-seed0) |" in diagnostics  # the measured training speed

    # Resume after a "kill": the aggregate files and one checkpoint evaluation are gone.
    before = _mtimes(out)
    (out / "results.json").unlink()
    (out / "summary.md").unlink()
    lost = out / "runs" / "disel_toy-seed0" / "eval" / "step-2.json"
    lost.unlink()
    calls = []
    evaluate = stages.evaluate_model
    monkeypatch.setattr(stages, "evaluate_model", lambda *a, **k: calls.append(k) or evaluate(*a, **k))
    assert main(argv) == 0
    assert len(calls) == 1 and calls[0]["is_disel"]  # only the lost checkpoint was evaluated again
    after = _mtimes(out)
    assert lost.is_file()
    assert {k: v for k, v in after.items() if k != str(lost)} == {k: v for k, v in before.items() if k != str(lost)}
    assert load_results(out / "results.json").runs[0].checkpoints[-1].step == 2

    # The same resume with two worker processes (spawned, single-threaded): again only the lost evaluation.
    lost.unlink()
    assert main([*argv, "--workers", "2"]) == 0
    assert lost.is_file()
    again = _mtimes(out)
    assert {k: v for k, v in again.items() if k != str(lost)} == {k: v for k, v in before.items() if k != str(lost)}


def test_device_and_bf16_overrides_are_accepted_and_routed(tmp_path):
    """``--device cuda --override model.dtype=bfloat16`` (no GPU needed to parse): training on the GPU, the
    base loaded in bf16; evidence keys stay in the evidence recipe."""
    from disel.experiments.study.config import load_study_config

    config = load_study_config(
        RECIPE,
        ["model.dtype=bfloat16", "training.bf16=true", "problems.test=300", "model_path=/some/model"],
        device="cuda",
    )
    assert config.problems.test == 300 and config.device == "cuda"
    specs = config.run_specs("/some/model", tmp_path / "train.jsonl", tmp_path)
    assert len(specs) == 8  # 4 arms x seeds 0, 1
    assert all(s.config.model.dtype == "bfloat16" and s.config.training.bf16 for s in specs)
    assert all(not s.config.training.use_cpu for s in specs)
    toy = next(s for s in specs if s.arm == "disel_toy").config.method
    assert (toy.gate_bias_init, toy.gate_delay_steps, toy.r, toy.scaling_alpha) == (0.0, 12, 8, 16.0)
    lora = next(s for s in specs if s.arm == "lora").config
    assert (lora.training.max_steps, lora.training.save_steps, lora.training.learning_rate) == (120, 20, 5e-4)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--arms", "lora", "dora"], "--arms: ['dora'] are not arms"),
        (["--arms", "disel_paper"], "reference_arm"),  # the reference arm must stay
        (["--override", "arms.lora.overrides=[training.output_dir=/x]"], "cannot be overridden"),
        (["--threads", "0"], "--threads must be a positive integer"),
        (["--output-dir", __file__], "--output-dir"),  # a file, not a folder: refused before any work
        (["--override", "problems.tests=3"], "problems.tests"),
        (["--override", "reference_arm=dora"], "reference_arm"),
        (["--override", "training.max_step=3", "model_path=/x"], "max_step"),
    ],
)
def test_bad_arguments_give_one_line_errors(argv, message, capsys, tmp_path):
    from disel.experiments.cli.study import main

    try:
        code = main(["--recipe", str(RECIPE), "--output-dir", str(tmp_path), *argv])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "low, high, expected",
    [(-0.3, -0.1, "retains MORE"), (0.1, 0.3, "retains LESS"), (-0.1, 0.2, "NO clear retention difference")],
)
def test_verdict_follows_the_intervals(low, high, expected):
    from disel.experiments.study.aggregate import _sentence
    from disel.experiments.study.results import MatchedComparison
    from disel.experiments.study.stats import MatchedDifference

    differences = [
        MatchedDifference(
            level=level,
            disel=1.0,
            lora=1.2,
            difference=(low + high) / 2,
            low=low,
            high=high,
            confidence=0.95,
            defined_fraction=1.0,
            replicates=100,
        )
        for level in (0.2, 0.4)
    ]
    sentence = _sentence(MatchedComparison("disel_paper", "lora", "kl", "english", differences))
    assert expected in sentence and f"{(low + high) / 2:+.4f} [{low:+.4f}, {high:+.4f}]" in sentence
    # levels whose intervals disagree are reported apart: more at one level, no clear difference at another
    clear = differences[0].__class__(
        **{**differences[0].__dict__, "difference": -0.2, "low": -0.3, "high": -0.1, "level": 0.6}
    )
    mixed = _sentence(MatchedComparison("disel_paper", "lora", "kl", "english", [*differences, clear]))
    more_clause = mixed.split("retains MORE of the base model than lora at ")[1].split(";")[0]
    assert "0.60 (-0.2000 [-0.3000, -0.1000])" in more_clause
    if expected != "retains MORE":
        assert expected in mixed
    assert "cannot be compared" in _sentence(MatchedComparison("disel_paper", "lora", "kl", "english", []))


def test_arms_keeps_only_the_named_arms_with_their_settings():
    from disel.experiments.config import read_recipe
    from disel.experiments.study.config import load_study_config

    full = load_study_config(RECIPE)
    seeds = read_recipe(RECIPE)["arms"]["lora"]["seeds"]
    assert len(seeds) > 1  # so that the override below changes them
    subset = load_study_config(RECIPE, [f"arms.lora.seeds=[{seeds[-1]}]"], arms=["lora", "disel_paper"])
    assert list(subset.arms) == ["lora", "disel_paper"]
    assert subset.arms["disel_paper"] == full.arms["disel_paper"]
    assert subset.arms["lora"].seeds == [seeds[-1]] and full.arms["lora"].seeds == seeds


COMPARISON = Path(__file__).resolve().parents[1] / "recipes" / "comparison" / "smollm2_methods_ranks.yaml"


def test_the_comparison_recipe_is_methods_by_ranks_each_disel_arm_against_lora_of_its_rank(tmp_path):
    from disel.experiments.study.config import load_study_config

    config = load_study_config(COMPARISON)
    specs = config.run_specs("/m", tmp_path / "train.jsonl", tmp_path)
    methods = {s.arm: (s.config.method.name, s.config.method.r) for s in specs}
    ranks = {rank for _, rank in methods.values()}
    assert len(ranks) > 1 and sorted(methods.values()) == sorted((m, r) for m in ("lora", "disel") for r in ranks)
    for arm, (method, rank) in methods.items():
        assert arm == f"{method}-r{rank}"  # the arm's name says what its overrides make it
        if method == "disel":
            assert methods[config.reference_of(arm)] == ("lora", rank)


@pytest.mark.slow
def test_comparison_export_posthoc_and_full_arms(tmp_path, tiny_llama_dir):
    """The comparison recipe (two of its arms) plus a post-hoc arm (every LoRA checkpoint with B scaled by 0:
    exactly the base again) and a full fine-tuning arm (KL against a frozen copy of the base): the export's
    files read under their schemas and ``paper_figs.run_all`` draws Figures 3-7, 10, 11 from them."""
    from disel.experiments.cli.study import main
    from disel.experiments.schemas import RetentionTable, TradeoffTable
    from disel.experiments.study.results import load_results
    from paper_figs import run_all

    model = tiny_llama_dir
    out = tmp_path / "out"
    overrides = [
        *TINY[:14],
        f"model_path={model}",
        f"figures_dir={tmp_path / 'adapters'}",
        "export.gates_arm=disel-r4",
        "arms.zero.from_arm=lora-r4",
        "arms.zero.transform=scale_adapter",
        "arms.zero.transform_params={factor: 0.0}",
        "arms.full.overrides=[method.name=full]",
    ]
    argv = ["--recipe", str(COMPARISON), "--output-dir", str(out), "--arms", "lora-r4", "disel-r4"]
    assert main([*argv, "--override", *overrides]) == 0
    results = load_results(out / "results.json")
    base = results.base
    by_arm = {run.arm: run for run in results.runs}
    for checkpoint in by_arm["zero"].checkpoints[1:]:
        assert checkpoint.kl == {"english": pytest.approx(0.0, abs=1e-6), "code": pytest.approx(0.0, abs=1e-6)}
        assert checkpoint.perplexity == pytest.approx(base.perplexity, rel=1e-5)
    assert all(c.kl["english"] > 1e-6 for c in by_arm["full"].checkpoints[1:])
    assert all(c.kl["english"] > 1e-6 for c in by_arm["lora-r4"].checkpoints[1:])
    assert by_arm["full"].adapter is None and by_arm["lora-r4"].adapter is not None

    for arm in ("lora-r4", "disel-r4", "full"):
        table = RetentionTable.read(out / "runs" / f"{arm}-seed0" / "retention_perplexity.json")
        assert [row.step for row in table.rows] == [c.step for c in by_arm[arm].checkpoints]
        assert table.value(table.base, "english") == base.perplexity["english"]
    tradeoff = TradeoffTable.read(out / "tradeoff_llm_code.json")
    assert {(row.method, row.rank) for row in tradeoff.rows} == {("lora", 4), ("disel", 4), ("zero", 4), ("full", None)}
    assert tradeoff.base_retention == base.perplexity["code"]
    figures = ["--only", "3", "4", "5", "6", "7", "10", "11", "--runs-dir", str(out / "runs")]
    tables = ["--retention-evaluator", "perplexity", "--retention-metric", "english", "--ft-evaluator", "gsm8k"]
    argv = ["--results", str(out), "--out", str(tmp_path / "figs"), *figures, *tables, "--ft-metric", "exact_match"]
    assert run_all.main(argv) == 0
    assert (tmp_path / "figs" / "figure11.png").is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["arms.zero.from_arm=lora-r4"], "needs both from_arm and transform"),
        (["arms.zero.from_arm=lora-r4", "arms.zero.transform=no_such"], "'no_such' is not registered"),
        (["arms.zero.from_arm=dora", "arms.zero.transform=scale_adapter"], "'dora' is not an arm"),
        (["arms.zero.from_arm=lora-r4", "arms.zero.transform=scale_adapter", "arms.zero.seeds=[5]"], "seeds"),
        (["arms.lora-r4.overrides=[method.name=lora,model.path=/elsewhere]"], "cannot be overridden"),
    ],
)
def test_arms_that_cannot_work_are_refused_naming_the_key(overrides, message):
    from disel.experiments.config import ConfigError
    from disel.experiments.study.config import load_study_config

    with pytest.raises(ConfigError, match=message):
        load_study_config(COMPARISON, overrides)


def test_the_console_script_is_this_main():
    """pyproject registers disel-study at cli/study.py's main, and no other command of the study runner."""
    import re

    from disel.experiments.cli import study

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    scripts = dict(re.findall(r'^(disel-[\w-]+) = "([\w.:]+)"$', text.split("[project.scripts]")[1], re.MULTILINE))
    assert scripts["disel-study"] == f"{study.__name__}:main"
    assert not {"disel-compare", "disel-evidence"} & set(scripts)


def test_an_output_folder_of_another_study_is_refused_not_mixed_in(tmp_path, tiny_llama_dir):
    """The data stage records the problems and retention settings; a recipe with others refuses the folder
    instead of scoring its arms on the other study's problems."""
    from disel.experiments.config import ConfigError
    from disel.experiments.models import load_tokenizer
    from disel.experiments.study.config import load_study_config
    from disel.experiments.study.stages import prepare_data

    tokenizer = load_tokenizer(tiny_llama_dir)
    settings = ["problems.train=12", "problems.test=6", "evaluation.retention_tokens=60"]
    first = prepare_data(load_study_config(RECIPE, settings), tmp_path / "out", tokenizer)
    assert prepare_data(load_study_config(RECIPE, settings), tmp_path / "out", tokenizer) == first  # read back
    with pytest.raises(ConfigError, match="another study's output folder"):
        prepare_data(load_study_config(RECIPE, [*settings, "problems.test=7"]), tmp_path / "out", tokenizer)
