"""Training data: local files (JSON, JSONL, CSV/TSV) or a local ``datasets`` source, the held-out split, and
tokenisation. Instruction tuning (Appendix III.1): prompt template + response + EOS, loss on the response only."""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disel.io import iter_jsonl

from ..config import DataConfig
from .templates import IGNORE_INDEX, format_prompt


class DataFormatError(ValueError):
    """A data file or row that cannot be used: the message names the file, the line or item, and what was expected."""


@dataclass(frozen=True)
class Row:
    """One example as read, and where it came from (``"<file>, line 3"``, for error messages)."""

    values: dict[str, Any]
    location: str


def read_rows(paths: Sequence[str | os.PathLike]) -> list[Row]:
    """All rows of the given files, in order. JSONL: one object per line; JSON: a list of objects;
    CSV/TSV (``.csv``, ``.tsv``): one row per line with a header line (TSV read without quoting, as GLUE)."""
    rows: list[Row] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(f"data file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows.extend(Row(values, f"{path}, line {n}") for n, values in iter_jsonl(path, error=DataFormatError))
        elif suffix == ".json":
            rows.extend(_read_json(path))
        elif suffix in (".csv", ".tsv"):
            rows.extend(_read_csv(path, delimiter="\t" if suffix == ".tsv" else ","))
        else:
            raise DataFormatError(f"data file {str(path)!r}: expected a .json, .jsonl, .csv or .tsv file")
    return rows


def _read_json(path: Path) -> list[Row]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(items, list):
        raise DataFormatError(f"{path}: expected a JSON list of objects (or use JSONL), got a {type(items).__name__}")
    rows = [Row(values, f"{path}, item {index} (0-based)") for index, values in enumerate(items)]
    for row in rows:
        if not isinstance(row.values, dict):
            raise DataFormatError(f"{row.location}: expected a JSON object, got {type(row.values).__name__}")
    return rows


def _read_csv(path: Path, delimiter: str) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8", newline="") as stream:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(stream, delimiter=delimiter, quoting=quoting)
        if not reader.fieldnames:
            raise DataFormatError(f"{path}: expected a header line naming the columns")
        for values in reader:
            if None in values:  # more cells than header columns
                raise DataFormatError(
                    f"{path}, line {reader.line_num}: {len(reader.fieldnames) + len(values[None])} cells but the "
                    f"header has {len(reader.fieldnames)} columns"
                )
            rows.append(Row(dict(values), f"{path}, line {reader.line_num}"))
    return rows


def load_dataset_rows(name: str, config_name: str | None = None, split: str = "train") -> list[Row]:
    """Rows of a ``datasets`` source available locally: a ``save_to_disk`` folder, a local dataset folder,
    or a name already in the local cache. Never downloads (offline mode is forced)."""
    from ..models import force_offline

    force_offline()
    import datasets

    datasets.config.HF_DATASETS_OFFLINE = True  # the env var is only read at import time
    datasets.config.HF_HUB_OFFLINE = True
    source = f"dataset {name!r}" + (f" ({config_name})" if config_name else "") + f" split {split!r}"
    try:
        saved_markers = ("dataset_dict.json", "state.json")  # what save_to_disk writes (DatasetDict / Dataset)
        if Path(name).is_dir() and any((Path(name) / marker).exists() for marker in saved_markers):
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name, config_name, split=split)
    except Exception as error:  # noqa: BLE001 — re-raised with what was asked for
        raise DataFormatError(f"cannot load {source} locally (disel never downloads): {error}") from error
    if isinstance(loaded, datasets.DatasetDict):  # a saved DatasetDict holds every split
        if split not in loaded:
            raise DataFormatError(f"{source}: no such split; the splits are {sorted(loaded)}")
        loaded = loaded[split]
    return [Row(dict(values), f"{source}, row {index}") for index, values in enumerate(loaded)]


