"""Retention over training time: evaluate every saved checkpoint and write one table (Figures 6–9).

A training run's output directory holds ``checkpoint-<step>/`` folders (adapter checkpoints with an
``adapter_config.json``, or full models with a ``config.json``). :func:`evaluate_checkpoints` loads
each in step order (adapters on the base model, not merged), runs one evaluator on it and appends a
row to the table ``retention_<evaluator>.json`` / ``.csv``, rewritten atomically after every row, so
an interrupted run resumes where it stopped. A row for the base model itself (step 0,
``checkpoint: "base"``) comes first, the reference every retention curve starts from.

The evaluators are those of :mod:`.evaluators`, the same objects the standalone ``disel-eval`` commands run,
so a checkpoint's number here equals the standalone command's on that checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from disel.io import write_json_atomic, write_text_atomic

from ..schemas import RETENTION_SCHEMA as TABLE_SCHEMA
from ..schemas import RetentionTable, write_record
from .evaluators import Evaluator
from .generation import LoadedModel, load_model_for_eval
from .progress import progress_bar

__all__ = [
    "evaluate_checkpoints",
    "list_checkpoints",
]

_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-<step>`` folder in ``output_dir``, by increasing step
    (numerically: ``checkpoint-10`` after ``checkpoint-9``)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir={str(output_dir)!r} is not a directory")
    found = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def _base_model_path(checkpoints: list[tuple[int, Path]]) -> str:
    for _, path in checkpoints:
        config_file = path / "adapter_config.json"
        if config_file.is_file():
            base = json.loads(config_file.read_text()).get("base_model_name_or_path")
            if base:
                return base
    raise ValueError(
        "base_path was not given and no checkpoint's adapter_config.json names base_model_name_or_path; pass base_path"
    )


def _load_checkpoint(path: Path, base_path: str, dtype: Any) -> LoadedModel:
    if (path / "adapter_config.json").is_file():
        return load_model_for_eval(base_path, path, dtype=dtype)
    if (path / "config.json").is_file():  # a fully fine-tuned model
        return load_model_for_eval(path, None, dtype=dtype, tokenizer_path=path if _has_tokenizer(path) else base_path)
    raise FileNotFoundError(f"{path} holds neither an adapter (adapter_config.json) nor a model (config.json)")


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "checkpoint", *columns, "mean"], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    return buffer.getvalue()


def evaluate_checkpoints(
    output_dir: str | Path,
    evaluator: Evaluator,
    *,
    base_path: str | Path | None = None,
    table_path: str | Path | None = None,
    include_base: bool = True,
    dtype: torch.dtype | str = torch.float32,
    resume: bool = True,
    progress: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Evaluate the base model and every checkpoint of ``output_dir``; write and return the table.

    Args:
        output_dir: a training output directory with ``checkpoint-<step>/`` folders.
        evaluator: what to measure (:class:`LmEvalEvaluator`, :class:`PerplexityEvaluator`,
            :class:`Gsm8kEvaluator` or any object with ``name``, ``settings()``, ``__call__``).
        base_path: the pre-trained model; default ``base_model_name_or_path`` of the adapter config.
        table_path: the JSON table (the CSV is written next to it, same stem); default
            ``<output_dir>/retention_<evaluator.name>.json``. Each evaluator's full record goes to
            ``<table stem>_details/<checkpoint>.json``.
        include_base: add the base model as the row ``step 0, checkpoint "base"``.
        resume: keep rows of an existing table made with the same evaluator settings, and evaluate
            only the checkpoints it lacks.
        progress: called with one line per checkpoint evaluated (None: silent). The bar over the
            checkpoints is drawn only inside :func:`~disel.experiments.eval.progress.show_progress`.

    Returns the table (``disel.retention/1``: ``evaluator``, ``settings``, ``output_dir``, ``base_path``,
    ``metric_columns`` and ``rows`` such as ``{"step": 0, "checkpoint": "base", "hellaswag": 0.57, "mean": 0.52}``).
    """
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints and not include_base:
        raise FileNotFoundError(f"no checkpoint-<step> folders in {output_dir}")
    base_path = str(base_path) if base_path is not None else _base_model_path(checkpoints)
    table_path = Path(table_path) if table_path is not None else Path(output_dir) / f"retention_{evaluator.name}.json"
    settings = json.loads(json.dumps(evaluator.settings(), default=str))
    header = {
        "schema": TABLE_SCHEMA,
        "evaluator": evaluator.name,
        "settings": settings,
        "output_dir": str(output_dir),
        "base_path": base_path,
    }
    rows = _previous_rows(table_path, evaluator.name, settings) if resume else []
    done = {row["checkpoint"] for row in rows}
    todo = [item for item in _model_loaders(checkpoints, base_path, dtype, include_base) if item[1] not in done]
    bar = progress_bar(todo, f"retention {evaluator.name}", unit="checkpoint")
    for step, name, load in bar:
        bar.set_postfix_str(name)
        if progress is not None:
            progress(f"[retention] {evaluator.name}: evaluating {name} (step {step})")
        outcome = evaluator(load())
        _write_detail(table_path.with_name(table_path.stem + "_details") / f"{name}.json", outcome.detail)
        rows.append({"step": step, "checkpoint": name, **outcome.metrics, "mean": outcome.mean})
        rows.sort(key=lambda r: (r["step"], r["checkpoint"] != "base"))
        _write_table(table_path, header, rows)  # after every row: an interrupted run resumes from here
    final = _write_table(table_path, header, rows)
    if progress is not None and any(isinstance(v, float) and math.isnan(v) for row in rows for v in row.values()):
        progress("[retention] warning: some values are NaN")
    return final


def _model_loaders(
    checkpoints: list[tuple[int, Path]], base_path: str, dtype: torch.dtype | str, include_base: bool
) -> list[tuple[int, str, Callable[[], LoadedModel]]]:
    """``(step, row name, load)`` per model to evaluate, base first; ``load`` defers loading until its turn."""
    loaders: list[tuple[int, str, Callable[[], LoadedModel]]] = []
    if include_base:
        loaders.append((0, "base", lambda: load_model_for_eval(base_path, None, dtype=dtype)))
    for step, path in checkpoints:
        loaders.append((step, path.name, lambda path=path: _load_checkpoint(path, base_path, dtype)))
    return loaders


def _previous_rows(table_path: Path, evaluator: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of an existing table made by the same evaluator with the same settings (to resume), else none."""
    if not table_path.is_file():
        return []
    previous = RetentionTable.read(table_path)
    return previous.to_dict()["rows"] if (previous.evaluator, previous.settings) == (evaluator, settings) else []


def _write_detail(path: Path, detail: dict[str, Any]) -> None:
    if "schema" in detail:  # a record of schemas.EVAL_RECORDS, checked by its class
        write_record(path, detail)
    else:  # the detail of another evaluator, as it is
        write_json_atomic(path, detail)


def _write_table(table_path: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the table (JSON and CSV, atomically) and return it; columns in order of first appearance."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in ("step", "checkpoint", "mean") and key not in columns]
    table = {**header, "metric_columns": columns, "rows": rows}
    RetentionTable.from_dict(table, table_path).write(table_path)
    write_text_atomic(table_path.with_suffix(".csv"), _csv_text(columns, rows))
    return table
