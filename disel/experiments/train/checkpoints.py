"""Which checkpoint a resumed run can trust, and whether the run it resumes had the same recipe.

A checkpoint the Trainer loads while a file is truncated fails deep in ``torch.load`` or safetensors with
an error that names no file; :func:`resolve_resume` runs :func:`checkpoint_damage` first, so the error (or
the warning when it falls back to an older checkpoint) says which file of which checkpoint is damaged or
missing. :class:`CheckpointRecordCallback` writes, into every checkpoint folder, the list of its files
(:data:`CHECKPOINT_MANIFEST`) and the run's recipe (:data:`RUN_CONFIG_FILE`), so a checkpoint keeps what those
checks need when it is copied away from its run folder. :func:`check_config_unchanged` refuses a resume whose
recipe changed, listing every key ``old -> new``, and one whose recipe is nowhere to compare with unless told.
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from disel.io import read_json, write_json_atomic, write_yaml_atomic

from ..config import ConfigError, ExperimentConfig, config_from_dict, read_mapping
from ..schemas import TRAIN_RESULT_FILE

RUN_CONFIG_FILE = "run_config.yaml"
"""The resolved config of a run, written into its output directory when it starts."""

ALWAYS_ALLOWED_CHANGES: tuple[str, ...] = ("training.resume_from_checkpoint", "training.output_dir")
"""Keys that may differ on every resume: the switch that asks for the resume, and the folder's spelling (the
saved config is read from that folder, so it is the same run however the path is written)."""

CHECKPOINT_MANIFEST = "checkpoint_files.json"
"""Written into each checkpoint folder once the Trainer has saved it: ``{"files": [relative paths]}``."""

ACCEPT_ANY_CHANGE = "*"
"""The ``allow_config_change`` pattern that accepts every change, and a resume with no saved recipe at all."""

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
_CHECKSUM_LIMIT = 1 << 30
"""``torch.save`` files up to this size (adapter optimizers, schedulers, RNG states) are read in full to check
their checksums; a larger one (a full fine-tune's optimizer) only has its structure checked, so verifying
does not double the time to resume."""


class DamagedCheckpointError(RuntimeError):
    """A checkpoint to resume from has a truncated or unreadable file (the message names it)."""


class DamagedCheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped; the run resumes from an older one."""


# ------------------------------------------------------------------------------------------------
# Which checkpoint to resume from
# ------------------------------------------------------------------------------------------------


def checkpoint_folders(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-<step>`` folder of ``output_dir`` by increasing step (numerically:
    ``checkpoint-10`` after ``checkpoint-9``); none if ``output_dir`` does not exist."""
    matches = ((CHECKPOINT_NAME.match(child.name), child) for child in Path(output_dir).glob("checkpoint-*"))
    return sorted((int(match.group(1)), child) for match, child in matches if match and child.is_dir())


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-<step>`` folders of ``output_dir`` that were written completely, oldest first.

    The Trainer writes ``trainer_state.json`` last, after the weights, optimizer, scheduler and RNG
    states; a folder without it was interrupted mid-save and is skipped.
    """
    return [folder for _, folder in checkpoint_folders(output_dir) if (folder / "trainer_state.json").is_file()]


def resolve_resume(training: Any) -> str | None:
    """The checkpoint to resume from, per ``training.resume_from_checkpoint``: ``auto`` (the newest checkpoint
    whose files all read whole, each newer damaged one skipped with a :class:`DamagedCheckpointWarning`; a fresh
    start if there is none), a checkpoint folder, or None (a fresh start).

    Raises:
        ConfigError: ``resume`` is not a checkpoint, or is None while ``output_dir`` already holds a run (so a
            restarted job cannot silently overwrite it).
        DamagedCheckpointError: the checkpoint named is damaged, or (``auto``) every checkpoint is.
    """
    existing = complete_checkpoints(training.output_dir)
    resume = training.resume_from_checkpoint
    if resume is None:
        if existing or (Path(training.output_dir) / TRAIN_RESULT_FILE).exists():
            found = existing[-1].name if existing else TRAIN_RESULT_FILE
            raise ConfigError(
                f"training.output_dir {training.output_dir!r} already holds a run ({found}); "
                "set training.resume_from_checkpoint=auto to continue it, or choose a new output_dir"
            )
        return None
    if resume != "auto":
        if not (Path(resume) / "trainer_state.json").is_file():
            raise ConfigError(
                f"training.resume_from_checkpoint {resume!r} is not a complete checkpoint folder (no "
                "trainer_state.json); give 'auto', a checkpoint-<step> folder, or null"
            )
        existing = [Path(resume)]
    problems = []
    for folder in reversed(existing):
        damage = checkpoint_damage(folder, training.save_only_model)
        if damage is None:
            for problem in problems:
                warnings.warn(
                    f"{problem}; resuming from the previous complete checkpoint {str(folder)!r} instead "
                    "(the damaged one is overwritten when training reaches its step again)",
                    DamagedCheckpointWarning,
                    stacklevel=2,
                )
            return str(folder)
        problems.append(f"checkpoint {str(folder)!r} is damaged: {damage[0].name}: {damage[1]}")
    if problems and resume == "auto":
        problems.append(
            "no intact checkpoint is left to resume from: delete the damaged checkpoint folders to start over, "
            "or set training.resume_from_checkpoint to null with a new output_dir"
        )
    if problems:
        raise DamagedCheckpointError("; ".join(problems))
    return None


# ------------------------------------------------------------------------------------------------
# Damaged files
# ------------------------------------------------------------------------------------------------


def _safetensors_damage(path: Path) -> str | None:
    """Why a safetensors file is not whole: safetensors refuses to open it (the header must parse and the
    tensors must end exactly at the file's end; opening reads no tensor)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt"):
            return None
    except SafetensorError as error:
        return f"{error} ({path.stat().st_size} bytes; truncated?)"


def _torch_archive_damage(path: Path) -> str | None:
    """Why a ``torch.save`` file is not whole: it is a zip archive whose directory must be intact (a truncated
    file has lost it: the directory is written last), whose members lie inside the file, and, up to
    :data:`_CHECKSUM_LIMIT` bytes, whose members match their checksums."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:  # BadZipFile without the end record, written last
            outside = [m.filename for m in archive.infolist() if m.header_offset + m.compress_size > size]
            if outside:
                return f"member {outside[0]!r} extends past the end of the file (truncated?)"
            bad_member = archive.testzip() if size <= _CHECKSUM_LIMIT else None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"not a complete torch.save archive ({size} bytes: {error}; truncated?)"
    return None if bad_member is None else f"member {bad_member!r} fails its checksum"


def _json_damage(path: Path) -> str | None:
    try:
        read_json(path)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        return f"not valid JSON ({error})"
    return None


_FILE_CHECKS = {
    **dict.fromkeys((".pt", ".pth", ".bin"), _torch_archive_damage),  # optimizer, scheduler, RNG, AdaLoRA state
    ".safetensors": _safetensors_damage,
    ".json": _json_damage,
}


_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _expected_files(folder: Path, save_only_model: bool) -> list[tuple[str, list[str]]]:
    """``(what, names)`` of the files every Trainer checkpoint holds, for a folder without a manifest: one of
    ``names`` (files, or the folders FSDP and DeepSpeed save into) must exist for each ``what``."""
    folders = [p.name for p in folder.iterdir() if p.is_dir()]
    sharded = [name for name in folders if name.startswith(("pytorch_model_fsdp", "global_step"))]
    expected = [
        ("the trainer state", ["trainer_state.json"]),
        ("the training arguments", ["training_args.bin"]),
        ("the weights", [*_WEIGHTS, *_WEIGHT_INDEXES, *sharded]),
    ]
    for index in _WEIGHT_INDEXES:
        if (folder / index).is_file():
            try:
                shards = sorted(set(read_json(folder / index)["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError):
                shards = []  # a damaged index is reported by the file checks
            expected += [("a weight shard", [shard]) for shard in shards]
    if not save_only_model:
        deepspeed = any(name.startswith("global_step") for name in sharded)  # optimizer and scheduler live there
        optimizer_dirs = [name for name in folders if name.startswith("optimizer")]
        expected.append(("the optimizer state", ["optimizer.pt", "optimizer.bin", *optimizer_dirs, *sharded]))
        if not deepspeed:
            expected.append(("the scheduler state", ["scheduler.pt"]))
        rng = [p.name for p in folder.glob("rng_state*.pth")]
        expected.append(("the RNG state", rng or ["rng_state.pth"]))
    return expected


def missing_file(folder: str | os.PathLike, save_only_model: bool = False) -> tuple[Path, str] | None:
    """A file a complete checkpoint holds that ``folder`` lacks, and why it should be there, or None: every
    file its :data:`CHECKPOINT_MANIFEST` lists, or (no manifest: a checkpoint from before it was written) the
    files every Trainer checkpoint holds (:func:`_expected_files`; no optimizer, scheduler and RNG state with
    ``save_only_model``)."""
    folder = Path(folder)
    manifest = folder / CHECKPOINT_MANIFEST
    if manifest.is_file():
        try:
            names = read_json(manifest)["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return manifest, "not a readable list of the checkpoint's files"
        missing = [name for name in names if not (folder / name).is_file()]
        return None if not missing else (folder / missing[0], f"missing (listed in {CHECKPOINT_MANIFEST})")
    for what, names in _expected_files(folder, save_only_model):
        if not any((folder / name).exists() for name in names):
            return folder / names[0], f"missing: a complete checkpoint holds {what} ({' or '.join(names)})"
    return None


def checkpoint_damage(folder: str | os.PathLike, save_only_model: bool = False) -> tuple[Path, str] | None:
    """The first missing (:func:`missing_file`) or damaged file of a checkpoint folder and why, or None if every
    file is there and reads whole (the weights, ``torch.save`` archives and JSON files are checked without
    loading any tensor)."""
    missing = missing_file(folder, save_only_model)
    if missing is not None:
        return missing
    for path in sorted(path for path in Path(folder).iterdir() if path.suffix in _FILE_CHECKS and path.is_file()):
        try:
            reason = _FILE_CHECKS[path.suffix](path)
        except (OSError, KeyError, TypeError, IndexError, AttributeError) as error:
            reason = f"unreadable ({type(error).__name__}: {error})"
        if reason is not None:
            return path, reason
    return None


# ------------------------------------------------------------------------------------------------
# Changed recipe
# ------------------------------------------------------------------------------------------------


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"section.key": value}`` (lists are values)."""
    if not isinstance(values, dict):
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two nested dicts: ``{key: (old, new)}``; a key present on one
    side only has ``"<unset>"`` on the other."""
    old, new = _flatten(old), _flatten(new)
    pairs = {key: (old.get(key, "<unset>"), new.get(key, "<unset>")) for key in sorted(old.keys() | new.keys())}
    return {key: pair for key, pair in pairs.items() if pair[0] != pair[1]}


def _listing(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


def check_config_unchanged(
    config: ExperimentConfig, allowed: Iterable[str] = (), checkpoint: str | os.PathLike | None = None
) -> dict[str, tuple[Any, Any]]:
    """Compare ``config`` with the recipe the run started with (its output folder's ``run_config.yaml``, else
    the copy in ``checkpoint``, the folder resumed from); return the allowed changes ``{key: (old, new)}``
    (``allowed``: dotted ``fnmatch`` patterns, e.g. ``training.logging_*``; ``"*"`` allows every change).

    Raises:
        ConfigError: a key not in ``allowed`` changed (every such key is listed, ``old -> new``), the saved
            config cannot be read, or there is none (copied checkpoints, a crash before it was written) and
            ``allowed`` does not hold ``"*"``.
    """
    allowed = tuple(allowed)
    # The recipe the run started with: its folder's run_config.yaml, else the copy the checkpoint keeps.
    folders = [config.training.output_dir, *([checkpoint] if checkpoint is not None else [])]
    saved_path = next((Path(f) / RUN_CONFIG_FILE for f in folders if (Path(f) / RUN_CONFIG_FILE).is_file()), None)
    if saved_path is None:
        where = f"{config.training.output_dir!r}" + (f" nor in {str(checkpoint)!r}" if checkpoint else "")
        if ACCEPT_ANY_CHANGE not in allowed:
            raise ConfigError(
                f"resuming {config.training.output_dir!r}: no {RUN_CONFIG_FILE} in {where}, so the recipe cannot "
                "be compared with the one the checkpoint was trained with (checkpoints copied without it, or a "
                f"crash before it was written). Resume with --allow-config-change '{ACCEPT_ANY_CHANGE}' to accept "
                "the recipe as it is now"
            )
        warnings.warn(f"resuming {config.training.output_dir!r} without a saved recipe to compare with", stacklevel=2)
        return {}
    try:
        saved = config_from_dict(read_mapping(saved_path), source=str(saved_path))
    except ConfigError as error:  # read_mapping's too: an unreadable or unparsable file
        raise ConfigError(f"{saved_path}: cannot read the config the run started with: {error}") from None
    patterns = (*ALWAYS_ALLOWED_CHANGES, *allowed)
    changes = changed_keys(saved.to_dict(with_defaults=True), config.to_dict(with_defaults=True))
    refused = {key: change for key, change in changes.items() if not any(fnmatch.fnmatchcase(key, p) for p in patterns)}
    if refused:
        listed = _listing(refused)
        raise ConfigError(
            f"resuming {config.training.output_dir!r} with a changed config (saved in {saved_path}): {listed}. "
            "Resume with the saved values, start a new output_dir, or accept the changes explicitly with "
            f"--allow-config-change {' '.join(refused)}"
        )
    accepted = {key: change for key, change in changes.items() if key not in ALWAYS_ALLOWED_CHANGES}
    if accepted:  # run_config.yaml is about to record the new values: say once what the checkpoint ran with
        warnings.warn(
            f"resuming {config.training.output_dir!r} with allowed config changes: {_listing(accepted)}", stacklevel=2
        )
    return accepted


class CheckpointRecordCallback(TrainerCallback):
    """After each checkpoint is saved, writes into its folder the list of its files (:data:`CHECKPOINT_MANIFEST`,
    what :func:`missing_file` checks) and the run's recipe (``run_config.yaml``, what
    :func:`check_config_unchanged` compares with), so a checkpoint copied on its own keeps both. Main process
    only (files another process writes later than this, such as its RNG state, may be left off the list)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save(self, args, state, control, **kwargs) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state.is_world_process_zero or not folder.is_dir():
            return
        # The Trainer's files only: the recipe is a record for the config check, not part of the training state.
        files = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
        write_json_atomic(folder / CHECKPOINT_MANIFEST, {"files": [f for f in files if f != CHECKPOINT_MANIFEST]})
        write_yaml_atomic(folder / RUN_CONFIG_FILE, self.config)
