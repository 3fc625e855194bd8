"""The results file of the evidence experiment (issue 9): typed, versioned, written atomically.

One :class:`EvidenceResults` holds everything the README table, the figures and a re-analysis need:

* per arm and training seed (:class:`RunRecord`), the checkpoint path: step, exact match with its
  interval, perplexity and KL to the base model per text domain (``"english"``, ``"code"``), and for
  DISeL the anti-aligned fraction and mean gate per domain (:class:`CheckpointRecord`);
* per run, the per-problem correctness of every checkpoint, so the bootstrap can be redone;
* the matched-accuracy differences with intervals (:class:`MatchedComparison`);
* the number of test problems, and (derived) the seeds of each arm.

JSON has no NaN: non-finite floats are written as ``null`` and read back as NaN. Correctness rows are
stored as strings of ``0``/``1`` (one character per test problem).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, ConfigDict, PlainValidator

from ..schemas import ResultFile
from .stats import MatchedDifference, RunPath, choose_levels, matched_differences

# Bump when a field changes meaning or is removed; readers refuse other versions instead of misreading them.
SCHEMA_VERSION = "disel.evidence/2"
""":class:`EvidenceResults`' schema. Version 1 files (``"schema_version": 1``, the evidence files' own key
before every result file said ``schema``) still read: only the key changed."""

RETENTION_KINDS = ("perplexity", "kl")


def _nan_for_null(value: Any) -> Any:
    """null, how a NaN is written (JSON has no NaN), as NaN: a value, or each value of a record."""
    if isinstance(value, dict):
        return {key: _nan_for_null(item) for key, item in value.items()}
    return math.nan if value is None else value


Number = Annotated[float, BeforeValidator(_nan_for_null)]


def _correctness(rows: Any) -> np.ndarray:
    """The file's correctness rows (one string of 0/1 characters per checkpoint) as a boolean array."""
    if not isinstance(rows, list) or not all(isinstance(row, str) and set(row) <= {"0", "1"} for row in rows):
        raise ValueError("correct must be a list of strings of 0/1 characters (one per checkpoint)")
    return np.array([[c == "1" for c in row] for row in rows], dtype=bool) if rows else np.zeros((0, 0), bool)


class _EvidenceFile(ResultFile):
    """A results file of the evidence experiments; values are coerced as ``float()`` / ``int()`` would."""

    __pydantic_config__ = ConfigDict()  # lax, and NaN allowed (null reads back as NaN where a number is expected)

    @classmethod
    def schema_of(cls, raw: dict[str, Any]) -> Any:
        """``schema``, or for a file written before it was the one key, ``"<name>/1"`` from its
        ``"schema_version": 1``."""
        if "schema" not in raw and "schema_version" in raw:
            return f"{cls.SCHEMA.rpartition('/')[0]}/{raw['schema_version']}"
        return raw.get("schema")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a ``confidence`` interval [``low``, ``high``]."""

    estimate: Number
    low: Number
    high: Number
    confidence: float = 0.95


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint of one run (step 0 = the base model, shared by every run).

    ``perplexity`` / ``kl``: text domain → perplexity / mean token KL(p_base ‖ p_checkpoint);
    ``anti_aligned_fraction`` (and ``anti_aligned_by_layer``, layer index → fraction): DISeL only, else None;
    ``gate_means``: DISeL only, domain (``"math"``, ``"english"``, ``"code"``) → mean gate.
    """

    step: int
    exact_match: Interval
    perplexity: dict[str, Number]
    kl: dict[str, Number]
    anti_aligned_fraction: float | None = None
    anti_aligned_by_layer: dict[int, Number] | None = None  # the file's keys are strings
    gate_means: dict[str, Number] | None = None

    def retention(self, kind: str, domain: str) -> float:
        """``perplexity[domain]`` or ``kl[domain]`` (``kind`` in :data:`RETENTION_KINDS`)."""
        if kind not in RETENTION_KINDS:
            raise ValueError(f"kind must be one of {RETENTION_KINDS}, got {kind!r}")
        values = self.perplexity if kind == "perplexity" else self.kl
        if domain not in values:
            raise ValueError(f"no {kind} for domain {domain!r} at step {self.step} (have {sorted(values)})")
        return values[domain]


