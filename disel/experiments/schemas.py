"""The result files: one schema name and one typed reader (and writer) per file, in one module.

The figure scripts (``paper_figs/``) read result files only through this module, so a missing file, a
wrong schema or a missing key fails with one message naming the file and what was expected, before
anything is drawn. The module itself uses no torch (importing the ``disel`` package still loads it).

* ``<run>/train_result.json`` — ``disel.train_result/2``, :class:`TrainResult`, written by
  :func:`disel.experiments.train.run.train` (:func:`read_train_result` is the figures' view of it);
* ``<run>/retention_<evaluator>.json`` — ``disel.retention/1``, written by
  :func:`disel.experiments.eval.retention.evaluate_checkpoints` (``disel-eval retention``);
* a gates file (any name) — ``disel.gates/1``, written by :func:`disel.experiments.eval.gates.analyze_gates` and
  ``save_gates`` (``disel-eval gates``);
* a tradeoff table (any name) — ``disel.tradeoff/1``, written by :func:`write_tradeoff_table` (defined here).

The tradeoff table ``disel.tradeoff/1`` (Figures 2 and 3: one point per fine-tuned model)::

    {"schema": "disel.tradeoff/1",
     "title": "Llama-2-7B / MetaMathQA",          # optional: a panel title
     "ft_metric": "GSM8K exact match",             # name of the fine-tuning score (y axis)
     "retention_metric": "retention (mean acc.)",  # name of the retention score (x axis)
     "retention_higher_is_better": true,           # false for perplexity
     "base": {"retention": 0.62, "ft_score": 0.14},   # the pre-trained model; ft_score may be null
     "rows": [{"method": "disel", "rank": 8, "seed": 0, "ft_score": 0.41, "retention": 0.61}, ...]}

``rank`` is an integer, or ``null`` for full fine-tuning; ``seed`` an integer or ``null``. Each
``(method, rank, seed)`` appears once (``paper_figs.aggregate`` averages the seeds for the figures).
:func:`tradeoff_table_from_runs` builds the table from training runs: in each run the checkpoint with
the best fine-tuning score is selected (paper, Appendix II.5) and its retention read from the same
checkpoint's row of the retention table; from the shell, ``python -m disel.experiments.schemas tradeoff``.

Runs for the checkpoint figures (6–9): a run directory holds ``train_result.json`` (method, rank and
seed are read from it, so no separate manifest can disagree with the run) and one
``retention_<evaluator>.json`` per evaluator. :func:`find_run_dirs` lists the runs under a folder and
``paper_figs.aggregate.checkpoint_curves`` averages runs that share ``(method, rank)`` step by step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from disel.recording import DEPTH_GROUPS

__all__ = [
    "DEPTH_THIRDS",
    "GATES_SCHEMA",
    "GSM8K_SCHEMA",
    "HUMANEVAL_SCHEMA",
    "LM_EVAL_SCHEMA",
    "MLM_PERPLEXITY_SCHEMA",
    "PERPLEXITY_SCHEMA",
    "MODULE_ORDER",
    "RETENTION_SCHEMA",
    "TRADEOFF_SCHEMA",
    "TRAIN_RESULT_SCHEMA",
    "COMPARISON_SCHEMA",
    "Comparison",
    "GateDomainSummary",
    "GateHistogram",
    "GatesFile",
    "MalformedResultFileError",
    "MissingResultFileError",
    "ResultFileError",
    "RetentionRow",
    "RetentionTable",
    "RunResults",
    "TradeoffRow",
    "TradeoffTable",
    "TrainResult",
    "TrainRunInfo",
    "find_run_dirs",
    "load_result_json",
    "main",
    "read_comparison",
    "read_gates",
    "read_retention_table",
    "read_run",
    "read_runs",
    "read_tradeoff_table",
    "read_train_result",
    "shared_base_value",
    "tradeoff_table_from_runs",
    "write_tradeoff_table",
]

TRAIN_RESULT_SCHEMA = "disel.train_result/2"
"""Version 1 (before recipes composed) also had ``adapter_dir`` (always ``output_dir``); it still reads."""
RETENTION_SCHEMA = "disel.retention/1"
GATES_SCHEMA = "disel.gates/1"
TRADEOFF_SCHEMA = "disel.tradeoff/1"
GSM8K_SCHEMA = "disel.gsm8k/1"
HUMANEVAL_SCHEMA = "disel.humaneval/1"
PERPLEXITY_SCHEMA = "disel.perplexity/1"
MLM_PERPLEXITY_SCHEMA = "disel.mlm_perplexity/1"
LM_EVAL_SCHEMA = "disel.lm_eval/1"
COMPARISON_SCHEMA = "disel.comparison/2"
"""``disel-compare``'s ``comparison.json``; version 1 (before recipes) had a flat ``config`` and still reads."""

