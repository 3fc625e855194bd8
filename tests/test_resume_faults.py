"""Resuming a run that went wrong (issue 10, items 12 and 13).

* A truncated weight, optimizer, scheduler, RNG, training-arguments or state file in the newest checkpoint is
  detected before the Trainer reads it: a warning names the file and the checkpoint, and the run resumes from
  the previous checkpoint (exactly: same losses as the uninterrupted run); with no intact checkpoint left, the
  error names the file and ``disel-train`` exits with one line.
* A run resumed with a changed recipe is refused with every changed key listed ``old -> new``, unless the
  change is allowed explicitly.

Tiny random Llama on the CPU; one two-step template run is copied for each case."""

from __future__ import annotations

import json
import random
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import yaml

from disel.experiments.cli.train import main as cli_main
from disel.experiments.config import ConfigError, config_from_dict
from disel.experiments.train.checkpoints import (
    CHECKPOINT_MANIFEST,
    RUN_CONFIG_FILE,
    DamagedCheckpointError,
    DamagedCheckpointWarning,
    changed_keys,
    checkpoint_damage,
)
from disel.experiments.train.run import RESULT_FILE, train

CHECKPOINT_FILES = [
    "adapter_model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "training_args.bin",
]


@pytest.fixture(scope="module")
def math_file(tmp_path_factory) -> Path:
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("data") / "math.jsonl"
    rows = []
    for _ in range(24):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append(json.dumps({"instruction": f"What is {a} + {b}?", "output": f"{a} + {b} = {a + b}"}))
    path.write_text("\n".join(rows) + "\n")
    return path


def _raw(tiny_llama_dir: Path, math_file: Path, output_dir: Path) -> dict:
    return {
        "model": {"path": str(tiny_llama_dir)},
        "data": {"train_files": [str(math_file)], "max_length": 48},
        "method": {"name": "disel", "r": 4, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.1},
        "training": {
            "output_dir": str(output_dir),
            "max_steps": 2,
            "save_steps": 1,
            "per_device_train_batch_size": 4,
            "learning_rate": 1.0e-2,
            "logging_steps": 1,
            "use_cpu": True,
            "disable_tqdm": True,
        },
    }


def _config(tiny_llama_dir, math_file, output_dir, **changes):
    """The template's recipe for ``output_dir`` with ``resume_from_checkpoint=auto``; ``changes`` as
    ``section={key: value}`` update it key by key."""
    raw = _raw(tiny_llama_dir, math_file, output_dir)
    raw["training"]["resume_from_checkpoint"] = "auto"
    for section, values in changes.items():
        raw[section].update(values)
    return config_from_dict(raw, source="test")


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_llama_dir, math_file):
    """A finished two-step run with checkpoint-1 and checkpoint-2, and its result."""
    output = tmp_path_factory.mktemp("template") / "run"
    result = train(config_from_dict(_raw(tiny_llama_dir, math_file, output)))
    return output, result


def _crashed_copy(template, tmp_path: Path) -> Path:
    """A copy of the template as a run that died after its last checkpoint (no result, no final adapter)."""
    source, _ = template
    copy = tmp_path / "run"
    shutil.copytree(source, copy)
    for name in (RESULT_FILE, "adapter_model.safetensors", "adapter_config.json"):
        (copy / name).unlink()
    return copy


