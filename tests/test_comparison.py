"""Smoke test of the one-command SmolLM2 comparison (``disel.experiments.comparison``) on a tiny model."""

import json

import pytest

from disel.experiments.cli.compare import main
from disel.experiments.comparison import ComparisonConfig, run_comparison
from disel.experiments.config import ConfigError
from disel.experiments.schemas import read_comparison, read_tradeoff_table
from tiny_models import make_tiny_causal_lm

pytestmark = pytest.mark.slow


def _tiny_config(tmp_path, model_dir) -> ComparisonConfig:
    return ComparisonConfig(
        output_dir=str(tmp_path / "out"),
        model_path=str(model_dir),
        ranks=[2],
        train_problems=20,
        test_problems=3,
        retention_texts=2,
        gate_sequences=2,
        max_new_tokens=4,
        perplexity_max_length=64,
        overrides=[
            "training.max_steps=2",
            "training.save_steps=1",
            "training.per_device_train_batch_size=2",
            "data.max_length=512",
        ],
    )


def test_comparison_runs_end_to_end_and_resumes(tmp_path):
    """One call trains LoRA and DISeL, evaluates every checkpoint, records DISeL gates, and writes
    comparison.json plus tradeoff tables the figure scripts accept; a second call retrains nothing."""
    config = _tiny_config(tmp_path, make_tiny_causal_lm(tmp_path / "model"))
    summary = run_comparison(config, progress=lambda message: None)
    out = tmp_path / "out"
    assert [(run["method"], run["rank"]) for run in summary["runs"]] == [("lora", 2), ("disel", 2)]
    for run in summary["runs"]:
        assert [c["step"] for c in run["checkpoints"]] == [0, 1, 2]  # base row + every checkpoint
        assert 0.0 <= run["exact_match"] <= 1.0 and run["ppl_english"] > 1.0
    assert (
        summary["runs"][1]["gates_file"]
        and json.loads((out / "disel-r2" / "gates.json").read_text())["schema"] == "disel.gates/1"
    )
    written = read_comparison(out / "comparison.json")
    assert written.schema == "disel.comparison/2" and written.base == summary["base"]
    assert written.config["overrides"] == config.overrides  # the sweep says how it was run
    for corpus in ("english", "code"):
        table = read_tradeoff_table(out / f"tradeoff_{corpus}.json")
        assert table.base_retention == summary["base"][f"ppl_{corpus}"] and len(table.rows) == 2

    mtime = (out / "lora-r2" / "train_result.json").stat().st_mtime
    again = run_comparison(config, progress=lambda message: None)
    assert (out / "lora-r2" / "train_result.json").stat().st_mtime == mtime
    assert again["runs"] == summary["runs"]


def test_comparison_rejects_bad_settings(tmp_path):
    """Unknown methods, non-positive sizes and unknown keys are refused with the field's name; a bad recipe
    override is refused (naming the key) before anything is trained."""
    with pytest.raises(ValueError, match="methods"):
        ComparisonConfig(methods=["lora", "qlora"])
    with pytest.raises(ValueError, match="test_problems"):
        ComparisonConfig(test_problems=0)
    with pytest.raises(ValueError, match="max_steps"):
        ComparisonConfig(max_steps=3)  # a training setting belongs to the recipe, not here
    config = _tiny_config(tmp_path, tmp_path / "no-model")
    config.overrides.append("training.max_step=3")
    with pytest.raises(ConfigError, match=r"unknown key 'training.max_step'.*did you mean max_steps"):
        run_comparison(config, progress=lambda message: None)
    assert not (tmp_path / "out" / "lora-r2").exists()
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"max_step": 3}))
    assert main(["--config", str(config_file)]) == 2  # one line naming the key, exit status 2


def test_committed_results_still_read(tmp_path):
    """The committed SmolLM2 comparison (schema version 1) reads, and a file of an unknown version is refused
    naming the expected schema."""
    from pathlib import Path

    from disel.experiments.schemas import MalformedResultFileError

    committed = read_comparison(Path(__file__).resolve().parents[1] / "paper_figs" / "smollm2" / "comparison.json")
    assert committed.schema == "disel.comparison/1" and [r["method"] for r in committed.runs][:2] == ["lora", "lora"]
    future = tmp_path / "comparison.json"
    future.write_text(json.dumps({"schema": "disel.comparison/9", "base": {}, "runs": []}))
    with pytest.raises(
        MalformedResultFileError, match=r"expected schema 'disel.comparison/2'.*found schema 'disel.comparison/9'"
    ):
        read_comparison(future)