TRAIN_RESULT_FILE = "train_result.json"

# The depth thirds of the gate analysis, in order: the recorder's grouping names.
DEPTH_THIRDS: tuple[str, ...] = DEPTH_GROUPS
# Llama/Mistral projection names in network order, attention first; figures list modules in this order.
MODULE_ORDER: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------------------------
# Errors and field checks
# ------------------------------------------------------------------------------------------------


class ResultFileError(Exception):
    """A result file cannot be used; the message starts with the file's path."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MissingResultFileError(ResultFileError, FileNotFoundError):
    """The result file does not exist."""


class MalformedResultFileError(ResultFileError, ValueError):
    """The file exists but is not valid JSON, has another schema, or lacks / mistypes a field."""


def load_result_json(path: str | os.PathLike, schema: str, made_by: str, accept: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object in ``path``, checked to carry ``schema`` (or an older version listed in ``accept``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise MissingResultFileError(path, f"{what}; expected a {schema} file ({made_by})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MalformedResultFileError(
            path, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except UnicodeDecodeError:
        raise MalformedResultFileError(path, "not a UTF-8 text file") from None
    if not isinstance(raw, dict):
        raise MalformedResultFileError(
            path, f"expected a JSON object with schema {schema!r}, got a JSON {type(raw).__name__}"
        )
    if raw.get("schema") != schema and raw.get("schema") not in accept:
        found = f"schema {raw['schema']!r}" if "schema" in raw else "no 'schema' key"
        raise MalformedResultFileError(path, f"expected schema {schema!r} ({made_by}), found {found}")
    return raw


_KINDS = {
    "str": (str,),
    "int": (int,),
    "number": (int, float),
    "bool": (bool,),
    "object": (dict,),
    "list": (list,),
}


def _get(path: Path, obj: Mapping[str, Any], key: str, kind: str, where: str, *, nullable: bool = False) -> Any:
    """``obj[key]`` checked to be of ``kind`` (see ``_KINDS``); ``where`` names ``obj`` in the message."""
    location = f"{where}.{key}" if where else key
    if key not in obj:
        raise MalformedResultFileError(path, f"missing key {location!r} (expected {_describe(kind, nullable)})")
    value = obj[key]
    if value is None and nullable:
        return None
    ok = isinstance(value, _KINDS[kind]) and not (kind in ("int", "number") and isinstance(value, bool))
    if kind == "number" and ok and not math.isfinite(value):
        ok = False
    if not ok:
        raise MalformedResultFileError(path, f"{location!r} must be {_describe(kind, nullable)}, got {value!r}")
    return value


def _describe(kind: str, nullable: bool) -> str:
    text = {
        "str": "a string",
        "int": "an integer",
        "number": "a finite number",
        "bool": "true or false",
        "object": "a JSON object",
        "list": "a JSON list",
    }[kind]
    return text + " or null" if nullable else text


# ------------------------------------------------------------------------------------------------
# train_result.json
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What one ``train`` call produced; ``to_dict()`` is ``train_result.json`` (schema ``disel.train_result/2``,
    non-finite floats written as null). Its presence means the run finished and the final adapter (or full
    model) in ``output_dir`` is complete."""

    name: str | None  # config.name
    method: str  # copied from the config for quick filtering
    rank: int | None  # method.r; null for full fine-tuning
    task_type: str
    model_path: str
    config: dict[str, Any]  # the full resolved recipe (ExperimentConfig.to_dict())
    output_dir: str  # the run folder; the final adapter is saved there
    world_size: int  # data-parallel processes
    global_step: int
    epoch: float | None  # epochs completed (fractional)
    final_train_loss: float | None  # the last logged training loss
    train_loss: float | None  # the Trainer's mean loss over this invocation's steps
    eval: dict[str, float]  # final metrics on the validation set (eval_loss, eval_accuracy); {} without one
    loss_history: list[list[float]]  # every logged [step, loss], across resumes
    eval_history: list[dict[str, Any]]  # every evaluation log entry, across resumes
    log_history: list[dict[str, Any]]  # the Trainer's state.log_history
    checkpoints: list[dict[str, Any]]  # complete checkpoints left ({"path" relative to output_dir, "step"}), oldest first
    resumed_from: str | None  # the checkpoint this invocation resumed from
    runtime_s: float  # wall-clock seconds of this invocation
    data: dict[str, int]  # row and example counts (train_rows, train_examples, train_dropped_no_response ...)
    parameters: dict[str, int]  # trainable and total parameter counts
    parameter_sha256_per_rank: list[str]  # per rank, after training: equal hashes = replicas in sync
    versions: dict[str, str]  # torch, transformers, peft, accelerate, disel
    finished_at: str  # UTC, ISO 8601
    schema: str = TRAIN_RESULT_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        result = dataclasses.asdict(self)
        return {"schema": result.pop("schema"), **result}

    @classmethod
    def read(cls, path: str | os.PathLike) -> TrainResult:
        """Read ``train_result.json`` (``path`` is the file or the run folder holding it). Version-1 files also
        carry ``adapter_dir``, always equal to ``output_dir``: it is dropped."""
        path = Path(path)
        file = path / TRAIN_RESULT_FILE if path.is_dir() or not path.suffix else path
        raw = load_result_json(file, TRAIN_RESULT_SCHEMA, "written at the end of disel.experiments.train.run.train",
                               accept=("disel.train_result/1",))
        raw.pop("adapter_dir", None)
        raw["schema"] = TRAIN_RESULT_SCHEMA
        for key, kind, nullable in (("method", "str", False), ("rank", "int", True), ("name", "str", True),
                                    ("global_step", "int", False), ("config", "object", False)):
            _get(file, raw, key, kind, "", nullable=nullable)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw]
        if missing:
            raise MalformedResultFileError(file, f"missing key {missing[0]!r} (and {len(missing) - 1} more)")
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Comparison:
    """``comparison.json`` of ``disel-compare``: the base model's and every run's final numbers."""

    schema: str
    config: dict[str, Any]
    base: dict[str, float]
    runs: list[dict[str, Any]]


