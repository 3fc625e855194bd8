"""Retention through lm-evaluation-harness for models it cannot load itself (it knows nothing of DISeL): we load
base + adapter (:func:`~disel.experiments.models.load_model_for_eval`, not merged) and hand the live
``PeftModel`` to lm-eval's ``HFLM(pretrained=<model>, tokenizer=...)``, which scores it like any HF model.

The paper's retention score is the unweighted mean over 14 zero-shot benchmarks at ``max_length=512`` (Table 10):
:data:`PAPER_RETENTION_SUITE`, naming lm-eval's ``"<metric>,<filter>"`` key to read per task. For the two
generative QA tasks (TriviaQA, NaturalQuestions-Open) the paper's "acc" is ``exact_match,remove_whitespace``.
Local tasks, offline: ``include_path`` to a folder of task YAMLs with ``dataset_path: json`` and
``dataset_kwargs: {data_files: {test: /abs/path.jsonl}}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from pydantic import NonNegativeInt, PositiveInt
from pydantic.dataclasses import dataclass as checked_dataclass

from ..schemas import LmEvalResult


@dataclass(frozen=True)
class Benchmark:
    """One retention benchmark: the lm-eval task (or group), lm-eval's result key ``"<metric>,<filter>"`` to read
    (``"acc_norm,none"``), and what the paper's Table 10 calls that metric."""

    task: str
    metric: str
    paper_metric: str = ""


# Paper, Appendix III.6, Table 10: lm-eval 0.4 task names and result keys, checked against the task YAMLs
# of the installed lm_eval/tasks/ (hellaswag.yaml, winogrande/default.yaml, arc/arc_*.yaml, ...).
PAPER_RETENTION_SUITE: tuple[Benchmark, ...] = (
    Benchmark("hellaswag", "acc_norm,none", "acc_norm"),
    Benchmark("winogrande", "acc,none", "acc"),
    Benchmark("arc_challenge", "acc_norm,none", "acc_norm"),
    Benchmark("arc_easy", "acc_norm,none", "acc_norm"),
    Benchmark("lambada_openai", "acc,none", "acc"),  # perplexity,none is kept alongside in "metrics"
    Benchmark("boolq", "acc,none", "acc"),
    Benchmark("piqa", "acc_norm,none", "acc_norm"),
    Benchmark("triviaqa", "exact_match,remove_whitespace", "acc"),  # generative: exact match
    Benchmark("openbookqa", "acc_norm,none", "acc_norm"),
    Benchmark("sciq", "acc,none", "acc"),
    Benchmark("mmlu", "acc,none", "acc"),  # group of 57 subjects, lm-eval's size-weighted aggregate
    Benchmark("medqa_4options", "acc,none", "acc"),
    Benchmark("commonsense_qa", "acc,none", "acc"),
    Benchmark("nq_open", "exact_match,remove_whitespace", "acc"),  # generative: exact match
)

PRESETS: dict[str, tuple[Benchmark, ...]] = {"paper-retention": PAPER_RETENTION_SUITE}

# For a task named without a metric: the first of these keys its results have.
_DEFAULT_METRIC_ORDER = ("acc,none", "exact_match,strict-match", "exact_match,remove_whitespace", "exact_match,none")


@checked_dataclass
class LmEvalSettings:
    """How to run lm-eval; the defaults are the paper's retention setting (zero-shot, 512 tokens of context).

    ``preset``: a key of :data:`PRESETS`, or ``None`` to use ``tasks`` only. ``tasks``: extra task names, each
    optionally ``"task:metric,filter"`` (default key: ``acc,none`` if present, else an ``exact_match`` key).
    ``batch_size``: requests per forward pass. ``limit``: at most this many documents per task (an int, or a
    fraction < 1), for smoke tests only. ``include_path``: folders of extra task YAMLs; ``include_defaults=False``
    skips indexing lm-eval's own tasks (a local-only run starts faster). ``bootstrap_iters=0`` skips lm-eval's
    (slow, unused) bootstrap standard errors. ``apply_chat_template=False``: the paper uses base-model prompts.
    """

    preset: str | None = "paper-retention"
    tasks: tuple[str, ...] = ()
    num_fewshot: NonNegativeInt = 0
    max_length: PositiveInt = 512
    batch_size: PositiveInt = 8
    limit: int | float | None = None
    include_path: tuple[Any, ...] = ()  # str or os.PathLike; stored as str
    include_defaults: bool = True
    bootstrap_iters: int = 0
    apply_chat_template: bool = False

    def __post_init__(self) -> None:  # after pydantic checked the types and ranges
        self.include_path = tuple(str(p) for p in self.include_path)
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"LmEvalSettings.preset must be one of {sorted(PRESETS)} or None, got {self.preset!r}")
        if self.preset is None and not self.tasks:
            raise ValueError("LmEvalSettings needs a preset or at least one task in tasks")


