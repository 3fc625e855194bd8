"""The evaluators, defined once, each owning its prompt template and stop strings: the standalone ``disel-eval``
commands and ``disel-eval retention`` (every checkpoint of a run) call the same objects, so the two give the same
number on the same checkpoint."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..config import ConfigError, DataConfig, read_mapping
from ..data.templates import DEFAULT_TEMPLATE
from ..models import LoadedModel
from ..schemas import PerplexityResult
from ..train.checkpoints import RUN_CONFIG_FILE
from .generation import GenerationSettings, evaluate_gsm8k, evaluate_humaneval
from .lm_eval_bridge import LmEvalSettings, evaluate_lm_eval
from .perplexity import causal_lm_perplexity


@dataclass
class EvalOutcome:
    """One evaluation: ``metrics`` (table columns → value), ``mean`` (the row's headline number) and
    ``detail`` (the evaluator's full JSON record, saved next to the table)."""

    metrics: dict[str, float]
    mean: float
    detail: dict[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    name: str

    def settings(self) -> dict[str, Any]: ...

    def __call__(self, loaded: LoadedModel) -> EvalOutcome: ...


@dataclass
class LmEvalEvaluator:
    """Columns: one per benchmark (its headline metric); mean: their unweighted mean (the paper's retention)."""

    lm_eval: LmEvalSettings = field(default_factory=LmEvalSettings)
    name: str = "lm-eval"

    def settings(self) -> dict[str, Any]:
        return asdict(self.lm_eval)

    def __call__(self, loaded: LoadedModel) -> EvalOutcome:
        record = evaluate_lm_eval(loaded.model, loaded.tokenizer, self.lm_eval, description=loaded.description)
        metrics = {task: entry["value"] for task, entry in record["benchmarks"].items()}
        return EvalOutcome(metrics, record["mean"], record)


@dataclass
class PerplexityEvaluator:
    """Columns: perplexity of each named corpus (``corpora``: column name → texts); mean: their unweighted mean.
    The texts are part of the settings by count only."""

    corpora: dict[str, Sequence[str]]
    max_length: int = 512
    stride: int | None = None
    batch_size: int = 8
    name: str = "perplexity"

    def __post_init__(self) -> None:
        if not self.corpora:
            raise ValueError("PerplexityEvaluator.corpora is empty: name at least one corpus of texts")

    def settings(self) -> dict[str, Any]:
        corpora = {name: len(texts) for name, texts in self.corpora.items()}
        return dict(corpora=corpora, max_length=self.max_length, stride=self.stride, batch_size=self.batch_size)

    def __call__(self, loaded: LoadedModel) -> EvalOutcome:
        window = dict(max_length=self.max_length, stride=self.stride, batch_size=self.batch_size)
        per_corpus = {
            name: causal_lm_perplexity(loaded.model, loaded.tokenizer, texts, **window)
            for name, texts in self.corpora.items()
        }
        metrics = {name: result["perplexity"] for name, result in per_corpus.items()}
        mean = sum(metrics.values()) / len(metrics)
        return EvalOutcome(metrics, mean, PerplexityResult(dict(loaded.description), per_corpus, mean).to_dict())


@dataclass
class Gsm8kEvaluator:
    """Column ``exact_match`` (strict, the paper's number) and ``exact_match_flexible``; mean: strict exact match."""

    rows: Sequence[dict[str, Any]]
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    template: str = DEFAULT_TEMPLATE  # the training run's; its stop strings end the answers unless ``generation`` does
    name: str = "gsm8k"

    def settings(self) -> dict[str, Any]:
        generation = asdict(self.generation.for_template(self.template))
        return dict(rows=len(self.rows), template=self.template, generation=generation)

    def __call__(self, loaded: LoadedModel) -> EvalOutcome:
        record = evaluate_gsm8k(
            loaded.model, loaded.tokenizer, self.rows, settings=self.generation, template=self.template
        )
        record["model"] = loaded.description
        metrics = {key: record[key] for key in ("exact_match", "exact_match_flexible")}
        return EvalOutcome(metrics, record["exact_match"], record)


@dataclass
class HumanEvalEvaluator:
    """Column ``pass@1`` (greedy, one sample per problem; Figure 9's FT accuracy) and mean: pass@1. The code runs,
    so ``allow_code_execution`` must be True (:func:`~disel.experiments.eval.generation.evaluate_humaneval`)."""

    problems: Sequence[dict[str, Any]]
    allow_code_execution: bool = False
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    template: str = "magicoder"  # its stop strings end the answers unless ``generation`` sets them
    timeout_s: float = 10.0
    name: str = "humaneval"

    def settings(self) -> dict[str, Any]:
        generation = asdict(self.generation.for_template(self.template))
        return dict(
            problems=len(self.problems), template=self.template, timeout_s=self.timeout_s, generation=generation
        )

    def __call__(self, loaded: LoadedModel) -> EvalOutcome:
        record = evaluate_humaneval(
            loaded.model,
            loaded.tokenizer,
            self.problems,
            allow_code_execution=self.allow_code_execution,
            settings=self.generation,
            template=self.template,
            timeout_s=self.timeout_s,
        )
        record["model"] = loaded.description
        return EvalOutcome({"pass@1": record["pass@1"]}, record["pass@1"], record)


def training_template(path: str | os.PathLike | None) -> str | None:
    """The ``data.template`` a training run was trained with, read from the ``run_config.yaml`` it saved: ``path``
    is the run's output folder or one of its ``checkpoint-*`` folders. None when ``path`` is None or neither
    folder holds the file (a model not trained here): the caller then names the template."""
    if path is None:
        return None
    for saved in (Path(path) / RUN_CONFIG_FILE, Path(path).parent / RUN_CONFIG_FILE):
        if saved.is_file():
            try:
                return DataConfig.model_validate(read_mapping(saved).get("data", {})).template
            except ValueError as error:  # pydantic's ValidationError is a ValueError
                raise ConfigError(f"{saved}: cannot read data.template: {error}") from None
    return None