@dataclass(frozen=True)
class RunRecord:
    """One training run: ``arm`` (e.g. ``"lora"``, ``"disel_paper"``), ``seed``, its checkpoints in step
    order, ``correct`` ((checkpoints, problems) correctness, one row per checkpoint), the final adapter's
    folder (``adapter``, or None; relative to the source checkout: :func:`~disel.experiments.models.portable_path`),
    and optional timings (``timing``: name → seconds or tokens/s)."""

    arm: str
    seed: int
    checkpoints: list[CheckpointRecord]
    correct: Annotated[np.ndarray, PlainValidator(_correctness)]
    adapter: str | None = None
    timing: dict[str, Number] = field(default_factory=dict)

    def __post_init__(self) -> None:
        correct = np.asarray(self.correct)
        if correct.dtype != np.bool_ and not np.isin(correct, (0, 1)).all():
            raise ValueError(f"run {self.arm}/{self.seed}: correct must hold booleans or 0/1")
        if correct.ndim != 2 or correct.shape[0] != len(self.checkpoints):
            raise ValueError(
                f"run {self.arm}/{self.seed}: correct must have one row per checkpoint "
                f"({len(self.checkpoints)}), got shape {correct.shape}"
            )
        steps = [c.step for c in self.checkpoints]
        if steps != sorted(set(steps)):
            raise ValueError(f"run {self.arm}/{self.seed}: checkpoint steps must be strictly increasing, got {steps}")
        object.__setattr__(self, "correct", correct.astype(bool))

    @property
    def num_problems(self) -> int:
        return self.correct.shape[1]

    def path(self, kind: str, domain: str) -> RunPath:
        """The run's (exact match, retention) path for :func:`~.stats.matched_differences`."""
        return RunPath(
            steps=np.array([c.step for c in self.checkpoints]),
            correct=self.correct,
            retention=np.array([c.retention(kind, domain) for c in self.checkpoints]),
        )


@dataclass(frozen=True)
class MatchedComparison:
    """``arm`` minus ``reference_arm`` retention (``kind`` in a ``domain``) at matched exact-match levels."""

    arm: str
    reference_arm: str
    kind: str
    domain: str
    differences: list[Annotated[MatchedDifference, BeforeValidator(_nan_for_null)]]


@dataclass(frozen=True)
class EvidenceResults(_EvidenceFile, schema=SCHEMA_VERSION, accept=("disel.evidence/1",), made_by="disel-study"):
    """The whole experiment. ``model``: the base model's name; ``task``: the fine-tuning task;
    ``n_test_problems``: held-out problems every checkpoint is scored on; ``base``: the base model's own
    evaluation (shared by all runs); ``runs``; ``comparisons``; ``throughput``: e.g. measured matmul
    GFLOP/s and step FLOPs (free-form); ``recipe``: the configuration the experiment ran (free-form)."""

    model: str
    task: str
    n_test_problems: int
    runs: list[RunRecord]
    comparisons: list[MatchedComparison] = field(default_factory=list)
    base: CheckpointRecord | None = None
    throughput: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_test_problems < 1:
            raise ValueError(f"n_test_problems must be positive, got {self.n_test_problems}")
        seen = set()
        for run in self.runs:
            if (run.arm, run.seed) in seen:
                raise ValueError(f"two runs of arm {run.arm!r} with seed {run.seed}")
            seen.add((run.arm, run.seed))
            if run.checkpoints and run.num_problems != self.n_test_problems:
                raise ValueError(
                    f"run {run.arm}/{run.seed} is scored on {run.num_problems} problems, "
                    f"n_test_problems is {self.n_test_problems}"
                )

    @property
    def seeds(self) -> dict[str, list[int]]:
        """Arm → its training seeds, in run order."""
        return {arm: [run.seed for run in self.runs_of(arm)] for arm in dict.fromkeys(run.arm for run in self.runs)}

    def runs_of(self, arm: str) -> list[RunRecord]:
        return [run for run in self.runs if run.arm == arm]

    def to_dict(self) -> dict[str, Any]:
        raw = super().to_dict()
        for run in raw["runs"]:  # correctness as one string of 0/1 characters per checkpoint
            run["correct"] = ["".join("1" if value else "0" for value in row) for row in run["correct"]]
        return {**raw, "seeds": self.seeds}  # seeds: derived, for readers of the JSON, ignored on reading