def resolve_benchmarks(settings: LmEvalSettings) -> list[Benchmark]:
    """The preset's benchmarks followed by ``settings.tasks`` (a task listed twice keeps its first entry)."""
    benchmarks = list(PRESETS[settings.preset]) if settings.preset else []
    for spec in settings.tasks:
        task, _, metric = spec.partition(":")
        if not task:
            raise ValueError(f"task spec {spec!r} has no task name (expected 'task' or 'task:metric,filter')")
        if task not in {b.task for b in benchmarks}:
            benchmarks.append(Benchmark(task, metric))  # metric "" → chosen from the results
    return benchmarks


def run_lm_eval(
    model: torch.nn.Module, tokenizer: Any, settings: LmEvalSettings, *, log_samples: bool = False
) -> dict[str, Any]:
    """lm-eval's raw result dict for ``model`` (any causal LM, e.g. a DISeL ``PeftModel``) on the settings' tasks.

    The model is used as it is (device, dtype, adapters): it is wrapped, not reloaded.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    benchmarks = resolve_benchmarks(settings)
    include = list(settings.include_path) or None
    task_manager = TaskManager(include_path=include, include_defaults=settings.include_defaults)
    missing = [b.task for b in benchmarks if b.task not in task_manager.all_tasks]
    if missing:
        raise ValueError(
            f"lm-eval does not know the tasks {missing}; check the names (lm_eval/tasks/) or add their YAMLs via "
            f"include_path (searched: {include or 'none'}, include_defaults={settings.include_defaults})"
        )
    model.eval()
    wrapped = HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, max_length=settings.max_length
    )
    return lm_eval.simple_evaluate(
        model=wrapped,
        tasks=[b.task for b in benchmarks],
        num_fewshot=settings.num_fewshot,
        limit=settings.limit,
        bootstrap_iters=settings.bootstrap_iters,
        log_samples=log_samples,
        apply_chat_template=settings.apply_chat_template,
        task_manager=task_manager,
    )


def summarize_lm_eval(raw: dict[str, Any], benchmarks: Sequence[Benchmark]) -> dict[str, Any]:
    """Per-benchmark headline values and their unweighted mean, from lm-eval's raw result dict.

    Returns ``{"benchmarks": {task: {"metric", "paper_metric", "value", "metrics", "n_samples"}},
    "mean": float}``; ``metrics`` keeps every numeric result lm-eval reported for the task.
    """
    results = raw["results"]
    n_samples = raw.get("n-samples", {})
    summary: dict[str, Any] = {}
    for benchmark in benchmarks:
        if benchmark.task not in results:
            raise KeyError(f"lm-eval returned no results for task {benchmark.task!r} (got {sorted(results)})")
        metrics = {  # every numeric "<metric>,<filter>" value but the standard errors
            key: float(value)
            for key, value in results[benchmark.task].items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        key = benchmark.metric or next((k for k in _DEFAULT_METRIC_ORDER if k in metrics), "")
        if key not in metrics:
            raise KeyError(
                f"task {benchmark.task!r} has no result {key or '(acc/exact_match)'!r}; it reported {sorted(metrics)}. "
                f"Name the metric as '{benchmark.task}:<metric>,<filter>'"
            )
        count = n_samples.get(benchmark.task, {})
        summary[benchmark.task] = {
            "metric": key,
            "paper_metric": benchmark.paper_metric or key.split(",")[0],
            "value": metrics[key],
            "metrics": metrics,
            "n_samples": count.get("effective") if isinstance(count, dict) else None,
        }
    values = [entry["value"] for entry in summary.values()]
    return {"benchmarks": summary, "mean": sum(values) / len(values) if values else math.nan}


def evaluate_lm_eval(
    model: torch.nn.Module,
    tokenizer: Any,
    settings: LmEvalSettings | None = None,
    *,
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run lm-eval and return the ``disel.lm_eval/1`` record (:class:`~disel.experiments.schemas.LmEvalResult`)."""
    import lm_eval

    settings = settings or LmEvalSettings()
    started = time.perf_counter()
    summary = summarize_lm_eval(run_lm_eval(model, tokenizer, settings), resolve_benchmarks(settings))
    return LmEvalResult(
        model=dict(description or {}),
        settings=asdict(settings),
        lm_eval_version=getattr(lm_eval, "__version__", "unknown"),
        **summary,
        seconds=time.perf_counter() - started,
    ).to_dict()
