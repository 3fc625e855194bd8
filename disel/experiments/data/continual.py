"""The continual-learning benchmark subset (issue 18): four text-classification tasks as instruction → label rows.

The data are the seeded subset in ``../shared/data/continual/`` (its README): AG News, DBpedia, Amazon and Yelp,
1000 training and 500 test rows each, every row ``{"text": ..., "label": <label string>}`` and ``labels.json``
listing the task's labels. Each row becomes a :class:`LabelledRow`: an instruction that names the task's allowed
labels (one wording per task, :data:`TASK_QUESTIONS`) around the review or article, and the label string as the
response. The instructions say what kind of text it is (as the benchmark's published instruction formats do); no
arm is ever told which task an example came from beyond what its text says.

**Truncation** (:data:`MAX_TEXT_TOKENS` = 128 SmolLM2 tokens of text, cut at a token boundary). Training and
scoring cost grow with the sequence length, and review lengths have long tails. :func:`length_table` measures
what a cap keeps; on the training files with SmolLM2-135M's tokenizer (``length_table(load_raw_tasks(...),
tokenizer, (96, 128, 192, 256))``) a 128-token cap keeps every token of 98% of AG News rows and 90% of DBpedia
rows (over 97% of those tasks' tokens), 67% of Amazon rows (86% of its tokens) and 49% of Yelp rows (56% of its
tokens), with a mean of 60, 83, 93 and 99 text tokens. A 256-token cap would keep 80% of Yelp's tokens at 1.4x
its mean length, and 2x the worst-case sequence, for the one task whose label (the star rating) is usually
clear from a review's opening. With the Alpaca template, the instruction (longest for DBpedia's 14 labels) and
the label, training sequences average 97 (AG News), 149 (DBpedia), 130 (Amazon) and 136 (Yelp) tokens, at most
195: :func:`tokenize_rows`' ``max_length`` = 256 never cuts one.

**Held-out split for learning-rate selection**: :func:`held_out_split` draws a seeded fraction of a task's
training rows; the study selects each method's learning rate on the first task of an order (train on the rest,
score on the held-out rows) and then trains on all of that task's training rows.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from disel.io import iter_jsonl

from .datasets import DataFormatError, tokenize_instruction
from .templates import format_prompt

__all__ = [
    "DEFAULT_DATA_DIR",
    "MAX_TEXT_TOKENS",
    "TASK_NAMES",
    "TASK_QUESTIONS",
    "ContinualTask",
    "LabelledRow",
    "default_data_dir",
    "held_out_split",
    "length_table",
    "load_raw_tasks",
    "load_tasks",
    "multitask_rows",
    "tokenize_rows",
    "truncate_text",
]

TASK_NAMES: tuple[str, ...] = ("agnews", "dbpedia", "amazon", "yelp")
"""The four tasks of the subset, by folder name."""

DEFAULT_DATA_DIR = Path("..") / "shared" / "data" / "continual"
"""Where the subset lives, relative to the repository root (the checkout's sibling ``shared/`` folder)."""

MAX_TEXT_TOKENS = 128
"""Text tokens kept per example (the module docstring gives the measured coverage)."""

TASK_QUESTIONS: dict[str, str] = {
    "agnews": "What is the topic of this news article?",
    "dbpedia": "What kind of entity does this Wikipedia article describe?",
    "amazon": "How positive is this product review?",
    "yelp": "How positive is this business review?",
}
"""The question each task's instruction asks; :func:`instruction` adds the allowed labels and the text."""


@dataclass(frozen=True)
class LabelledRow:
    """One example: ``instruction`` (question, allowed labels, text) → ``label`` (the response string)."""

    task: str
    instruction: str
    label: str
    label_index: int
    """Position of ``label`` in the task's label list (what the scorer's argmax is compared with)."""


@dataclass(frozen=True)
class ContinualTask:
    """One task: its label strings (benchmark order) and its train / test rows (file order)."""

    name: str
    labels: tuple[str, ...]
    train: tuple[LabelledRow, ...]
    test: tuple[LabelledRow, ...]


def default_data_dir(repo_root: str | os.PathLike | None = None) -> Path:
    """``<repo root>/../shared/data/continual``; FileNotFoundError saying how to point elsewhere when absent."""
    root = Path(repo_root) if repo_root is not None else Path(__file__).resolve().parents[3]
    folder = (root / DEFAULT_DATA_DIR).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the continual-learning data folder {str(folder)!r} (../shared/data/continual next to the checkout "
            f"{str(root)!r}) does not exist; pass data_dir= the folder holding {', '.join(TASK_NAMES)}"
        )
    return folder


def _resolve(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        return default_data_dir()
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir {str(data_dir)!r} does not exist or is not a directory")
    return folder


def _read_labels(folder: Path) -> tuple[str, ...]:
    path = folder / "labels.json"
    if not path.is_file():
        raise DataFormatError(f"{path} does not exist: each task folder needs labels.json (a list of label strings)")
    labels = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        raise DataFormatError(f"{path}: expected a non-empty JSON list of label strings, got {labels!r}")
    return tuple(labels)


def _read_split(path: Path, labels: Sequence[str]) -> list[tuple[str, int]]:
    if not path.is_file():
        raise DataFormatError(f"data file {str(path)!r} does not exist")
    pairs = []
    for line, row in iter_jsonl(path, error=DataFormatError):
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or label not in labels:
            raise DataFormatError(
                f"{path}, line {line}: expected {{'text': <string>, 'label': one of {list(labels)}}}, "
                f"got text {type(text).__name__}, label {label!r}"
            )
        pairs.append((text, labels.index(label)))
    return pairs


def load_raw_tasks(
    names: Sequence[str] = TASK_NAMES, data_dir: str | os.PathLike | None = None
) -> dict[str, tuple[tuple[str, ...], dict[str, list[tuple[str, int]]]]]:
    """``{task: (labels, {"train": [(text, label index)], "test": [...]})}`` as stored, untruncated."""
    folder = _resolve(data_dir)
    unknown = [name for name in names if name not in TASK_QUESTIONS]
    if unknown:
        raise ValueError(f"tasks must be among {list(TASK_NAMES)}, got unknown {unknown}")
    raw = {}
    for name in names:
        labels = _read_labels(folder / name)
        splits = {split: _read_split(folder / name / f"{split}.jsonl", labels) for split in ("train", "test")}
        raw[name] = (labels, splits)
    return raw


def truncate_text(text: str, tokenizer: Any, max_tokens: int | None) -> str:
    """``text`` cut after its first ``max_tokens`` tokens (at the end of the last kept token's characters, via
    the fast tokenizer's offsets); unchanged when it is no longer or ``max_tokens`` is None."""
    if max_tokens is None:
        return text
    if max_tokens < 1:
        raise ValueError(f"max_text_tokens must be a positive integer or None, got {max_tokens!r}")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= max_tokens:
        return text
    return text[: offsets[max_tokens - 1][1]]


def instruction(task: str, labels: Sequence[str], text: str) -> str:
    """The instruction of one example: the task's question, the allowed labels, then the text."""
    return f"{TASK_QUESTIONS[task]} Answer with one of: {', '.join(labels)}.\n\n{text.strip()}"


def load_tasks(
    names: Sequence[str] = TASK_NAMES,
    data_dir: str | os.PathLike | None = None,
    *,
    tokenizer: Any = None,
    max_text_tokens: int | None = MAX_TEXT_TOKENS,
) -> dict[str, ContinualTask]:
    """The named tasks as instruction → label rows, texts truncated to ``max_text_tokens`` tokens of ``tokenizer``.

    ``tokenizer`` is required unless ``max_text_tokens`` is None (no truncation). ``data_dir`` defaults to
    :func:`default_data_dir`.
    """
    if tokenizer is None and max_text_tokens is not None:
        raise ValueError("load_tasks needs tokenizer= to truncate texts (or max_text_tokens=None to keep them whole)")
    tasks = {}
    for name, (labels, splits) in load_raw_tasks(names, data_dir).items():
        rows = {
            split: tuple(
                LabelledRow(
                    name,
                    instruction(name, labels, truncate_text(text, tokenizer, max_text_tokens)),
                    labels[index],
                    index,
                )
                for text, index in pairs
            )
            for split, pairs in splits.items()
        }
        tasks[name] = ContinualTask(name, labels, rows["train"], rows["test"])
    return tasks


def held_out_split(
    rows: Sequence[LabelledRow], fraction: float = 0.2, seed: int = 0
) -> tuple[list[LabelledRow], list[LabelledRow]]:
    """``(train, held_out)``: ``round(fraction · n)`` rows drawn by ``seed`` are held out; both keep file order.

    For learning-rate selection on the first task of an order; deterministic in (rows, fraction, seed).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got fraction={fraction!r}")
    n_held = round(fraction * len(rows))
    if not 0 < n_held < len(rows):
        raise ValueError(f"fraction={fraction} of {len(rows)} rows leaves an empty train or held-out part")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_held])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def multitask_rows(tasks: Mapping[str, ContinualTask] | Sequence[ContinualTask], seed: int = 0) -> list[LabelledRow]:
    """Every task's training rows in one list, shuffled by ``seed`` (the multitask arms' training set)."""
    values = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    rows = [row for task in values for row in task.train]
    random.Random(seed).shuffle(rows)
    return rows


def tokenize_rows(
    rows: Sequence[LabelledRow], tokenizer: Any, template: str = "alpaca", max_length: int = 256
) -> list[dict[str, list[int]]]:
    """Training examples (``input_ids``, ``labels`` with the prompt masked) of ``template``-formatted rows, the
    same tokenisation as every instruction-tuning run (:func:`~disel.experiments.data.datasets.tokenize_instruction`).
    ValueError when some example loses its label to ``max_length``."""
    examples = []
    for row in rows:
        example = tokenize_instruction(tokenizer, format_prompt(template, row.instruction), row.label, max_length)
        if example is None or example["labels"][-1] != tokenizer.eos_token_id:
            raise ValueError(
                f"max_length={max_length} cuts the label of a {row.task} example; raise it or lower max_text_tokens"
            )
        examples.append(example)
    return examples


def length_table(
    raw: Mapping[str, tuple[tuple[str, ...], Mapping[str, Sequence[tuple[str, int]]]]],
    tokenizer: Any,
    caps: Sequence[int],
    split: str = "train",
) -> list[dict[str, float]]:
    """Per task and cap: the fraction of texts kept whole, the fraction of text tokens kept, the mean kept length.

    ``raw`` is :func:`load_raw_tasks`' output; the numbers behind :data:`MAX_TEXT_TOKENS`.
    """
    table = []
    for name, (_, splits) in raw.items():
        lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text, _ in splits[split]]
        total = sum(lengths)
        for cap in caps:
            kept = [min(n, cap) for n in lengths]
            table.append(
                {
                    "task": name,
                    "cap": cap,
                    "whole_fraction": sum(n <= cap for n in lengths) / len(lengths),
                    "token_fraction": sum(kept) / total,
                    "mean_tokens": sum(kept) / len(kept),
                }
            )
    return table