def read_comparison(path: str | os.PathLike) -> Comparison:
    """Read ``comparison.json`` (schema ``disel.comparison/2``, or ``/1`` written before recipes composed)."""
    path = Path(path)
    made_by = "written by disel-compare"
    raw = load_result_json(path, COMPARISON_SCHEMA, made_by, accept=("disel.comparison/1",))
    base = _get(path, raw, "base", "object", "")
    for key in ("exact_match", "ppl_english", "ppl_code"):
        _get(path, base, key, "number", "base")
    runs = _get(path, raw, "runs", "list", "")
    for index, run in enumerate(runs):
        for key, kind in (("method", "str"), ("rank", "int"), ("exact_match", "number"), ("checkpoints", "list")):
            _get(path, run, key, kind, f"runs[{index}]")
    return Comparison(raw["schema"], _get(path, raw, "config", "object", ""), base, runs)


@dataclass(frozen=True)
class TrainRunInfo:
    """What the figures need from a run's ``train_result.json`` (schema ``disel.train_result/2``).

    ``run_dir`` is the folder holding the file; ``seed`` is ``config.training.seed`` (``None`` if absent).
    """

    run_dir: Path
    method: str
    rank: int | None
    name: str | None
    seed: int | None
    global_step: int | None


def read_train_result(path: str | os.PathLike) -> TrainRunInfo:
    """What the figures need from ``train_result.json`` (``path`` is the file or the run directory holding it),
    read with :meth:`TrainResult.read`."""
    path = Path(path)
    file = path / TRAIN_RESULT_FILE if path.is_dir() else path
    result = TrainResult.read(file)
    training = result.config.get("training")
    seed = None
    if isinstance(training, dict) and "seed" in training:
        seed = _get(file, training, "seed", "int", "config.training", nullable=True)
    rank = None if result.method == "full" else result.rank
    return TrainRunInfo(file.parent, result.method, rank, result.name, seed, result.global_step)


# ------------------------------------------------------------------------------------------------
# retention_<evaluator>.json
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionRow:
    """One evaluated checkpoint: ``values`` maps each metric column (and ``"mean"``) to its number."""

    step: int
    checkpoint: str
    values: Mapping[str, float | None]

    @property
    def is_base(self) -> bool:
        return self.checkpoint == "base"