def compare_arms(
    runs: list[RunRecord],
    arm: str,
    reference_arm: str,
    kind: str,
    domain: str,
    rng: np.random.Generator,
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75),
    replicates: int = 2000,
) -> MatchedComparison:
    """``arm`` minus ``reference_arm`` retention at exact-match levels every run of both arms crosses
    (:func:`~.stats.choose_levels` at ``fractions``), with bootstrap intervals over problems and seeds.

    The comparison has no differences when the arms share no exact-match range.
    """
    ours = [run.path(kind, domain) for run in runs if run.arm == arm]
    theirs = [run.path(kind, domain) for run in runs if run.arm == reference_arm]
    if not ours or not theirs:
        raise ValueError(
            f"no runs of arm {arm!r} or of reference_arm {reference_arm!r} "
            f"(arms present: {sorted({run.arm for run in runs})})"
        )
    levels = choose_levels([*ours, *theirs], fractions)
    differences = matched_differences(ours, theirs, levels, rng, replicates=replicates) if levels.size else []
    return MatchedComparison(arm, reference_arm, kind, domain, differences)


save_results = EvidenceResults.write  # (results, path): checked, written atomically, non-finite numbers as null
load_results = EvidenceResults.read


# --- Issue 11's compression study (disel.experiments.study.compression) ---------------------------------

COMPRESSION_SCHEMA_VERSION = "disel.evidence_compression/2"  # version 1: "schema_version": 1, as above


@dataclass(frozen=True)
class LevelResult:
    """One evaluated model: ``operation`` (``reference`` = the unpruned adapter) at ``level`` (fraction of
    components removed for pruning, gate-std threshold for merging); ``fraction_reduced`` = components
    removed or folded / all; ``gated_components`` and ``adapter_parameters`` left; the evaluation; the
    output change measured by the operation on the statistics data (relative rms, None for the reference);
    ``acceptable`` by the module's criterion."""

    operation: str
    level: float
    fraction_reduced: float
    gated_components: int
    adapter_parameters: int
    exact_match: Interval
    perplexity: dict[str, Number]
    kl: dict[str, Number]
    correct: str  # one 0/1 character per test problem
    output_change_rms: float | None
    seconds: float
    acceptable: bool


@dataclass(frozen=True)
class CompressionResults(
    _EvidenceFile,
    schema=COMPRESSION_SCHEMA_VERSION,
    accept=("disel.evidence_compression/1",),
    made_by="disel-study (a compression recipe)",
):
    """The whole study: inputs, the acceptance ``criterion``, the reference and every level, the largest
    acceptable ``fraction_reduced`` per operation (``best``), the timing (free-form), and the evidence run's
    own evaluation of this adapter's final checkpoint (``evidence_final``, when found) for comparison."""

    adapter: str
    base_model: str
    evidence_dir: str
    total_components: int
    criterion: dict[str, float]
    reference: LevelResult
    levels: list[LevelResult]
    best: dict[str, float | None]
    timing: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    evidence_final: dict[str, Any] | None = None


load_compression_results = CompressionResults.read