def _middle_of_largest_member(path: Path) -> int:
    """The file offset of the middle byte of the largest member of a zip archive (past its local header)."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    header = path.read_bytes()[member.header_offset : member.header_offset + 30]
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return member.header_offset + 30 + name_length + extra_length + member.compress_size // 2


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------------------------------
# Damaged checkpoints
# --------------------------------------------------------------------------------------------------


def test_intact_checkpoints_pass_and_damage_is_found_in_each_kind_of_file(template, tmp_path):
    """The check finds nothing in the template's checkpoints, and each kind of damage in a copy."""
    output, _ = template
    assert checkpoint_damage(output / "checkpoint-1") is None and checkpoint_damage(output / "checkpoint-2") is None
    folder = tmp_path / "checkpoint-2"
    for name in CHECKPOINT_FILES:
        shutil.copytree(output / "checkpoint-2", folder, dirs_exist_ok=True)
        _truncate(folder / name)
        damaged, reason = checkpoint_damage(folder)
        assert damaged.name == name and reason, (name, reason)
    # A flipped byte inside an archive member (not a truncation) fails the member's checksum.
    shutil.copytree(output / "checkpoint-2", folder, dirs_exist_ok=True)
    data = bytearray((folder / "optimizer.pt").read_bytes())
    data[_middle_of_largest_member(folder / "optimizer.pt")] ^= 0xFF
    (folder / "optimizer.pt").write_bytes(bytes(data))
    assert checkpoint_damage(folder)[0].name == "optimizer.pt"


def test_large_archives_are_checked_for_truncation_without_reading_them(template, tmp_path, monkeypatch):
    """Above the checksum limit only the archive's structure is read: a truncation is still found."""
    from disel.experiments.train import checkpoints

    monkeypatch.setattr(checkpoints, "_CHECKSUM_LIMIT", 0)
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(template[0] / "checkpoint-2", folder)
    assert checkpoint_damage(folder) is None
    data = (folder / "optimizer.pt").read_bytes()
    (folder / "optimizer.pt").write_bytes(data[:-100])  # the end record and part of the directory are gone
    assert checkpoint_damage(folder)[0].name == "optimizer.pt"


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(template, tmp_path, tiny_llama_dir, math_file, name):
    """The warning names the file and the checkpoint; the run resumes from checkpoint-1 and ends exactly as the
    uninterrupted run did."""
    _, straight = template
    run = _crashed_copy(template, tmp_path)
    _truncate(run / "checkpoint-2" / name)
    with pytest.warns(DamagedCheckpointWarning) as caught:
        result = train(_config(tiny_llama_dir, math_file, run))
    messages = [str(w.message) for w in caught if issubclass(w.category, DamagedCheckpointWarning)]
    assert len(messages) == 1
    assert f"{run / 'checkpoint-2'}" in messages[0] and name in messages[0] and "checkpoint-1" in messages[0]
    assert result.resumed_from == str(run / "checkpoint-1") and result.global_step == 2
    assert result.loss_history == straight.loss_history
    assert checkpoint_damage(run / "checkpoint-2") is None  # training past step 2 rewrote it whole


def test_only_checkpoint_damaged_stops_with_the_file_named(template, tmp_path, tiny_llama_dir, math_file, capsys):
    """No intact checkpoint left: the API raises naming the file; the command line exits 2 with one line."""
    run = _crashed_copy(template, tmp_path)
    shutil.rmtree(run / "checkpoint-1")
    _truncate(run / "checkpoint-2" / "optimizer.pt")
    config = _config(tiny_llama_dir, math_file, run)
    with pytest.raises(DamagedCheckpointError, match=r"checkpoint-2.*optimizer\.pt.*no intact checkpoint"):
        train(config)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config.to_dict()))
    assert cli_main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("disel-train: error: checkpoint") and "optimizer.pt" in err[0]
    assert not (run / RESULT_FILE).exists()


def test_explicit_damaged_checkpoint_is_refused_not_replaced(template, tmp_path, tiny_llama_dir, math_file):
    """A checkpoint named explicitly is never swapped for another: its damage is an error naming the file."""
    run = _crashed_copy(template, tmp_path)
    _truncate(run / "checkpoint-2" / "scheduler.pt")
    config = _config(tiny_llama_dir, math_file, run, training={"resume_from_checkpoint": str(run / "checkpoint-2")})
    with pytest.raises(DamagedCheckpointError, match=r"checkpoint-2.*scheduler\.pt"):
        train(config)


# --------------------------------------------------------------------------------------------------
# Changed recipe
# --------------------------------------------------------------------------------------------------