@dataclass(frozen=True)
class RetentionTable:
    """A ``disel.retention/1`` table: the base model's row (``step 0``, ``checkpoint "base"``), if
    evaluated, and one row per checkpoint, by step."""

    path: Path
    evaluator: str
    metric_columns: tuple[str, ...]
    rows: tuple[RetentionRow, ...]

    @property
    def metrics(self) -> tuple[str, ...]:
        """Names :meth:`value` accepts: every metric column and ``"mean"``."""
        return (*self.metric_columns, "mean")

    @property
    def base(self) -> RetentionRow | None:
        return next((row for row in self.rows if row.is_base), None)

    @property
    def checkpoints(self) -> tuple[RetentionRow, ...]:
        return tuple(row for row in self.rows if not row.is_base)

    def value(self, row: RetentionRow, metric: str) -> float:
        """``row``'s ``metric``; raises :class:`MalformedResultFileError` if it is unknown or null."""
        if metric not in self.metrics:
            raise MalformedResultFileError(
                self.path,
                f"has no metric {metric!r}; its metrics are {list(self.metrics)} (evaluator {self.evaluator!r})",
            )
        value = row.values.get(metric)
        if value is None:
            raise MalformedResultFileError(
                self.path, f"row {row.checkpoint!r} has no value for {metric!r} (null or absent)"
            )
        return value

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of ``metric`` over the checkpoints (base excluded), by step."""
        rows = self.checkpoints
        if not rows:
            raise MalformedResultFileError(self.path, "has no checkpoint rows (only the base model was evaluated)")
        return [row.step for row in rows], [self.value(row, metric) for row in rows]

    def row(self, checkpoint: str) -> RetentionRow:
        """The row of ``checkpoint`` (e.g. ``"checkpoint-200"``)."""
        for row in self.rows:
            if row.checkpoint == checkpoint:
                return row
        raise MalformedResultFileError(
            self.path, f"has no row for {checkpoint!r}; rows: {[row.checkpoint for row in self.rows]}"
        )


def read_retention_table(path: str | os.PathLike) -> RetentionTable:
    """Read and check a ``disel.retention/1`` table (``retention_<evaluator>.json``)."""
    path = Path(path)
    raw = load_result_json(path, RETENTION_SCHEMA, "written by disel.experiments.eval.retention.evaluate_checkpoints")
    evaluator = _get(path, raw, "evaluator", "str", "")
    columns = _get(path, raw, "metric_columns", "list", "")
    if not all(isinstance(column, str) for column in columns):
        raise MalformedResultFileError(path, f"'metric_columns' must be a list of strings, got {columns!r}")
    rows = []
    for index, raw_row in enumerate(_get(path, raw, "rows", "list", "")):
        where = f"rows[{index}]"
        if not isinstance(raw_row, dict):
            raise MalformedResultFileError(path, f"{where} must be a JSON object, got {raw_row!r}")
        step = _get(path, raw_row, "step", "int", where)
        checkpoint = _get(path, raw_row, "checkpoint", "str", where)
        values = {"mean": _get(path, raw_row, "mean", "number", where, nullable=True)}
        for column in columns:
            values[column] = _get(path, raw_row, column, "number", where, nullable=True) if column in raw_row else None
        rows.append(RetentionRow(step, checkpoint, values))
    if not rows:
        raise MalformedResultFileError(path, "'rows' is empty: no checkpoint was evaluated")
    rows.sort(key=lambda row: (row.step, not row.is_base))
    return RetentionTable(path, evaluator, tuple(columns), tuple(rows))


# ------------------------------------------------------------------------------------------------
# Runs (train_result.json + retention tables)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResults:
    """One training run and one of its retention tables."""

    info: TrainRunInfo
    table: RetentionTable


def find_run_dirs(runs_dir: str | os.PathLike) -> list[Path]:
    """The run directories under ``runs_dir``: ``runs_dir`` itself if it holds ``train_result.json``,
    else its sub-folders (any depth) that do, sorted by path."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise MissingResultFileError(
            runs_dir, "is not a directory; expected a folder of training runs, each with train_result.json"
        )
    if (runs_dir / TRAIN_RESULT_FILE).is_file():
        return [runs_dir]
    found = sorted(path.parent for path in runs_dir.rglob(TRAIN_RESULT_FILE))
    if not found:
        raise MissingResultFileError(
            runs_dir,
            f"holds no run: no {TRAIN_RESULT_FILE} in it or in any sub-folder (written when disel-train finishes)",
        )
    return found


def read_run(run_dir: str | os.PathLike, evaluator: str) -> RunResults:
    """``run_dir``'s ``train_result.json`` and its ``retention_<evaluator>.json``."""
    run_dir = Path(run_dir)
    info = read_train_result(run_dir)
    table_path = run_dir / f"retention_{evaluator}.json"
    if not table_path.is_file():
        present = sorted(p.name for p in run_dir.glob("retention_*.json"))
        raise MissingResultFileError(
            table_path,
            f"does not exist; expected the {RETENTION_SCHEMA} table of evaluator {evaluator!r} "
            f"(python -m disel.experiments.cli.eval retention ...); the run has {present or 'no retention table'}",
        )
    return RunResults(info, read_retention_table(table_path))


