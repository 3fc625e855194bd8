"""Every command line turns a bad argument into one line ``<prog>: error: ...`` naming it, exit status 2, no
traceback, before any model is loaded (issue 10, item 11). Table tests call each ``main([...])``; two run
the command lines in a fresh process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from disel.experiments.cli import eval as eval_cli
from disel.experiments.cli import preflight
from disel.experiments.cli import study as study_cli
from disel.experiments.cli import train as train_cli

REPO = Path(__file__).resolve().parents[1]
UNWRITABLE = "/proc/disel-cannot-write-here"  # /proc takes no new files, even from root


@pytest.fixture(scope="module")
def no_tokenizer_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny model's config and weights without its tokenizer files."""
    folder = tmp_path_factory.mktemp("no_tokenizer")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_llama_dir, no_tokenizer_dir) -> dict[str, str]:
    """Named paths the tables refer to as ``{name}``."""
    root = tmp_path_factory.mktemp("places")
    (root / "a_file").write_text("not a folder\n")
    (root / "a_dir").mkdir()
    (root / "bad.yaml").write_text("model: {path: [unclosed\n  training: :\n")
    (root / "data.jsonl").write_text(json.dumps({"instruction": "What is 1 + 1?", "output": "2"}) + "\n")
    checkpoint = root / "run" / "checkpoint-1"  # an adapter whose base model folder has since been removed
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(root / "gone")}))
    return {
        "llama": str(tiny_llama_dir),
        "no_tokenizer": str(no_tokenizer_dir),
        "file": str(root / "a_file"),
        "dir": str(root / "a_dir"),
        "bad_yaml": str(root / "bad.yaml"),
        "data": str(root / "data.jsonl"),
        "root": str(root),
        "run": str(root / "run"),
        "missing": str(root / "no" / "such" / "model"),
        "unwritable": UNWRITABLE,
    }