CHANGES = [
    ("learning rate", {"training": {"learning_rate": 2.0e-2}}, ["training.learning_rate: 0.01 -> 0.02"]),
    (
        "rank and targets",
        {"method": {"r": 8, "target_modules": ["q_proj"]}},
        ["method.r: 4 -> 8", "method.target_modules: ['q_proj', 'v_proj'] -> ['q_proj']"],
    ),
    ("method", {"method": {"name": "lora"}}, ["method.name: 'disel' -> 'lora'"]),
    ("logging without permission", {"training": {"logging_steps": 5}}, ["training.logging_steps: 1.0 -> 5.0"]),
]


@pytest.mark.parametrize("changes, listed", [case[1:] for case in CHANGES], ids=[case[0] for case in CHANGES])
def test_resume_with_changed_config_is_refused_listing_keys(
    template, tmp_path, tiny_llama_dir, math_file, changes, listed
):
    run = _crashed_copy(template, tmp_path)
    with pytest.raises(ConfigError) as error:
        train(_config(tiny_llama_dir, math_file, run, **changes))
    message = str(error.value)
    for entry in listed:
        assert entry in message, (entry, message)
    assert RUN_CONFIG_FILE in message and "--allow-config-change" in message
    assert "training.resume_from_checkpoint" not in message and "training.output_dir" not in message
    assert not (run / RESULT_FILE).exists()


def test_allowed_changes_resume_and_are_recorded(template, tmp_path, tiny_llama_dir, math_file):
    """An allowed key (wildcards too) resumes; a default spelled out and the output folder spelled differently
    are no change; the new value is what run_config.yaml then holds."""
    _, straight = template
    run = _crashed_copy(template, tmp_path)
    shutil.rmtree(run / "checkpoint-2")  # resume from checkpoint-1: one step left to train
    spelled = Path(f"{tmp_path}/./run")
    config = _config(
        tiny_llama_dir, math_file, spelled, training={"logging_steps": 1, "save_total_limit": 5, "seed": 42}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedCheckpointWarning)
        with pytest.warns(UserWarning, match=r"allowed config changes: training.save_total_limit: None -> 5$"):
            result = train(config, allow_config_change=["training.save_*"])
    assert result.resumed_from.endswith("checkpoint-1") and result.loss_history == straight.loss_history
    assert yaml.safe_load((run / RUN_CONFIG_FILE).read_text())["training"]["save_total_limit"] == 5


def test_cli_refuses_then_accepts_with_the_flag(template, tmp_path, tiny_llama_dir, math_file, capsys):
    run = _crashed_copy(template, tmp_path)
    shutil.rmtree(run / "checkpoint-2")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_config(tiny_llama_dir, math_file, run, training={"logging_steps": 2}).to_dict()))
    assert cli_main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.logging_steps: 1.0 -> 2.0" in err[0]
    assert cli_main(["--config", str(recipe), "--allow-config-change", "training.logging_steps"]) == 0
    assert json.loads((run / RESULT_FILE).read_text())["global_step"] == 2


def test_changed_keys_lists_nested_and_one_sided_keys():
    old = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    new = {"a": {"b": 1, "c": [1, 3]}, "e": 4}
    assert changed_keys(old, new) == {"a.c": ([1, 2], [1, 3]), "d": (3, "<unset>"), "e": ("<unset>", 4)}


# --------------------------------------------------------------------------------------------------
# Missing files and a missing recipe (issue 19 item 5)
# --------------------------------------------------------------------------------------------------


def test_each_checkpoint_keeps_its_file_list_and_recipe(template):
    """Every checkpoint folder holds the list of the Trainer's files and the run's recipe."""
    output, _ = template
    for folder in (output / "checkpoint-1", output / "checkpoint-2"):
        listed = json.loads((folder / CHECKPOINT_MANIFEST).read_text())["files"]
        assert set(CHECKPOINT_FILES) <= set(listed) and RUN_CONFIG_FILE not in listed
        assert yaml.safe_load((folder / RUN_CONFIG_FILE).read_text()) == yaml.safe_load(
            (output / RUN_CONFIG_FILE).read_text()
        )