def read_runs(run_dirs: Iterable[str | os.PathLike], evaluator: str) -> list[RunResults]:
    """:func:`read_run` for each directory."""
    return [read_run(run_dir, evaluator) for run_dir in run_dirs]


def shared_base_value(runs: Sequence[RunResults], metric: str, *, rel_tol: float = 1e-4) -> float | None:
    """The base model's ``metric``, which every run's table must agree on (same base model, same
    evaluator); ``None`` if no table has a base row.

    Raises :class:`MalformedResultFileError` naming the tables if two base rows differ by more than
    ``rel_tol`` (relative): they were then made with different base models or evaluator settings.
    """
    values = [(run.table.path, run.table.value(run.table.base, metric)) for run in runs if run.table.base is not None]
    if not values:
        return None
    first_path, first = values[0]
    for path, value in values[1:]:
        if not math.isclose(value, first, rel_tol=rel_tol, abs_tol=0.0):
            raise MalformedResultFileError(
                path,
                f"base-model {metric!r} is {value!r} but {first_path} has {first!r}: the runs were evaluated against "
                "different base models or evaluator settings and cannot share one base line",
            )
    return first


# ------------------------------------------------------------------------------------------------
# disel.gates/1
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateHistogram:
    """Recorded gate values of one group: counts per bin over the file's ``bin_edges``, their number
    (``count`` = tokens × rank components), ``mean`` and ``std``."""

    counts: tuple[int, ...]
    count: int
    mean: float
    std: float

    def normalized(self) -> list[float]:
        """Fractions per bin, summing to 1 (the paper's normalised histograms)."""
        return [c / self.count for c in self.counts]


@dataclass(frozen=True)
class GateDomainSummary:
    """The gate summaries of one input domain, grouped as :mod:`disel.experiments.eval.gates` describes."""

    name: str
    token_selection: str | None
    by_depth: Mapping[str, GateHistogram]
    by_module: Mapping[str, GateHistogram]
    by_kind: Mapping[str, GateHistogram]
    by_depth_and_kind: Mapping[str, Mapping[str, GateHistogram]]
    by_depth_and_module: Mapping[str, Mapping[str, GateHistogram]]


@dataclass(frozen=True)
class GatesFile:
    """A ``disel.gates/1`` file: shared ``bin_edges`` and one :class:`GateDomainSummary` per domain."""

    path: Path
    model: Mapping[str, Any]
    bin_edges: tuple[float, ...]
    domains: Mapping[str, GateDomainSummary]

    def domain(self, name: str) -> GateDomainSummary:
        if name not in self.domains:
            raise MalformedResultFileError(self.path, f"has no domain {name!r}; its domains are {list(self.domains)}")
        return self.domains[name]

    def group(self, domain: str, grouping: str, key: str, sub_key: str | None = None) -> GateHistogram:
        """One histogram, e.g. ``group("math", "by_depth", "late")`` or
        ``group("math", "by_depth_and_module", "late", "up_proj")``; the error lists what exists."""
        summary = self.domain(domain)
        table = getattr(summary, grouping)
        where = f"domains.{domain}.{grouping}"
        if key not in table:
            raise MalformedResultFileError(self.path, f"has no {where}.{key}; present: {list(table)}")
        entry = table[key]
        if sub_key is None:
            return entry
        if sub_key not in entry:
            raise MalformedResultFileError(self.path, f"has no {where}.{key}.{sub_key}; present: {list(entry)}")
        return entry[sub_key]


def _gate_histogram(path: Path, obj: Any, where: str, bins: int) -> GateHistogram:
    """One histogram of a gates file, checked: ``bins`` non-negative counts adding up to ``count`` > 0."""
    if not isinstance(obj, dict):
        raise MalformedResultFileError(path, f"{where!r} must be a JSON object, got {obj!r}")
    counts = _get(path, obj, "histogram", "list", where)
    count = _get(path, obj, "count", "int", where)
    if len(counts) != bins or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise MalformedResultFileError(
            path, f"'{where}.histogram' must be {bins} non-negative integers (one per bin)"
        )
    if count <= 0 or sum(counts) != count:
        raise MalformedResultFileError(
            path, f"'{where}': histogram adds up to {sum(counts)} but count is {count} (must be equal and positive)"
        )
    return GateHistogram(
        tuple(counts), count, _get(path, obj, "mean", "number", where), _get(path, obj, "std", "number", where)
    )


