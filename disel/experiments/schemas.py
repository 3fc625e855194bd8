"""The result files: one typed class per file, each with a schema version and atomic ``write`` / ``read``.

Every class is a dataclass built on :class:`ResultFile`: pydantic checks a file against the class's field
types (strictly: no string for a number, no NaN), so a missing file, another schema or a missing or mistyped
key fails with one message naming the file, the key's full location and what was expected, before anything
is drawn. ``write`` refuses what ``read`` would reject. Older schema versions listed in ``ACCEPT`` still read;
any other version fails naming the expected one. The module uses no torch.

Reading runs of these files together (run discovery, the tradeoff table from runs) is
:mod:`disel.experiments.tables`. ``paper_figs/README.md`` lists which command writes which file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import AliasPath, ConfigDict, Field, TypeAdapter, ValidationError

from disel.recording import DEPTH_GROUPS

TRAIN_RESULT_SCHEMA = "disel.train_result/2"
"""Version 1 (before recipes composed) also had ``adapter_dir`` (always ``output_dir``); it still reads."""
RETENTION_SCHEMA = "disel.retention/1"
GATES_SCHEMA = "disel.gates/1"

TRAIN_RESULT_FILE = "train_result.json"

# The depth thirds of the gate analysis, in order: the recorder's grouping names.
DEPTH_THIRDS: tuple[str, ...] = DEPTH_GROUPS
# Llama/Mistral projection names in network order, attention first; figures list modules in this order.
MODULE_ORDER: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Strict types, finite numbers: a file with "4" for a rank or NaN for a score is refused, not coerced.
_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


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


def _problem(error: ValidationError) -> str:
    """The first validation error as ``missing key 'rows[1].step'`` or ``'rows[0].rank' must be ...``."""
    first = error.errors()[0]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
    if first["type"] == "missing":
        return f"missing key {where!r}"
    if first["type"] == "value_error":  # a check in __post_init__: its own message
        message = str(first["ctx"]["error"])
        return f"{where!r}: {message}" if where else message
    return f"{where!r}: {first['msg'].lower()}, got {first['input']!r}"


_File = TypeVar("_File", bound="ResultFile")


class ResultFile:
    """Base of the result dataclasses: ``SCHEMA`` is written, older versions in ``ACCEPT`` still read.

    A subclass is a dataclass whose fields are the file's keys (a field ``path`` holds where it was read
    from and is not written); :meth:`_from_file` / :meth:`to_dict` translate where the file's shape differs.
    """

    SCHEMA: ClassVar[str]
    ACCEPT: ClassVar[tuple[str, ...]] = ()
    MADE_BY: ClassVar[str]  # the command that writes the file, for the error messages
    __pydantic_config__ = _STRICT  # nested dataclasses inherit it

    def __init_subclass__(cls, schema: str = "", accept: tuple[str, ...] = (), made_by: str = "", **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if schema:
            cls.SCHEMA, cls.ACCEPT, cls.MADE_BY = schema, accept, made_by

    @classmethod
    def _from_file(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """The file's JSON object as the dataclass's fields (identity unless the shapes differ)."""
        return raw

    @classmethod
    def schema_of(cls, raw: dict[str, Any]) -> Any:
        """The schema a file's JSON object declares: its ``schema`` key."""
        return raw.get("schema")

    def to_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("path", "schema")}
        # Non-finite floats become null (strict JSON has no NaN); the check in write() then refuses them.
        return {"schema": self.SCHEMA, **json.loads(json.dumps(fields, default=_plain), parse_constant=lambda _: None)}

    @classmethod
    def from_dict(cls: type[_File], raw: Mapping[str, Any], path: str | os.PathLike = "<in memory>") -> _File:
        """Validate ``raw`` (a file's JSON object); :class:`MalformedResultFileError` names ``path`` and the key."""
        try:
            data = dict(cls._from_file(dict(raw)))
            if any(f.name == "path" for f in dataclasses.fields(cls)):
                data["path"] = str(path)
            return _adapter(cls).validate_json(json.dumps(data, default=_plain))
        except ValidationError as error:
            raise MalformedResultFileError(path, _problem(error)) from None

    @classmethod
    def read(cls: type[_File], path: str | os.PathLike) -> _File:
        """The file at ``path``, checked to carry ``SCHEMA`` (or a version in ``ACCEPT``) and the class's fields."""
        path, schema = Path(path), cls.SCHEMA
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise MissingResultFileError(path, f"{what}; expected a schema {schema!r} file (written by {cls.MADE_BY})")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            problem = f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
            raise MalformedResultFileError(path, problem) from None
        except UnicodeDecodeError:
            raise MalformedResultFileError(path, "not a UTF-8 text file") from None
        if not isinstance(raw, dict):
            raise MalformedResultFileError(
                path, f"expected a JSON object with schema {schema!r}, got {type(raw).__name__}"
            )
        got = cls.schema_of(raw)
        if got != schema and got not in cls.ACCEPT:
            got = "no 'schema' key" if got is None else f"schema {got!r}"
            raise MalformedResultFileError(path, f"expected schema {schema!r} (written by {cls.MADE_BY}), found {got}")
        return cls.from_dict(raw, path)

    def write(self, path: str | os.PathLike) -> Path:
        """Check (as :meth:`read` would) and write atomically (:mod:`disel.io`); nothing is written on error."""
        from disel.io import write_json_atomic

        raw = self.to_dict()
        type(self).from_dict(raw, path)
        return write_json_atomic(path, raw)