@pytest.fixture()
def no_heavy_work(monkeypatch):
    """Loading a model or starting training fails the test: the errors must come before."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded or training started before the arguments were checked")

    from disel.experiments import models
    from disel.experiments.study import compression
    from disel.experiments.study import run as study_run
    from disel.experiments.train import run

    monkeypatch.setattr(run, "train", forbidden)
    monkeypatch.setattr(models, "load_model", forbidden)
    monkeypatch.setattr(study_run, "run_study", forbidden)
    monkeypatch.setattr(compression, "run_compression", forbidden)


def _fill(argv: list[str], places: dict[str, str]) -> list[str]:
    return [arg.format(**places) for arg in argv]


def _assert_one_line_error(capsys, prog: str, status: int, names: tuple[str, ...]) -> str:
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    for name in names:
        assert name in lines[0], (name, err)
    return lines[0]


# --------------------------------------------------------------------------------------------------
# disel-train
# --------------------------------------------------------------------------------------------------


def _recipe(places: dict[str, str]) -> str:
    """A valid tiny recipe; each case breaks one thing with an override."""
    path = Path(places["root"]) / "recipe.yaml"
    if not path.exists():
        path.write_text(
            f"model: {{path: '{places['llama']}'}}\n"
            f"data: {{train_files: ['{places['data']}'], max_length: 32}}\n"
            "method: {name: disel, r: 2, target_modules: [q_proj, v_proj]}\n"
            f"training: {{output_dir: '{places['root']}/out', max_steps: 1, use_cpu: true}}\n"
        )
    return str(path)


TRAIN_CASES = [
    (
        "target module not found",
        ["method.target_modules=[no_such_proj]"],
        ("method.target_modules", "no_such_proj", "not found"),
    ),
    ("target regex matches nothing", ["method.target_modules=.*nothing$"], ("method.target_modules", "not found")),
    ("target module not supported", ["method.target_modules=[embed_tokens]"], ("method.target_modules", "Embedding")),
    ("output dir is a file", ["training.output_dir={file}"], ("training.output_dir", "is a file")),
    ("output dir under a file", ["training.output_dir={file}/run"], ("training.output_dir", "cannot be created")),
    ("output dir not writable", ["training.output_dir={unwritable}/run"], ("training.output_dir", "not writable")),
    ("missing model path", ["model.path={missing}"], ("model.path", "does not exist")),
    ("model without tokenizer", ["model.path={no_tokenizer}"], ("model.path", "no tokenizer files")),
    ("batch size 0", ["training.per_device_train_batch_size=0"], ("training.per_device_train_batch_size", "positive")),
    ("eval batch size 0", ["training.per_device_eval_batch_size=0"], ("training.per_device_eval_batch_size",)),
]


@pytest.mark.parametrize("overrides, names", [case[1:] for case in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_errors_are_one_line_before_training(places, capsys, no_heavy_work, overrides, names):
    status = train_cli.main(["--config", _recipe(places), "--override", *_fill(overrides, places)])
    _assert_one_line_error(capsys, "disel-train", status, names)


def test_train_yaml_error_names_the_config_file(places, capsys, no_heavy_work):
    status = train_cli.main(["--config", places["bad_yaml"]])
    line = _assert_one_line_error(capsys, "disel-train", status, ("config file", places["bad_yaml"]))
    assert "line" in line  # YAML's own position of the error survives the joining


def test_valid_recipe_passes_the_checks(places):
    """The checks refuse what they should and nothing else: the unbroken recipe passes them."""
    from disel.experiments.config import load_config

    config = load_config(_recipe(places))
    preflight.check_training(config)
    assert not Path(config.training.output_dir).exists()  # checking creates nothing


# --------------------------------------------------------------------------------------------------
# disel-eval
# --------------------------------------------------------------------------------------------------

_PERPLEXITY = ["perplexity", "--base", "{llama}", "--offline", "english", "--n", "2"]
EVAL_CASES = [
    ("out is a directory", [*_PERPLEXITY, "--out", "{dir}"], ("--out", "is a directory")),
    ("out under a file", [*_PERPLEXITY, "--out", "{file}/result.json"], ("--out", "cannot be created")),
    ("out not writable", [*_PERPLEXITY, "--out", "{unwritable}/result.json"], ("--out", "not writable")),
    (
        "missing base",
        ["perplexity", "--base", "{missing}", "--offline", "english", "--out", "{root}/o.json"],
        ("--base", "does not exist"),
    ),
    (
        "base without tokenizer",
        ["perplexity", "--base", "{no_tokenizer}", "--offline", "english", "--out", "{root}/o.json"],
        ("--base", "no tokenizer files"),
    ),
    (
        "adapter not an adapter",
        [*_PERPLEXITY, "--adapter", "{dir}", "--out", "{root}/o.json"],
        ("--adapter", "adapter_config.json"),
    ),
    ("batch size 0", [*_PERPLEXITY, "--batch-size", "0", "--out", "{root}/o.json"], ("--batch-size", "positive")),
    (
        "gsm8k data missing",
        ["gsm8k", "--base", "{llama}", "--data", "{missing}.jsonl", "--out", "{root}/o.json"],
        ("--data", "does not exist"),
    ),
    (
        "gates batch size 0",
        ["gates", "--base", "{llama}", "--batch-size", "0", "--out", "{root}/g.json"],
        ("--batch-size",),
    ),
    (  # the --domain file is read as disel-eval components reads it (it was a traceback after loading)
        "gates domain file missing",
        ["gates", "--base", "{llama}", "--domain", "math={missing}.jsonl", "--out", "{root}/g.json"],
        ("--domain", "is not a file"),
    ),
    (
        "gates domain malformed",
        ["gates", "--base", "{llama}", "--domain", "math", "--out", "{root}/g.json"],
        ("--domain",),
    ),
    (
        "retention output missing",
        ["retention", "--output-dir", "{missing}", "--evaluator", "perplexity"],
        ("--output-dir", "not a directory"),
    ),
    (
        "retention without checkpoints",
        ["retention", "--output-dir", "{dir}", "--evaluator", "perplexity"],
        ("--output-dir", "no checkpoint"),
    ),
    (
        "retention table is a directory",
        ["retention", "--output-dir", "{run}", "--evaluator", "perplexity", "--table", "{dir}"],
        ("--table", "is a directory"),
    ),
    (
        "retention base named by the adapter is gone",
        ["retention", "--output-dir", "{run}", "--evaluator", "perplexity"],
        ("--base", "base_model_name_or_path", "does not exist"),
    ),
    ("config yaml error", ["--config", "{bad_yaml}", *_PERPLEXITY, "--out", "{root}/o.json"], ("--config", "bad.yaml")),
    ("config not a mapping", ["--config", "{data}", *_PERPLEXITY, "--out", "{root}/o.json"], ("--config",)),
]


@pytest.mark.parametrize("argv, names", [case[1:] for case in EVAL_CASES], ids=[c[0] for c in EVAL_CASES])
def test_eval_errors_are_one_line_before_loading(places, capsys, no_heavy_work, argv, names):
    status = eval_cli.main(_fill(argv, places))
    _assert_one_line_error(capsys, "disel-eval", status, names)


# --------------------------------------------------------------------------------------------------
# disel-study
# --------------------------------------------------------------------------------------------------

COMPARISON = str(REPO / "recipes" / "comparison" / "smollm2_methods_ranks.yaml")
COMPRESSION = str(REPO / "recipes" / "evidence" / "smollm2_compression.yaml")
STUDY_CASES = [
    ("output dir is a file", ["--output-dir", "{file}"], ("--output-dir", "is a file")),
    ("output dir not writable", ["--output-dir", "{unwritable}/c"], ("--output-dir", "not writable")),
    ("missing model path", ["--override", "model_path={missing}"], ("model_path", "does not exist")),
    ("model without tokenizer", ["--override", "model_path={no_tokenizer}"], ("model_path", "tokenizer")),
    ("learning rate not a number", ["--override", "training.learning_rate=fast"], ("training.learning_rate",)),
    ("unknown training key", ["--override", "training.max_step=3"], ("training.max_step", "max_steps")),
    ("a key the runner sets", ["--override", "training.seed=3"], ("training.seed", "cannot be overridden")),
    ("unknown study key", ["--override", "problems.tests=3"], ("problems.tests",)),
    ("threads 0", ["--threads", "0"], ("--threads",)),
    ("workers 0", ["--workers", "0"], ("--workers",)),
    ("recipe missing", ["--recipe", "{missing}.yaml"], ("--recipe",)),
    ("recipe yaml error", ["--recipe", "{bad_yaml}"], ("bad.yaml",)),
    ("compression: no adapter", ["--recipe", COMPRESSION, "--override", "adapter={dir}"], ("adapter_config.json",)),
    ("compression: bad fraction", ["--recipe", COMPRESSION, "--override", "fractions=[1.5]"], ("fractions",)),
]


@pytest.mark.parametrize("argv, names", [case[1:] for case in STUDY_CASES], ids=[c[0] for c in STUDY_CASES])
def test_study_errors_are_one_line_before_training(places, capsys, no_heavy_work, argv, names):
    status = study_cli.main(_fill(["--recipe", COMPARISON, "--output-dir", "{root}/s", *argv], places))
    _assert_one_line_error(capsys, "disel-study", status, names)


# --------------------------------------------------------------------------------------------------
# The programs, in a fresh process
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, prog, argv, name",
    [
        ("disel.experiments.cli.train", "disel-train", ["--config", "{bad_yaml}"], "config file"),
        ("disel.experiments.cli.eval", "disel-eval", [*_PERPLEXITY, "--out", "{dir}"], "--out"),
    ],
)
def test_programs_exit_2_with_one_line(places, module, prog, argv, name):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, "-m", module, *_fill(argv, places)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 2, completed.stderr
    # Libraries may log their own notices on import (bitsandbytes does without its CPU kernels); ours is one line.
    ours = [line for line in completed.stderr.splitlines() if line.startswith(f"{prog}:")]
    assert "Traceback" not in completed.stderr
    assert len(ours) == 1 and ours[0].startswith(f"{prog}: error: ") and name in ours[0], completed.stderr
    assert completed.stderr.rstrip().endswith(ours[0])