def split_rows(rows: Sequence[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Hold out ``round(fraction · n)`` rows (at least one when ``fraction > 0``) chosen by ``seed``.

    Returns ``(train, validation)``, each in the original file order. The split depends only on the rows,
    ``fraction`` and ``seed``, never on the number of processes.
    """
    if fraction <= 0:
        return list(rows), []
    n = len(rows)
    n_validation = max(1, round(fraction * n))
    if n_validation >= n:
        raise DataFormatError(f"validation_fraction={fraction} leaves no training rows out of {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_validation])
    return [r for i, r in enumerate(rows) if i not in held_out], [r for i, r in enumerate(rows) if i in held_out]


def tokenize_instruction(tokenizer: Any, prompt: str, response: str, max_length: int) -> dict[str, list[int]] | None:
    """``input_ids`` of ``prompt + response + EOS`` and ``labels`` with the prompt masked to ``-100``.

    A token is a response token when its first character lies at or after ``len(prompt)`` (offsets of a
    fast tokenizer; special tokens, which cover no text, are prompt), so a token straddling the boundary counts
    as prompt. Slow tokenizers: the first
    ``len(tokenize(prompt))`` tokens are masked. Truncated to ``max_length``; None when no response token
    is left (such an example carries no loss).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; instruction tuning appends EOS to every response")
    eos = int(tokenizer.eos_token_id)
    text = prompt + response
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        labels = [
            token if start >= len(prompt) and end > start else IGNORE_INDEX
            for token, (start, end) in zip(ids, encoding["offset_mapping"])
        ]
    else:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    if not ids or ids[-1] != eos:  # a tokenizer that appends EOS itself gets no second one
        ids.append(eos)
        labels.append(eos)
    labels[-1] = eos  # EOS is learned, whoever appended it
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


@dataclass
class PreparedData:
    """Tokenised train / validation examples (dicts of ``input_ids``, ``labels`` ...; the ``Trainer`` takes a list)
    and counts for the result file."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]] | None
    stats: dict[str, int] = field(default_factory=dict)


def prepare_data(config: DataConfig, tokenizer: Any, task_type: str, num_labels: int | None = None) -> PreparedData:
    """Read, split and tokenise the rows named by ``config`` for ``task_type``.

    Raises:
        DataFormatError: a missing file, unparsable file, or a row without the expected fields.
    """
    if config.dataset is not None:
        train_rows = load_dataset_rows(config.dataset, config.dataset_config, config.dataset_train_split)
        split = config.dataset_validation_split
        validation_rows = load_dataset_rows(config.dataset, config.dataset_config, split) if split else []
    else:
        train_rows = read_rows(config.train_files)
        validation_rows = read_rows(config.validation_files) if config.validation_files else []
    if not train_rows:
        raise DataFormatError(f"no training rows in {config.train_files or config.dataset!r}")
    if config.validation_fraction > 0:
        train_rows, validation_rows = split_rows(train_rows, config.validation_fraction, config.split_seed)
    train_rows = train_rows[: config.max_train_samples]  # [:None] keeps every row
    validation_rows = validation_rows[: config.max_validation_samples]

    stats = {"train_rows": len(train_rows), "validation_rows": len(validation_rows)}
    splits = {"train": train_rows, "validation": validation_rows} if validation_rows else {"train": train_rows}
    examples = {}
    for name, rows in splits.items():
        tokenized = [_tokenize_row(row, config, tokenizer, task_type, num_labels) for row in rows]
        examples[name] = kept = [example for example in tokenized if example is not None]  # None: no response token
        stats[f"{name}_examples"] = len(kept)
        stats[f"{name}_dropped_no_response"] = len(rows) - len(kept)
        stats[f"{name}_at_max_length"] = sum(len(e["input_ids"]) >= config.max_length for e in kept)  # possibly cut
    if len(examples["train"]) == 0:
        raise DataFormatError(
            f"every training example was dropped: no response token fits in data.max_length={config.max_length}"
        )
    return PreparedData(examples["train"], examples.get("validation"), stats)


def _tokenize_row(row: Row, config: DataConfig, tokenizer: Any, task_type: str, num_labels: int | None) -> dict | None:
    """One training example of ``row`` for ``task_type``; None when no response token fits in ``max_length``."""
    if task_type == "sequence_classification":
        text = _string_field(row, config.text_field, "data.text_field")
        pair = _string_field(row, config.text_pair_field, "data.text_pair_field") if config.text_pair_field else None
        encoding = tokenizer(text, pair, truncation=True, max_length=config.max_length)
        example = {key: list(encoding[key]) for key in ("input_ids", "attention_mask")}
        return {**example, "labels": _label(row, config, num_labels)}
    if config.template == "none":  # raw text: an empty prompt, so loss on every token
        text = _string_field(row, config.text_field, "data.text_field")
        return tokenize_instruction(tokenizer, "", text, config.max_length)
    instruction = _string_field(row, config.instruction_field, "data.instruction_field")
    response = _string_field(row, config.response_field, "data.response_field")
    return tokenize_instruction(tokenizer, format_prompt(config.template, instruction), response, config.max_length)


def _field(row: Row, key: str, setting: str) -> Any:
    if key not in row.values:
        raise DataFormatError(
            f"{row.location}: missing key {key!r} (set by {setting}); the row has keys {sorted(row.values)}"
        )
    return row.values[key]


def _string_field(row: Row, key: str, setting: str) -> str:
    value = _field(row, key, setting)
    if not isinstance(value, str):
        raise DataFormatError(f"{row.location}: key {key!r} must hold a string, got {type(value).__name__} {value!r}")
    return value


def _label(row: Row, config: DataConfig, num_labels: int | None) -> int:
    key = config.label_field
    value = _field(row, key, "data.label_field")
    if config.label_names is not None and isinstance(value, str) and value in config.label_names:
        return config.label_names.index(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # CSV cells are strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or num_labels is None or not 0 <= value < num_labels:
        names = f" or one of {config.label_names}" if config.label_names else ""
        raise DataFormatError(
            f"{row.location}: label {key!r} must be an integer in [0, {num_labels}){names}, got {value!r}"
        )
    return value
