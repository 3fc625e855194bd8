"""Retention over training time (Figures 6–9): evaluate the base model and every ``checkpoint-<step>/`` of a
training output with one evaluator of :mod:`.evaluators` (the same objects the standalone ``disel-eval`` commands
run) into one table, ``retention_<evaluator>.json`` / ``.csv``, rewritten after every row so a run resumes."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from disel.io import write_json_atomic, write_text_atomic

from ..models import LoadedModel, adapter_base, has_tokenizer, is_adapter_dir, load_model_for_eval
from ..schemas import RETENTION_SCHEMA, RetentionTable, write_record
from ..train.checkpoints import checkpoint_folders
from .evaluators import Evaluator
from .progress import progress_bar


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """:func:`~disel.experiments.train.checkpoints.checkpoint_folders`; FileNotFoundError if there is no folder."""
    if not Path(output_dir).is_dir():
        raise FileNotFoundError(f"output_dir={str(output_dir)!r} is not a directory")
    return checkpoint_folders(output_dir)


def _base_model_path(checkpoints: list[tuple[int, Path]]) -> str:
    """The base the first adapter checkpoint names (:func:`~disel.experiments.models.adapter_base`)."""
    adapter = next((path for _, path in checkpoints if is_adapter_dir(path)), None)
    if adapter is None:
        raise ValueError("base_path was not given and no checkpoint is an adapter that names its base; pass base_path")
    return str(adapter_base(adapter))


def _load_checkpoint(path: Path | None, base_path: str, dtype: Any) -> LoadedModel:
    """The base model (``path`` None), an adapter checkpoint on it (not merged), or a fully fine-tuned model."""
    if path is None or is_adapter_dir(path):
        return load_model_for_eval(base_path, path, dtype=dtype)
    if (path / "config.json").is_file():
        return load_model_for_eval(path, None, dtype=dtype, tokenizer_path=path if has_tokenizer(path) else base_path)
    raise FileNotFoundError(f"{path} holds neither an adapter (adapter_config.json) nor a model (config.json)")


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
        base_path: the pre-trained model; default ``base_model_name_or_path`` of the adapter config.
        table_path: the JSON table (the CSV is written next to it, same stem); default
            ``<output_dir>/retention_<evaluator.name>.json``. Each evaluator's full record goes to
            ``<table stem>_details/<checkpoint>.json``.
        include_base: add the base model as the row ``step 0, checkpoint "base"`` (every curve's reference).
        resume: keep rows of an existing table made with the same evaluator settings; evaluate only the rest.
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
    header = dict(
        schema=RETENTION_SCHEMA,
        evaluator=evaluator.name,
        settings=settings,
        output_dir=str(output_dir),
        base_path=base_path,
    )
    rows = _resumed_rows(table_path, evaluator.name, settings) if resume else []
    done = {row["checkpoint"] for row in rows}
    models = [(0, "base", None)] if include_base else []
    models += [(step, path.name, path) for step, path in checkpoints]
    bar = progress_bar([m for m in models if m[1] not in done], f"retention {evaluator.name}", unit="checkpoint")
    for step, name, path in bar:
        bar.set_postfix_str(name)
        if progress is not None:
            progress(f"[retention] {evaluator.name}: evaluating {name} (step {step})")
        outcome = evaluator(_load_checkpoint(path, base_path, dtype))  # loaded in its turn, one model at a time
        detail = table_path.with_name(table_path.stem + "_details") / f"{name}.json"
        # a record of schemas.EVAL_RECORDS is checked by its class; another evaluator's detail is written as it is
        (write_record if "schema" in outcome.detail else write_json_atomic)(detail, outcome.detail)
        rows.append({"step": step, "checkpoint": name, **outcome.metrics, "mean": outcome.mean})
        rows.sort(key=lambda r: (r["step"], r["checkpoint"] != "base"))
        _write_table(table_path, header, rows)  # after every row: an interrupted run resumes from here
    final = _write_table(table_path, header, rows)
    if progress is not None and any(isinstance(v, float) and math.isnan(v) for row in rows for v in row.values()):
        progress("[retention] warning: some values are NaN")
    return final


def _resumed_rows(table_path: Path, evaluator: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of an existing table made by the same evaluator with the same settings; none otherwise (start
    over)."""
    previous = RetentionTable.read(table_path) if table_path.is_file() else None
    same = previous is not None and (previous.evaluator, previous.settings) == (evaluator, settings)
    return previous.to_dict()["rows"] if same else []


def _write_table(table_path: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the table (JSON and CSV, atomically) and return it; columns in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row if key not in ("step", "checkpoint", "mean")))
    table = {**header, "metric_columns": columns, "rows": rows}
    RetentionTable.from_dict(table, table_path).write(table_path)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "checkpoint", *columns, "mean"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)  # None is written as an empty cell
    write_text_atomic(table_path.with_suffix(".csv"), buffer.getvalue())
    return table