def read_gates(path: str | os.PathLike) -> GatesFile:
    """Read and check a ``disel.gates/1`` file: every histogram has ``len(bin_edges) - 1`` bins that
    add up to its ``count`` (> 0)."""
    path = Path(path)
    raw = load_result_json(path, GATES_SCHEMA, "written by disel.experiments.eval.gates.save_gates / disel-eval gates")
    edges = _get(path, raw, "bin_edges", "list", "")
    if (
        len(edges) < 2
        or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in edges)
        or any(b <= a for a, b in zip(edges, edges[1:]))
    ):
        raise MalformedResultFileError(
            path, f"'bin_edges' must be an increasing list of at least two numbers, got {edges!r}"
        )
    bins = len(edges) - 1
    raw_domains = _get(path, raw, "domains", "object", "")
    if not raw_domains:
        raise MalformedResultFileError(path, "'domains' is empty: no domain was recorded")

    def histogram(obj: Any, where: str) -> GateHistogram:
        return _gate_histogram(path, obj, where, bins)

    def flat(obj: Mapping[str, Any], key: str, where: str) -> dict[str, GateHistogram]:
        table = _get(path, obj, key, "object", where)
        return {name: histogram(entry, f"{where}.{key}.{name}") for name, entry in table.items()}

    def nested(obj: Mapping[str, Any], key: str, where: str) -> dict[str, dict[str, GateHistogram]]:
        table = _get(path, obj, key, "object", where)
        return {
            outer: {
                name: histogram(entry, f"{where}.{key}.{outer}.{name}")
                for name, entry in _get(path, table, outer, "object", f"{where}.{key}").items()
            }
            for outer in table
        }

    domains = {}
    for name, obj in raw_domains.items():
        where = f"domains.{name}"
        if not isinstance(obj, dict):
            raise MalformedResultFileError(path, f"{where!r} must be a JSON object, got {obj!r}")
        selection = (
            _get(path, obj, "token_selection", "str", where, nullable=True) if "token_selection" in obj else None
        )
        domains[name] = GateDomainSummary(
            name=name,
            token_selection=selection,
            by_depth=flat(obj, "by_depth", where),
            by_module=flat(obj, "by_module", where),
            by_kind=flat(obj, "by_kind", where),
            by_depth_and_kind=nested(obj, "by_depth_and_kind", where),
            by_depth_and_module=nested(obj, "by_depth_and_module", where),
        )
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    return GatesFile(path, model, tuple(float(e) for e in edges), domains)


# ------------------------------------------------------------------------------------------------
# disel.tradeoff/1
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TradeoffRow:
    """One fine-tuned model: its method, rank (``None`` for full FT), seed and the two scores."""

    method: str
    rank: int | None
    seed: int | None
    ft_score: float
    retention: float


