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

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from disel.io import write_json_atomic

from .stats import MatchedDifference, RunPath, choose_levels, matched_differences

__all__ = [
    "COMPRESSION_SCHEMA_VERSION",
    "CompressionResults",
    "LevelResult",
    "load_compression_results",
    "SCHEMA_VERSION",
    "CheckpointRecord",
    "EvidenceResults",
    "Interval",
    "MatchedComparison",
    "RunRecord",
    "compare_arms",
    "load_results",
    "save_results",
]

# Bump when a field changes meaning or is removed; readers refuse other versions instead of misreading them.
SCHEMA_VERSION = 1

RETENTION_KINDS = ("perplexity", "kl")


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _optional_float_map(data: dict[str, Any] | None) -> dict[str, float] | None:
    return None if data is None else {str(k): _float(v) for k, v in data.items()}


@dataclass(frozen=True)
class Interval:
    """A point estimate with a ``confidence`` interval [``low``, ``high``]."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        return cls(_float(data["estimate"]), _float(data["low"]), _float(data["high"]), float(data["confidence"]))


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint of one run (step 0 = the base model, shared by every run).

    ``perplexity`` / ``kl``: text domain → perplexity / mean token KL(p_base ‖ p_checkpoint);
    ``anti_aligned_fraction`` (and ``anti_aligned_by_layer``, layer index → fraction): DISeL only, else None;
    ``gate_means``: DISeL only, domain (``"math"``, ``"english"``, ``"code"``) → mean gate.
    """

    step: int
    exact_match: Interval
    perplexity: dict[str, float]
    kl: dict[str, float]
    anti_aligned_fraction: float | None = None
    anti_aligned_by_layer: dict[int, float] | None = None
    gate_means: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "exact_match": self.exact_match.to_dict(),
            "perplexity": dict(self.perplexity),
            "kl": dict(self.kl),
            "anti_aligned_fraction": self.anti_aligned_fraction,
            # JSON object keys are strings; layer indices come back as ints in from_dict
            "anti_aligned_by_layer": None
            if self.anti_aligned_by_layer is None
            else {str(k): v for k, v in self.anti_aligned_by_layer.items()},
            "gate_means": None if self.gate_means is None else dict(self.gate_means),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointRecord:
        by_layer = data.get("anti_aligned_by_layer")
        fraction = data.get("anti_aligned_fraction")
        return cls(
            step=int(data["step"]),
            exact_match=Interval.from_dict(data["exact_match"]),
            perplexity=_optional_float_map(data["perplexity"]),
            kl=_optional_float_map(data["kl"]),
            anti_aligned_fraction=None if fraction is None else float(fraction),
            anti_aligned_by_layer=None if by_layer is None else {int(k): _float(v) for k, v in by_layer.items()},
            gate_means=_optional_float_map(data.get("gate_means")),
        )

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
    path relative to the results file (``adapter``, or None), and optional timings (``timing``: name →
    seconds or tokens/s)."""

    arm: str
    seed: int
    checkpoints: list[CheckpointRecord]
    correct: np.ndarray
    adapter: str | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        correct = np.asarray(self.correct)
        if correct.dtype != np.bool_:
            if correct.size and not np.isin(correct, (0, 1)).all():
                raise ValueError(f"run {self.arm}/{self.seed}: correct must hold booleans or 0/1")
            correct = correct.astype(bool)
        if correct.ndim != 2 or correct.shape[0] != len(self.checkpoints):
            raise ValueError(
                f"run {self.arm}/{self.seed}: correct must have one row per checkpoint "
                f"({len(self.checkpoints)}), got shape {correct.shape}"
            )
        steps = [c.step for c in self.checkpoints]
        if steps != sorted(set(steps)):
            raise ValueError(f"run {self.arm}/{self.seed}: checkpoint steps must be strictly increasing, got {steps}")
        object.__setattr__(self, "correct", correct)

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "seed": self.seed,
            "adapter": self.adapter,
            "timing": dict(self.timing),
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "correct": ["".join("1" if v else "0" for v in row) for row in self.correct],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        rows = data["correct"]
        for row in rows:
            if set(row) - {"0", "1"}:
                raise ValueError(f"run {data['arm']}/{data['seed']}: a correctness row holds characters other than 0/1")
        correct = np.array([[c == "1" for c in row] for row in rows], dtype=bool)
        if not rows:
            correct = np.zeros((0, 0), dtype=bool)
        return cls(
            arm=str(data["arm"]),
            seed=int(data["seed"]),
            checkpoints=[CheckpointRecord.from_dict(c) for c in data["checkpoints"]],
            correct=correct,
            adapter=data.get("adapter"),
            timing={str(k): _float(v) for k, v in data.get("timing", {}).items()},
        )


@dataclass(frozen=True)
class MatchedComparison:
    """``arm`` minus ``reference_arm`` retention (``kind`` in a ``domain``) at matched exact-match levels."""

    arm: str
    reference_arm: str
    kind: str
    domain: str
    differences: list[MatchedDifference]

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "reference_arm": self.reference_arm,
            "kind": self.kind,
            "domain": self.domain,
            "differences": [d.to_dict() for d in self.differences],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MatchedComparison:
        diffs = [
            MatchedDifference.from_dict({k: (_float(v) if k not in ("replicates",) else int(v)) for k, v in d.items()})
            for d in data["differences"]
        ]
        return cls(str(data["arm"]), str(data["reference_arm"]), str(data["kind"]), str(data["domain"]), diffs)


@dataclass(frozen=True)
class EvidenceResults:
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
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not the supported {SCHEMA_VERSION}")
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
        result: dict[str, list[int]] = {}
        for run in self.runs:
            result.setdefault(run.arm, []).append(run.seed)
        return result

    def runs_of(self, arm: str) -> list[RunRecord]:
        return [run for run in self.runs if run.arm == arm]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "task": self.task,
            "n_test_problems": self.n_test_problems,
            "seeds": self.seeds,  # derived; written for readers of the JSON, ignored on reading
            "base": None if self.base is None else self.base.to_dict(),
            "runs": [run.to_dict() for run in self.runs],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "throughput": self.throughput,
            "recipe": self.recipe,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvidenceResults:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"results schema_version {version!r} cannot be read by this code (it reads {SCHEMA_VERSION})"
            )
        return cls(
            model=str(data["model"]),
            task=str(data["task"]),
            n_test_problems=int(data["n_test_problems"]),
            runs=[RunRecord.from_dict(r) for r in data["runs"]],
            comparisons=[MatchedComparison.from_dict(c) for c in data.get("comparisons", [])],
            base=None if data.get("base") is None else CheckpointRecord.from_dict(data["base"]),
            throughput=data.get("throughput", {}),
            recipe=data.get("recipe", {}),
            schema_version=version,
        )


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


def save_results(results: EvidenceResults, path: str | os.PathLike) -> Path:
    """Write ``results`` as JSON atomically (:func:`disel.io.write_json_atomic`: non-finite numbers as null)."""
    return write_json_atomic(path, results.to_dict(), indent=1)


def load_results(path: str | os.PathLike) -> EvidenceResults:
    """Read a results file written by :func:`save_results` (refuses other schema versions)."""
    with open(path) as handle:
        return EvidenceResults.from_dict(json.load(handle))


# --- Issue 11's compression study (disel.experiments.evidence.compression) ---------------------------------

COMPRESSION_SCHEMA_VERSION = 1


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
    perplexity: dict[str, float]
    kl: dict[str, float]
    correct: str  # one 0/1 character per test problem
    output_change_rms: float | None
    seconds: float
    acceptable: bool

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exact_match": self.exact_match.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LevelResult:
        return cls(
            **{**{k: data[k] for k in cls.__dataclass_fields__}, "exact_match": Interval.from_dict(data["exact_match"])}
        )


@dataclass(frozen=True)
class CompressionResults:
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
    schema_version: int = COMPRESSION_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reference": self.reference.to_dict(), "levels": [r.to_dict() for r in self.levels]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionResults:
        if data.get("schema_version") != COMPRESSION_SCHEMA_VERSION:
            raise ValueError(
                f"compression results schema_version {data.get('schema_version')!r} is not "
                f"the supported {COMPRESSION_SCHEMA_VERSION}"
            )
        return cls(
            **{
                **{k: data[k] for k in cls.__dataclass_fields__ if k in data},
                "reference": LevelResult.from_dict(data["reference"]),
                "levels": [LevelResult.from_dict(r) for r in data["levels"]],
            }
        )


def load_compression_results(path: str | Path) -> CompressionResults:
    return CompressionResults.from_dict(json.loads(Path(path).read_text()))
