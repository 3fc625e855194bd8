"""The intermediate files of a study, typed: what each stage writes and the next reads (:mod:`.stages`, :mod:`.run`).

Each is a :class:`~disel.experiments.schemas.ResultFile`, so a stale or hand-edited file fails on reading with
one message naming the file and the key. Files written before these had a ``schema`` key still read (a study
resumes from them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schemas import ResultFile

__all__ = [
    "ArmThroughput",
    "BaseScores",
    "CheckpointEval",
    "DataManifest",
    "FinalRecord",
    "PhaseScores",
    "SelectionScores",
    "Throughput",
    "plain",
]

_UNVERSIONED = (None,)  # files of a study run before the records were typed carry no schema key


@dataclass(frozen=True)
class _Record(ResultFile):
    """A study's file: ``path`` is where it was read from (not written; keyword-only, so it follows every field)."""

    path: Path | None = field(default=None, compare=False, kw_only=True)


@dataclass(frozen=True)
class DataManifest(_Record, schema="disel.study.data/1", accept=_UNVERSIONED, made_by="disel-study"):
    """``data/manifest.json``: the problem files, the held-out problems' rows and the retention texts per domain."""

    train_file: str
    test_file: str
    test_rows: list[dict[str, str]]  # {"instruction", "output", "answer"} per held-out problem
    retention: dict[str, list[str]]  # domain → texts (perplexity and KL are scored on them)
    settings: dict[str, Any] | None = None  # the recipe's problems and retention settings they were made with


@dataclass(frozen=True)
class CheckpointEval(_Record, schema="disel.study.eval/1", accept=_UNVERSIONED, made_by="disel-study"):
    """One model's evaluation: ``base.json`` (the base model, step 0) and ``runs/<run>/eval/step-<N>.json``.

    ``correct``: 0/1 per held-out problem (greedy exact match, whose mean is ``exact_match``); ``perplexity``
    and ``kl`` (to the base; 0 for the base itself) per retention domain; for DISeL the anti-aligned fraction
    (overall, per layer, the smallest cosine) and the mean gate per domain; seconds spent. ``texts``: per domain the
    per-text sums of the KL and NLL passes (:class:`~.task_kl.PerTextForgetting`, ``base_nll_sums`` left out: the
    base record's ``nll_sums``), so intervals can resample texts (issue 17); ``kl`` and ``perplexity`` then also
    hold the ``task`` domain when the recipe scores the task's own prompts (``evaluation.task_prompts``)."""

    correct: list[int]
    exact_match: float
    perplexity: dict[str, float]
    kl: dict[str, float]
    generation_s: float
    longest_response_chars: int
    seconds: float
    step: int = 0
    anti_aligned_fraction: float | None = None
    anti_aligned_by_layer: dict[str, float] | None = None  # layer index (a JSON key) → fraction
    min_cosine: float | None = None
    gate_means: dict[str, float] | None = None
    texts: dict[str, dict[str, list[float]]] | None = None  # domain → per text: kl_sums, nll_sums, tokens
    retention_s: float | None = None  # of ``seconds``: the KL and perplexity passes


@dataclass(frozen=True)
class ArmThroughput:
    """One arm's measured training speed against this machine's FLOP limit (:mod:`.throughput_stage`)."""

    tokens_per_s: float | None  # None: the Trainer logged no runtime
    flop_limit_tokens_per_s: float
    fraction_of_flop_limit: float | None
    mean_padded_length: float
    padding_fraction: float
    step_flops: dict[str, Any]
    run: str  # the run measured


@dataclass(frozen=True)
class Throughput(_Record, schema="disel.study.throughput/1", accept=_UNVERSIONED, made_by="disel-study"):
    """``throughput.json``: the measured matmul throughput and each trained arm's :class:`ArmThroughput`."""

    matmul: dict[str, Any]
    arms: dict[str, ArmThroughput]


def plain(record: ResultFile) -> dict[str, Any]:
    """A record's fields as a plain dict (no ``path``, no schema key), e.g. for embedding in ``results.json``."""
    return {k: v for k, v in dataclasses.asdict(record).items() if k != "path"}


# The continual study's records (:mod:`.continual_run` writes them, :mod:`.continual_results` reads them).
_MADE_BY = "disel-study (continual)"


@dataclass(frozen=True)
class PhaseScores(_Record, schema="disel.study.continual_phase/1", made_by=_MADE_BY):
    """``scores.json`` of one phase: 0/1 per test row of each scored task (a row of the accuracy matrix)."""

    arm: str
    seed: int
    order: str
    phase: int
    task: str  # the task trained in this phase ("multitask": all of them)
    learning_rate: float
    steps: int
    train_loss: float | None
    train_s: float
    score_s: float
    correct: dict[str, list[int]]
    shared_from: str | None = None  # the order whose identical phase this copies (train_s, score_s: 0 here)


@dataclass(frozen=True)
class SelectionScores(_Record, schema="disel.study.continual_selection/1", made_by=_MADE_BY):
    """``selection/<method>-lr<rate>.json``: held-out label accuracy of one candidate learning rate."""

    method: str
    learning_rate: float
    task: str
    accuracy: float
    correct: list[int]
    train_loss: float | None
    train_s: float
    score_s: float


@dataclass(frozen=True)
class BaseScores(_Record, schema="disel.study.continual_base/1", made_by=_MADE_BY):
    """``base.json``: the base model's test rows per task (the accuracy before any training)."""

    correct: dict[str, list[int]]


@dataclass(frozen=True)
class FinalRecord(_Record, schema="disel.study.continual_final/1", made_by=_MADE_BY):
    """``final.json`` of an (arm, seed, order) after its last phase: KL to the base and perplexity per retention
    domain; for DISeL ``gates``: :func:`~.continual_run.gate_table`."""

    kl: dict[str, float]
    perplexity: dict[str, float]
    gates: dict[str, Any] | None
    seconds: float