@dataclass(frozen=True)
class TradeoffTable:
    """A ``disel.tradeoff/1`` table (module docstring); ``path`` is ``None`` until written or if built in memory."""

    ft_metric: str
    retention_metric: str
    retention_higher_is_better: bool
    base_retention: float
    base_ft_score: float | None
    rows: tuple[TradeoffRow, ...]
    title: str | None = None
    path: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"schema": TRADEOFF_SCHEMA}
        if self.title is not None:
            result["title"] = self.title
        result.update(
            ft_metric=self.ft_metric,
            retention_metric=self.retention_metric,
            retention_higher_is_better=self.retention_higher_is_better,
            base={"retention": self.base_retention, "ft_score": self.base_ft_score},
            rows=[
                {"method": r.method, "rank": r.rank, "seed": r.seed, "ft_score": r.ft_score, "retention": r.retention}
                for r in self.rows
            ],
        )
        return result

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically (see :func:`write_tradeoff_table`)."""
        return write_tradeoff_table(
            path, ft_metric=self.ft_metric, retention_metric=self.retention_metric,
            retention_higher_is_better=self.retention_higher_is_better, base_retention=self.base_retention,
            base_ft_score=self.base_ft_score, rows=self.rows, title=self.title,
        )  # fmt: skip


def _check_tradeoff(raw: Mapping[str, Any], path: Path) -> TradeoffTable:
    """Validate the dict form of a tradeoff table (``path`` only names it in errors)."""
    title = _get(path, raw, "title", "str", "", nullable=True) if "title" in raw else None
    ft_metric = _get(path, raw, "ft_metric", "str", "")
    retention_metric = _get(path, raw, "retention_metric", "str", "")
    higher = _get(path, raw, "retention_higher_is_better", "bool", "")
    base = _get(path, raw, "base", "object", "")
    base_retention = _get(path, base, "retention", "number", "base")
    base_ft = _get(path, base, "ft_score", "number", "base", nullable=True) if "ft_score" in base else None
    rows = []
    seen: dict[tuple[str, int | None, int | None], int] = {}
    raw_rows = _get(path, raw, "rows", "list", "")
    if not raw_rows:
        raise MalformedResultFileError(path, "'rows' is empty: the table has no fine-tuned model")
    for index, raw_row in enumerate(raw_rows):
        where = f"rows[{index}]"
        if not isinstance(raw_row, dict):
            raise MalformedResultFileError(path, f"{where} must be a JSON object, got {raw_row!r}")
        row = TradeoffRow(
            method=_get(path, raw_row, "method", "str", where),
            rank=_get(path, raw_row, "rank", "int", where, nullable=True),
            seed=_get(path, raw_row, "seed", "int", where, nullable=True),
            ft_score=float(_get(path, raw_row, "ft_score", "number", where)),
            retention=float(_get(path, raw_row, "retention", "number", where)),
        )
        key = (row.method, row.rank, row.seed)
        if key in seen:
            raise MalformedResultFileError(
                path, f"{where} repeats (method, rank, seed) = {key} of rows[{seen[key]}]; each model appears once"
            )
        seen[key] = index
        rows.append(row)
    return TradeoffTable(
        ft_metric, retention_metric, higher, float(base_retention), None if base_ft is None else float(base_ft),
        tuple(rows), title, path,
    )  # fmt: skip


def read_tradeoff_table(path: str | os.PathLike) -> TradeoffTable:
    """Read and check a ``disel.tradeoff/1`` table."""
    path = Path(path)
    raw = load_result_json(path, TRADEOFF_SCHEMA, "written by disel.experiments.schemas.write_tradeoff_table")
    return _check_tradeoff(raw, path)


def write_tradeoff_table(
    path: str | os.PathLike,
    *,
    ft_metric: str,
    retention_metric: str,
    retention_higher_is_better: bool,
    base_retention: float,
    rows: Iterable[TradeoffRow | Mapping[str, Any]],
    base_ft_score: float | None = None,
    title: str | None = None,
) -> Path:
    """Check and write a ``disel.tradeoff/1`` table atomically (:mod:`disel.io`).

    ``rows``: :class:`TradeoffRow` objects or mappings with ``method``, ``rank``, ``seed``, ``ft_score``,
    ``retention``. Raises :class:`MalformedResultFileError` (naming ``path``, nothing written) on a missing
    or mistyped field, a non-finite score or a repeated ``(method, rank, seed)``.
    """
    from disel.io import write_json_atomic

    path = Path(path)
    row_dicts = []
    for row in rows:
        if isinstance(row, TradeoffRow):
            row = {
                "method": row.method,
                "rank": row.rank,
                "seed": row.seed,
                "ft_score": row.ft_score,
                "retention": row.retention,
            }
        row_dicts.append({key: _plain_number(value) for key, value in dict(row).items()})
    raw: dict[str, Any] = {"schema": TRADEOFF_SCHEMA}
    if title is not None:
        raw["title"] = title
    raw.update(
        ft_metric=ft_metric,
        retention_metric=retention_metric,
        retention_higher_is_better=retention_higher_is_better,
        base={"retention": _plain_number(base_retention), "ft_score": _plain_number(base_ft_score)},
        rows=row_dicts,
    )
    table = _check_tradeoff(raw, path)  # refuse to write what the reader would reject
    write_json_atomic(path, table.to_dict())
    return path


def _plain_number(value: Any) -> Any:
    """NumPy / torch scalars as Python numbers (``.item()``), anything else unchanged."""
    if not isinstance(value, (str, bool, int, float, type(None))) and callable(getattr(value, "item", None)):
        return value.item()
    return value


def _selected_row(ft_run: RunResults, retention_run: RunResults, ft_metric: str, retention_metric: str,
                  select: str) -> TradeoffRow:
    """One run's point: its best (ties: the earliest) or last checkpoint by ``ft_metric``, and that
    checkpoint's retention."""
    candidates = ft_run.table.checkpoints
    if not candidates:
        raise MalformedResultFileError(ft_run.table.path, "has no checkpoint rows to select from")
    if select == "best":
        chosen = max(candidates, key=lambda row: (ft_run.table.value(row, ft_metric), -row.step))
    else:
        chosen = candidates[-1]
    retention = retention_run.table.value(retention_run.table.row(chosen.checkpoint), retention_metric)
    info = ft_run.info
    return TradeoffRow(info.method, info.rank, info.seed, ft_run.table.value(chosen, ft_metric), retention)


