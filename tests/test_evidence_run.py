"""``disel-evidence`` end to end on a tiny Llama model: every stage, the results file, the figures, a resumed
run that recomputes nothing already done, and the command-line checks (device and bf16 override parsing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import make_tiny_causal_lm

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "evidence" / "smollm2_tradeoff.yaml"
TINY = [
    "training.max_steps=2",
    "training.save_steps=1",
    "training.per_device_train_batch_size=2",
    "training.logging_steps=1",
    "training.warmup_steps=0",
    "training.learning_rate=0.01",
    "problems.train=12",
    "problems.test=6",
    "evaluation.retention_tokens=60",
    "evaluation.retention_max_length=32",
    "evaluation.max_new_tokens=4",
    "evaluation.generation_batch_size=6",
    "evaluation.gate_sequences=2",
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
def test_evidence_runs_end_to_end_then_resumes_without_recomputing(tmp_path, monkeypatch):
    from disel.experiments.study import stages
    from disel.experiments.study.cli import main
    from disel.experiments.study.results import load_results

    model = make_tiny_causal_lm(tmp_path / "model")
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
        assert (Path(run.adapter) / "adapter_model.safetensors").is_file()
    assert {(c.arm, c.kind, c.domain) for c in results.comparisons} >= {("disel_paper", "kl", "english")}
    assert results.throughput["arms"]["lora"]["tokens_per_s"] > 0
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
    from disel.experiments.study.config import load_evidence_config

    config = load_evidence_config(
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
        (["--threads", "0"], "--threads must be a positive integer"),
        (["--output-dir", __file__], "--output-dir"),  # a file, not a folder: refused before any work
        (["--override", "problems.tests=3"], "problems.tests"),
        (["--override", "reference_arm=dora"], "reference_arm"),
        (["--override", "training.max_step=3", "model_path=/x"], "max_step"),
    ],
)
def test_bad_arguments_give_one_line_errors(argv, message, capsys, tmp_path):
    from disel.experiments.study.cli import main

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
    from disel.experiments.study.config import load_evidence_config

    full = load_evidence_config(RECIPE)
    subset = load_evidence_config(RECIPE, ["arms.lora.seeds=[0]"], arms=["lora", "disel_paper"])
    assert list(subset.arms) == ["lora", "disel_paper"]
    assert subset.arms["disel_paper"] == full.arms["disel_paper"]
    assert subset.arms["lora"].seeds == [0] and full.arms["lora"].seeds == [0, 1]