@pytest.mark.parametrize("manifest", [True, False], ids=["listed", "no-list"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_whole_missing_file_is_found(template, tmp_path, name, manifest):
    """Regression (issue 19 item 5): a checkpoint with a whole file deleted (not truncated) passed the check.
    Found from the checkpoint's file list, and, for a checkpoint without one (written before the list was),
    from the files every Trainer checkpoint holds."""
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(template[0] / "checkpoint-2", folder)
    if not manifest:
        (folder / CHECKPOINT_MANIFEST).unlink()
    assert checkpoint_damage(folder) is None
    (folder / name).unlink()
    damaged, reason = checkpoint_damage(folder)
    assert damaged.name == name and reason.startswith("missing")


def test_save_only_model_checkpoints_need_no_optimizer(template, tmp_path):
    """Without a file list, a save_only_model checkpoint (no optimizer, scheduler, RNG state) is complete only
    when the run saves the model only."""
    folder = tmp_path / "checkpoint-2"
    shutil.copytree(template[0] / "checkpoint-2", folder)
    for name in (CHECKPOINT_MANIFEST, "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).unlink()
    assert checkpoint_damage(folder, save_only_model=True) is None
    assert checkpoint_damage(folder)[0].name == "optimizer.pt"


def test_missing_file_in_the_newest_checkpoint_falls_back(template, tmp_path, tiny_llama_dir, math_file):
    """A deleted optimizer state: the warning names it; the run resumes from checkpoint-1 and ends exactly as
    the uninterrupted run did."""
    _, straight = template
    run = _crashed_copy(template, tmp_path)
    (run / "checkpoint-2" / "optimizer.pt").unlink()
    with pytest.warns(DamagedCheckpointWarning, match=r"checkpoint-2.*optimizer\.pt: missing"):
        result = train(_config(tiny_llama_dir, math_file, run))
    assert result.resumed_from == str(run / "checkpoint-1") and result.loss_history == straight.loss_history


def test_without_run_config_the_checkpoint_copy_is_compared(template, tmp_path, tiny_llama_dir, math_file):
    """Regression (issue 19 item 5): a run folder without run_config.yaml skipped the changed-config check.
    The checkpoint's own copy is compared instead: a change is refused, the same recipe resumes."""
    _, straight = template
    run = _crashed_copy(template, tmp_path)
    shutil.rmtree(run / "checkpoint-2")  # resume from checkpoint-1: one step left to train
    (run / RUN_CONFIG_FILE).unlink()
    with pytest.raises(ConfigError, match=r"checkpoint-1.*training.learning_rate: 0.01 -> 0.02"):
        train(_config(tiny_llama_dir, math_file, run, training={"learning_rate": 2.0e-2}))
    result = train(_config(tiny_llama_dir, math_file, run))
    assert result.resumed_from == str(run / "checkpoint-1") and result.loss_history == straight.loss_history


def test_with_no_recipe_anywhere_the_resume_is_refused_unless_told(
    template, tmp_path, tiny_llama_dir, math_file, capsys
):
    """No run_config.yaml in the run folder nor the checkpoint: refused (the command line: one line, status 2)
    unless every change is accepted explicitly with ``--allow-config-change '*'``."""
    _, straight = template
    run = _crashed_copy(template, tmp_path)
    shutil.rmtree(run / "checkpoint-2")
    for folder in (run, run / "checkpoint-1"):
        (folder / RUN_CONFIG_FILE).unlink()
    config = _config(tiny_llama_dir, math_file, run)
    with pytest.raises(ConfigError, match=r"no run_config.yaml in .* nor in .*checkpoint-1.*allow-config-change '\*'"):
        train(config)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config.to_dict()))
    assert cli_main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("disel-train: error: ") and "run_config.yaml" in err[0]
    with pytest.warns(UserWarning, match="without a saved recipe"):
        result = train(config, allow_config_change=["*"])
    assert result.resumed_from == str(run / "checkpoint-1") and result.loss_history == straight.loss_history