def tradeoff_table_from_runs(
    run_dirs: Iterable[str | os.PathLike],
    *,
    ft_evaluator: str,
    retention_evaluator: str,
    retention_higher_is_better: bool,
    ft_metric: str = "mean",
    retention_metric: str = "mean",
    select: str = "best",
    ft_metric_name: str | None = None,
    retention_metric_name: str | None = None,
    title: str | None = None,
) -> TradeoffTable:
    """A tradeoff table from training runs and their per-checkpoint tables.

    For each run the checkpoint is the one with the highest ``ft_metric`` in
    ``retention_<ft_evaluator>.json`` (``select="best"``, the paper's protocol; ties: the earliest) or
    the last one (``select="last"``); its retention is ``retention_metric`` of the same checkpoint in
    ``retention_<retention_evaluator>.json``. The base row comes from the tables' ``base`` rows (the
    base fine-tuning score is ``None`` if the fine-tuning tables have none). Method, rank and seed come
    from each run's ``train_result.json``. The metric names default to ``"<evaluator> <metric>"``.

    Returns the table in memory (``path`` None); write it with :meth:`TradeoffTable.write`.
    """
    if select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got select={select!r}")
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    if not run_dirs:
        raise ValueError("run_dirs is empty: no run to put in the table")
    ft_runs = read_runs(run_dirs, ft_evaluator)
    retention_runs = read_runs(run_dirs, retention_evaluator)
    rows = [_selected_row(ft, retention, ft_metric, retention_metric, select) for ft, retention in zip(ft_runs, retention_runs)]
    base_retention = shared_base_value(retention_runs, retention_metric)
    if base_retention is None:
        raise MalformedResultFileError(
            retention_runs[0].table.path,
            "has no base-model row (evaluate_checkpoints(include_base=True)); the table needs the base retention",
        )
    base_ft = shared_base_value(ft_runs, ft_metric)
    table = TradeoffTable(
        ft_metric=ft_metric_name or f"{ft_evaluator} {ft_metric}",
        retention_metric=retention_metric_name or f"{retention_evaluator} {retention_metric}",
        retention_higher_is_better=retention_higher_is_better,
        base_retention=base_retention,
        base_ft_score=base_ft,
        rows=tuple(rows),
        title=title,
    )
    checked = _check_tradeoff(table.to_dict(), Path(f"<tradeoff table from runs {run_dirs[0]}, ...>"))
    return dataclasses.replace(checked, path=None)


# ------------------------------------------------------------------------------------------------
# Command line: build a tradeoff table from runs
# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m disel.experiments.schemas tradeoff --runs-dir DIR --ft-evaluator gsm8k
    --retention-evaluator lm-eval --out tradeoff_llm.json``: :func:`tradeoff_table_from_runs` + write."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m disel.experiments.schemas", description="Result-file tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "tradeoff", help="a disel.tradeoff/1 table from training runs and their per-checkpoint tables"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs-dir", type=Path, help="folder of runs (sub-folders with train_result.json)")
    source.add_argument("--run", type=Path, nargs="+", help="run directories")
    p.add_argument("--ft-evaluator", required=True, help="fine-tuning table: retention_<NAME>.json (e.g. gsm8k)")
    p.add_argument("--ft-metric", default="mean")
    p.add_argument("--retention-evaluator", required=True, help="retention table: retention_<NAME>.json (e.g. lm-eval)")
    p.add_argument("--retention-metric", default="mean")
    p.add_argument(
        "--lower-is-better", action="store_true", help="the retention metric is a perplexity (lower is better)"
    )
    p.add_argument(
        "--select", choices=["best", "last"], default="best", help="checkpoint per run (default: best FT score)"
    )
    p.add_argument("--ft-name", default=None, help="axis name of the fine-tuning score")
    p.add_argument("--retention-name", default=None, help="axis name of the retention score")
    p.add_argument("--title", default=None, help="panel title")
    p.add_argument("--out", type=Path, required=True, help="the table to write (JSON)")
    args = parser.parse_args(argv)
    try:
        run_dirs = args.run if args.run else find_run_dirs(args.runs_dir)
        table = tradeoff_table_from_runs(
            run_dirs, ft_evaluator=args.ft_evaluator, ft_metric=args.ft_metric,
            retention_evaluator=args.retention_evaluator, retention_metric=args.retention_metric,
            retention_higher_is_better=not args.lower_is_better, select=args.select,
            ft_metric_name=args.ft_name, retention_metric_name=args.retention_name, title=args.title,
        )  # fmt: skip
    except ResultFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table.write(args.out)
    print(f"wrote {args.out} ({len(table.rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