_adapter = functools.cache(TypeAdapter)  # one pydantic validator per result class, built on first use


def _plain(value: Any) -> Any:
    """For ``json.dumps``: dataclasses as dicts, NumPy / torch scalars and arrays as Python numbers and lists,
    anything else as a string."""
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value.tolist() if callable(getattr(value, "tolist", None)) else str(value)


@dataclass
class TrainResult(ResultFile, schema=TRAIN_RESULT_SCHEMA, accept=("disel.train_result/1",), made_by="disel-train"):
    """What one ``train`` call produced: ``train_result.json`` (non-finite floats written as null). Its presence
    means the run finished and the final adapter (or full model) in ``output_dir`` is complete."""

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
    eval: dict[str, float | None]  # final metrics on the validation set (eval_loss, eval_accuracy); {} without one
    loss_history: list[list[float | None]]  # every logged [step, loss], across resumes
    eval_history: list[dict[str, Any]]  # every evaluation log entry, across resumes
    log_history: list[dict[str, Any]]  # the Trainer's state.log_history
    checkpoints: list[dict[str, Any]]  # complete checkpoints left ({"path" in output_dir, "step"}), oldest first
    resumed_from: str | None  # the checkpoint this invocation resumed from
    runtime_s: float  # wall-clock seconds of this invocation
    data: dict[str, Any]  # row and example counts (train_rows, train_examples, train_dropped_no_response ...)
    parameters: dict[str, int]  # trainable and total parameter counts
    parameter_sha256_per_rank: list[str]  # per rank, after training: equal hashes = replicas in sync
    versions: dict[str, Any]  # torch, transformers, peft, accelerate, disel
    finished_at: str  # UTC, ISO 8601
    schema: str = TRAIN_RESULT_SCHEMA
    path: Path | None = field(default=None, compare=False)  # where it was read from

    def __post_init__(self):
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"'config.training.seed' must be an integer or null, got {self.seed!r}")

    @property
    def seed(self) -> int | None:
        """``config.training.seed`` (``None`` if absent)."""
        return (self.config.get("training") or {}).get("seed")

    @property
    def trainer_runtime_s(self) -> float | None:
        """The Trainer's ``train_runtime`` (its last entry in ``log_history``): training alone, without loading
        and saving; None if the log holds none."""
        return next((e["train_runtime"] for e in reversed(self.log_history) if "train_runtime" in e), None)

    @property
    def run_dir(self) -> Path:
        """The folder holding the file (``output_dir`` until written or read)."""
        return Path(self.output_dir) if self.path is None else self.path.parent

    @classmethod
    def _from_file(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {**raw, "schema": TRAIN_RESULT_SCHEMA}  # version 1's extra adapter_dir is ignored

    @classmethod
    def read(cls, path: str | os.PathLike) -> TrainResult:
        """Read ``train_result.json``; ``path`` is the file or the run folder holding it."""
        path = Path(path)
        return super().read(path / TRAIN_RESULT_FILE if path.is_dir() or not path.suffix else path)


@dataclass
class Gsm8kResult(ResultFile, schema="disel.gsm8k/1", made_by="disel-eval gsm8k"):
    """GSM8K exact match of one model: ``exact_match`` (strict ``#### N`` / "The answer is", the paper's number)
    and ``exact_match_flexible`` (last number); ``samples`` per question when kept."""

    exact_match: float
    exact_match_flexible: float
    n: int
    n_no_strict_answer: int
    generation: dict[str, Any]  # GenerationSettings
    seconds: float
    metric: str = "exact_match,strict-match"
    samples: list[dict[str, Any]] | None = None  # index, question, reference, response, predictions, correct
    model: dict[str, Any] | None = None  # the loaded model's description (the command line adds it)
    data: str | None = None  # the JSONL file (the command line adds it)


@dataclass
class HumanEvalResult(ResultFile, schema="disel.humaneval/1", made_by="disel-eval humaneval"):
    """HumanEval pass@1 of one model (greedy, one sample per problem); ``samples``: task_id, response,
    status (``passed`` / ``failed`` / ``timeout``), detail."""

    pass_at_1: Annotated[float, Field(alias="pass@1")]
    n: int
    generation: dict[str, Any]
    metric: str = "pass@1"
    samples: list[dict[str, Any]] | None = None
    model: dict[str, Any] | None = None
    data: str | None = None

    def to_dict(self) -> dict[str, Any]:
        raw = super().to_dict()
        return {"schema": raw.pop("schema"), "metric": raw.pop("metric"), "pass@1": raw.pop("pass_at_1"), **raw}


@dataclass
class PerplexityResult(ResultFile, schema="disel.perplexity/1", made_by="disel-eval perplexity"):
    """Causal-LM perplexity per corpus (``corpora[name]``: perplexity, nll, tokens, texts) and their mean."""

    model: dict[str, Any]
    corpora: dict[str, dict[str, float]]
    mean_perplexity: float


@dataclass
class MlmPerplexityResult(PerplexityResult, schema="disel.mlm_perplexity/1", made_by="disel-eval mlm-perplexity"):
    """Masked-LM pseudo-perplexity per corpus of an encoder (GLUE runs), scored with the pre-trained MLM head."""

    pretrained_mlm: str = ""


@dataclass
class LmEvalResult(ResultFile, schema="disel.lm_eval/1", made_by="disel-eval lm-eval"):
    """lm-eval scores of one model: ``benchmarks[task]`` holds ``metric`` (lm-eval's key), ``paper_metric``,
    ``value``, ``metrics`` (every numeric result) and ``n_samples``; ``mean`` is the unweighted mean of the
    values (the paper's retention)."""

    __pydantic_config__ = ConfigDict(strict=True)  # lm-eval may report NaN for a metric (written as null)

    model: dict[str, Any]
    settings: dict[str, Any]
    lm_eval_version: str
    benchmarks: dict[str, dict[str, Any]]
    mean: float | None
    seconds: float


EVAL_RECORDS: dict[str, type[ResultFile]] = {
    cls.SCHEMA: cls for cls in (Gsm8kResult, HumanEvalResult, PerplexityResult, MlmPerplexityResult, LmEvalResult)
}
"""The evaluation record classes by schema: an evaluator's ``detail`` dict names its class in ``schema``."""


def write_record(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Check and write an evaluation record (a dict with ``schema``) through its typed class."""
    schema = record.get("schema")
    if schema not in EVAL_RECORDS:
        raise ValueError(f"record schema must be one of {sorted(EVAL_RECORDS)}, got {schema!r}")
    return EVAL_RECORDS[schema].from_dict(record, path).write(path)


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
class RetentionTable(ResultFile, schema=RETENTION_SCHEMA, made_by="disel-eval retention"):
    """A ``disel.retention/1`` table: the base model's row (``step 0``, ``checkpoint "base"``), if evaluated,
    and one row per checkpoint, by step. In the file a row is flat: ``{"step", "checkpoint", <columns>, "mean"}``."""

    path: Path = field(compare=False)  # where it was read from
    evaluator: str
    metric_columns: tuple[str, ...]
    rows: tuple[RetentionRow, ...]
    settings: dict[str, Any] = field(default_factory=dict, compare=False)
    output_dir: str | None = field(default=None, compare=False)
    base_path: str | None = field(default=None, compare=False)

    def __post_init__(self):
        if not self.rows:
            raise ValueError("'rows' is empty: no checkpoint was evaluated")
        object.__setattr__(self, "rows", tuple(sorted(self.rows, key=lambda row: (row.step, not row.is_base))))

    @classmethod
    def _from_file(cls, raw: dict[str, Any]) -> dict[str, Any]:
        rows = raw.get("rows")
        if isinstance(rows, list) and all(isinstance(row, dict) for row in rows):
            columns = [*(c for c in raw.get("metric_columns") or () if isinstance(c, str)), "mean"]
            # A flat row as RetentionRow's fields; a missing step or checkpoint stays missing (and is reported).
            rows = [
                {**{k: row[k] for k in ("step", "checkpoint") if k in row}, "values": {c: row.get(c) for c in columns}}
                for row in rows
            ]
        return {**raw, "rows": rows}

    def to_dict(self) -> dict[str, Any]:
        raw = super().to_dict()
        raw["rows"] = [{"step": r.step, "checkpoint": r.checkpoint, **r.values} for r in self.rows]
        return raw

    @property
    def base(self) -> RetentionRow | None:
        return next((row for row in self.rows if row.is_base), None)

    @property
    def checkpoints(self) -> tuple[RetentionRow, ...]:
        return tuple(row for row in self.rows if not row.is_base)

    def value(self, row: RetentionRow, metric: str) -> float:
        """``row``'s ``metric``; raises :class:`MalformedResultFileError` if it is unknown or null."""
        metrics = [*self.metric_columns, "mean"]
        if metric not in metrics:
            raise MalformedResultFileError(
                self.path, f"has no metric {metric!r}; its metrics are {metrics} (evaluator {self.evaluator!r})"
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


@dataclass(frozen=True)
class GateHistogram:
    """Recorded gate values of one group: counts per bin over the file's ``bin_edges`` (the file's key
    ``histogram``), their number (``count`` = tokens × rank components), ``mean`` and ``std``."""

    counts: Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(alias="histogram")]
    count: int
    mean: float
    std: float

    def __post_init__(self):
        if self.count <= 0 or sum(self.counts) != self.count:
            raise ValueError(
                f"histogram adds up to {sum(self.counts)} but count is {self.count} (must be equal and positive)"
            )

    def normalized(self) -> list[float]:
        """Fractions per bin, summing to 1 (the paper's normalised histograms)."""
        return [c / self.count for c in self.counts]


_Histograms = Mapping[str, GateHistogram]


@dataclass(frozen=True)
class GateDomainSummary:
    """The gate summaries of one input domain, grouped as :mod:`disel.experiments.eval.gates` describes."""

    by_depth: _Histograms
    by_module: _Histograms
    by_kind: _Histograms
    by_depth_and_kind: Mapping[str, _Histograms]
    by_depth_and_module: Mapping[str, _Histograms]
    token_selection: str | None = None


@dataclass(frozen=True)
class GatesFile(ResultFile, schema=GATES_SCHEMA, made_by="disel-eval gates"):
    """A ``disel.gates/1`` file: shared ``bin_edges`` and one :class:`GateDomainSummary` per domain; every
    histogram has ``len(bin_edges) - 1`` bins that add up to its ``count`` (> 0)."""

    path: Path = field(compare=False)  # where it was read from
    model: Mapping[str, Any]
    bin_edges: tuple[float, ...]
    domains: Mapping[str, GateDomainSummary]

    def __post_init__(self):
        edges = self.bin_edges
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"'bin_edges' must be an increasing list of at least two numbers, got {list(edges)!r}")
        if not self.domains:
            raise ValueError("'domains' is empty: no domain was recorded")
        for name, summary in self.domains.items():
            for grouping in ("by_depth", "by_module", "by_kind", "by_depth_and_kind", "by_depth_and_module"):
                for key, entry in getattr(summary, grouping).items():
                    for sub_key, histogram in entry.items() if "_and_" in grouping else [(None, entry)]:
                        if len(histogram.counts) != len(edges) - 1:
                            where = f"domains.{name}.{grouping}.{key}" + ("" if sub_key is None else f".{sub_key}")
                            raise ValueError(
                                f"'{where}.histogram' must have {len(edges) - 1} non-negative integers (one per bin)"
                            )

    @classmethod
    def _from_file(cls, raw: dict[str, Any]) -> dict[str, Any]:
        return {**raw, "model": raw.get("model") if isinstance(raw.get("model"), dict) else {}}

    def domain(self, name: str) -> GateDomainSummary:
        if name not in self.domains:
            raise MalformedResultFileError(self.path, f"has no domain {name!r}; its domains are {list(self.domains)}")
        return self.domains[name]

    def group(self, domain: str, grouping: str, key: str, sub_key: str | None = None) -> GateHistogram:
        """One histogram, e.g. ``group("math", "by_depth", "late")`` or
        ``group("math", "by_depth_and_module", "late", "up_proj")``; the error lists what exists."""
        entry, where = getattr(self.domain(domain), grouping), f"domains.{domain}.{grouping}"
        for part in (key,) if sub_key is None else (key, sub_key):
            if part not in entry:
                raise MalformedResultFileError(self.path, f"has no {where}.{part}; present: {list(entry)}")
            entry, where = entry[part], f"{where}.{part}"
        return entry


@dataclass(frozen=True)
class TradeoffRow:
    """One fine-tuned model: its method, rank (``None`` for full FT), seed and the two scores."""

    method: str
    rank: int | None
    seed: int | None
    ft_score: float
    retention: float


@dataclass(frozen=True)
class TradeoffTable(ResultFile, schema="disel.tradeoff/1", made_by="write_tradeoff_table"):
    """A ``disel.tradeoff/1`` table (Figures 2 and 3; format in ``paper_figs/README.md``): axis names, the base
    model's scores (the file's ``base``: ``{"retention", "ft_score"}``) and one row per fine-tuned model, each
    ``(method, rank, seed)`` once; ``path`` is ``None`` until written or if built in memory."""

    ft_metric: str  # name of the fine-tuning score (y axis)
    retention_metric: str  # name of the retention score (x axis)
    retention_higher_is_better: bool  # false for a perplexity
    base_retention: Annotated[float, Field(validation_alias=AliasPath("base", "retention"))]
    base_ft_score: Annotated[float | None, Field(None, validation_alias=AliasPath("base", "ft_score"))]
    rows: tuple[TradeoffRow, ...]
    title: str | None = None
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        if not self.rows:
            raise ValueError("'rows' is empty: the table has no fine-tuned model")
        keys = [(row.method, row.rank, row.seed) for row in self.rows]
        for index, key in enumerate(keys):
            if (first := keys.index(key)) < index:
                raise ValueError(
                    f"rows[{index}] repeats (method, rank, seed) = {key} of rows[{first}]; each model appears once"
                )

    def to_dict(self) -> dict[str, Any]:
        raw = super().to_dict()
        raw["base"] = {"retention": raw.pop("base_retention"), "ft_score": raw.pop("base_ft_score")}
        return raw


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
    """Check and write a ``disel.tradeoff/1`` table atomically; ``rows`` are :class:`TradeoffRow` objects or
    mappings of their fields. A bad value raises :class:`MalformedResultFileError` and writes nothing."""
    raw = {
        "title": title,
        "ft_metric": ft_metric,
        "retention_metric": retention_metric,
        "retention_higher_is_better": retention_higher_is_better,
        "base": {"retention": base_retention, "ft_score": base_ft_score},
        "rows": [row if isinstance(row, TradeoffRow) else dict(row) for row in rows],
    }
    return TradeoffTable.from_dict(raw, path).write(path)


# Readers as functions, for the figure scripts.
read_gates = GatesFile.read
read_tradeoff_table = TradeoffTable.read
