"""Evaluation asks in the prompt template the model was trained with (issue 16: the literal "alpaca" scored a
run trained with another template in the wrong words)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from disel.experiments.config import ConfigError
from disel.experiments.data.templates import DEFAULT_TEMPLATE
from disel.experiments.eval.evaluators import training_template
from disel.experiments.train.checkpoints import RUN_CONFIG_FILE

REPO = Path(__file__).resolve().parents[1]
OTHER = "magicoder"
assert OTHER != DEFAULT_TEMPLATE  # else nothing below could fail


def _run(tmp_path: Path, template: str) -> Path:
    """A training output folder holding the run_config.yaml a run writes, and one checkpoint."""
    run = tmp_path / "run"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / RUN_CONFIG_FILE).write_text(yaml.safe_dump({"data": {"template": template}, "method": {"name": "lora"}}))
    return run


def test_training_template_is_read_from_the_run(tmp_path):
    run = _run(tmp_path, OTHER)
    assert training_template(run) == OTHER
    assert training_template(run / "checkpoint-4") == OTHER  # a checkpoint: the run's file is one level up
    assert training_template(tmp_path) is None and training_template(None) is None
    (run / RUN_CONFIG_FILE).write_text(yaml.safe_dump({"data": {"template": "chatml"}}))
    with pytest.raises(ConfigError, match="data.template"):
        training_template(run)


@pytest.mark.parametrize("flag", ["--adapter", "--output-dir"])
def test_cli_scores_gsm8k_in_the_runs_template(tmp_path, flag):
    """``disel-eval gsm8k --adapter CKPT`` / ``retention --output-dir RUN`` without ``--template`` use the run's."""
    from disel.experiments.cli import eval as cli

    run = _run(tmp_path, OTHER)
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "2"}\n')
    target = str(run / "checkpoint-4") if flag == "--adapter" else str(run)
    out = ["--out", str(tmp_path / "o.json")]
    command = ["gsm8k", "--base", str(tmp_path), *out] if flag == "--adapter" else ["retention", "--evaluator", "gsm8k"]
    args = cli.build_parser().parse_args([*command, flag, target, "--data", str(data)])
    assert cli._evaluator(args, "gsm8k").template == OTHER
    args.template = "none"  # an explicit --template still wins
    assert cli._evaluator(args, "gsm8k").template == "none"


def test_study_asks_in_the_training_recipes_template(monkeypatch):
    """The study grades the test problems in the training recipe's ``data.template``."""
    from disel.experiments.eval import generation
    from disel.experiments.study import stages
    from disel.experiments.study.config import load_study_config
    from disel.experiments.study.records import DataManifest

    recipe = REPO / "recipes/evidence/smollm2_tradeoff.yaml"
    config = load_study_config(recipe, [f"data.template={OTHER}"])
    asked = {}

    class Stop(Exception):
        pass

    def capture(*args, template=DEFAULT_TEMPLATE, **kwargs):
        asked["template"] = template
        raise Stop

    monkeypatch.setattr(generation, "evaluate_gsm8k", capture)
    with pytest.raises(Stop):
        manifest = DataManifest(train_file="", test_file="", test_rows=[], retention={})
        stages.evaluate_model((None, None), config, manifest, is_base=True, is_disel=False)
    assert asked["template"] == OTHER
