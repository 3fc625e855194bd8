"""The export stage: a study's per-checkpoint records as the files ``paper_figs`` reads (recipe ``export:``).

* per trained run, ``runs/<arm>-seed<k>/retention_{perplexity,kl,gsm8k}.json`` (``disel.retention/1``: the
  base row, then one row per checkpoint; columns ``english`` and ``code``, or ``exact_match``), next to the
  run's ``train_result.json``, so ``--runs-dir <out>/runs`` draws Figures 6 and 7;
* ``tradeoff_llm_english.json`` and ``tradeoff_llm_code.json`` (``disel.tradeoff/1``, Figure 3): exact match
  against perplexity at every run's final checkpoint;
* ``gates_math.json`` (``disel.gates/1``, Figures 4, 5, 10, 11): the final checkpoint of ``export.gates_arm``'s
  first seed, on math / English / code as the gate means are measured (:mod:`.stages`).

Everything is rewritten from the records on every call (cheap; no model is loaded). A recipe with a ``frontier``
section also gets :func:`export_frontier`: ``frontier.json`` (``disel.frontier/1``: every point with per-problem
and per-text values, the cross-fitted front differences, best accuracies and the task-KL proxy fits) and
``frontier.md``, which ``python -m paper_figs.run_all --frontier frontier.json`` draws.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from disel.io import write_text_atomic

from ..models import SMOLLM2_NAME, portable_base_name, portable_paths
from ..schemas import RETENTION_SCHEMA, RetentionTable, TradeoffRow, TrainResult, write_tradeoff_table
from .aggregate import checkpoint_evals
from .config import RunSpec, StudyConfig
from .frontier_results import FrontierResults, PointRun, TextRecord, analyse_frontier, frontier_summary
from .fronts import FrontSettings
from .records import CheckpointEval
from .stages import DOMAINS

__all__ = ["export_for_figures", "export_frontier", "frontier_results", "refresh_frontier"]

_TEXT = {"english": "general English", "code": "Python code"}


def _retention_table(
    spec: RunSpec, base: CheckpointEval, records: list[CheckpointEval], evaluator: str, columns: dict
) -> Path:
    """``retention_<evaluator>.json`` of one run; ``columns``: column name → function of a record."""
    rows = []
    for step, checkpoint, record in [(0, "base", base), *((r.step, f"checkpoint-{r.step}", r) for r in records)]:
        values = {name: value(record) for name, value in columns.items()}
        rows.append({"step": step, "checkpoint": checkpoint, **values, "mean": sum(values.values()) / len(values)})
    raw = {
        "schema": RETENTION_SCHEMA,
        "evaluator": evaluator,
        "metric_columns": list(columns),
        "rows": rows,
        "settings": {"made_by": "disel-study export", "run": spec.label},
        "output_dir": str(spec.run_dir),
    }
    path = spec.run_dir / f"retention_{evaluator}.json"
    return RetentionTable.from_dict(raw, path).write(path)


def export_for_figures(config: StudyConfig, specs: list[RunSpec], out: Path, base: CheckpointEval) -> list[Path]:
    """Write the module docstring's files; returns their paths. FileNotFoundError if the gate record is missing."""
    written, finals = [], []
    for spec in specs:
        records = checkpoint_evals(spec)
        finals.append((spec, records[-1]))
        if spec.arm_config.from_arm is not None:
            continue  # no train_result.json of its own: the figures of runs read only trained runs
        for evaluator, columns in (
            ("perplexity", {d: (lambda r, d=d: r.perplexity[d]) for d in DOMAINS}),
            ("kl", {d: (lambda r, d=d: r.kl[d]) for d in DOMAINS}),
            ("gsm8k", {"exact_match": lambda r: r.exact_match}),
        ):
            written.append(_retention_table(spec, base, records, evaluator, columns))
    for domain in DOMAINS:
        rows = [
            TradeoffRow(*_method_and_rank(spec), spec.seed, final.exact_match, final.perplexity[domain])
            for spec, final in finals
        ]
        written.append(
            write_tradeoff_table(
                out / f"tradeoff_llm_{domain}.json",
                ft_metric="exact match (held-out arithmetic)",
                retention_metric=f"perplexity ({_TEXT[domain]})",
                retention_higher_is_better=False,
                base_retention=base.perplexity[domain],
                base_ft_score=base.exact_match,
                title=f"retention on {_TEXT[domain]}",
                rows=rows,
            )
        )
    gates_spec, final = next((spec, final) for spec, final in finals if spec.arm == config.export.gates_arm)
    source = gates_spec.run_dir / "gates" / f"step-{final.step}.json"
    if not source.is_file():
        raise FileNotFoundError(f"export.gates_arm={config.export.gates_arm!r}: {source} is missing (not a DISeL arm?)")
    written.append(Path(shutil.copy2(source, out / "gates_math.json")))
    return written


def _method_and_rank(spec: RunSpec) -> tuple[str, int | None]:
    """A tradeoff row's method (a post-hoc arm: its arm's name) and rank (full fine-tuning: none)."""
    method = spec.config.method.name
    return spec.arm if spec.arm_config.from_arm else method, None if method == "full" else spec.config.method.r


def frontier_results(config: StudyConfig, specs: list[RunSpec], base: CheckpointEval) -> FrontierResults:
    """Every run of an arm in ``frontier.methods`` with at least one evaluated checkpoint as a
    :class:`~.frontier_results.PointRun`: the base (``base.json``) as step 0, then its checkpoints, with
    per-problem correctness and per-text sums on every domain the records hold (English, code, task)."""
    if base.texts is None:
        raise ValueError(f"{base.path}: no per-text sums (written before the runner recorded them): delete it to redo")
    runs, several_lengths = [], len({spec.config.training.max_steps for spec in specs}) > 1
    for spec in specs:
        method, evals = config.frontier.method_of(spec.arm), checkpoint_evals(spec)
        if method is None or not evals:
            continue
        records = [base, *evals]
        texts = {
            domain: TextRecord(
                tokens=[float(t) for t in base.texts[domain]["tokens"]],  # as read back from a file
                kl_sums=[r.texts[domain]["kl_sums"] for r in records],
                nll_sums=[r.texts[domain]["nll_sums"] for r in records],
            )
            for domain in base.texts
        }
        runs.append(
            PointRun(
                method=method,
                configuration=spec.arm,
                seed=spec.seed,
                steps=[r.step for r in records],
                correct=["".join(str(c) for c in r.correct) for r in records],
                texts=texts,
                settings=_frontier_settings(spec, several_lengths),
                source=spec.arm_config.from_arm,
                timing=_frontier_timing(spec, evals),
            )
        )
    return FrontierResults(
        model=portable_base_name(specs[0].config.model.path),
        task="arithmetic word problems (exact match)",
        n_test_problems=len(base.correct),
        runs=runs,
        recipe=portable_paths(config.model_dump(mode="json")),
    )


def _frontier_settings(spec: RunSpec, with_steps: bool) -> dict[str, float]:
    """The numbers behind a configuration: its (source's) learning rate, its training steps ``max_steps`` if
    ``with_steps`` (the study trains arms for different lengths), DISeL's gate learning-rate ratio, and a post-hoc
    arm's numeric transform parameters."""
    settings = {"learning_rate": float(spec.config.training.learning_rate)}
    if with_steps:
        settings["max_steps"] = float(spec.config.training.max_steps)
    if spec.is_disel and spec.config.method.gate_lr_ratio is not None:  # None: DiselConfig's default
        settings["gate_lr_ratio"] = float(spec.config.method.gate_lr_ratio)
    for name, value in spec.arm_config.transform_params.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            settings[name] = float(value)
    return settings


def _frontier_timing(spec: RunSpec, evals: list[CheckpointEval]) -> dict[str, float]:
    """Where the run's time went, in seconds: training (its source's, for a post-hoc arm), generation and the
    KL / perplexity passes summed over its evaluations, and their whole."""
    train = TrainResult.read(spec.source_dir)
    return {
        "train_s": 0.0 if spec.arm_config.from_arm else float(train.trainer_runtime_s or train.runtime_s),
        "train_steps": float(train.global_step),
        "generation_s": float(sum(r.generation_s for r in evals)),
        "retention_s": float(sum(r.retention_s or 0.0 for r in evals)),
        "eval_s": float(sum(r.seconds for r in evals)),
    }


def export_frontier(config: StudyConfig, specs: list[RunSpec], out: Path, base: CheckpointEval) -> FrontierResults:
    """``frontier.json`` (every point, analysed: :func:`~.frontier_results.analyse_frontier` on the pairs of
    methods that have runs) and ``frontier.md`` (:func:`~.frontier_results.frontier_summary`)."""
    settings = config.frontier
    results = frontier_results(config, specs, base)
    present = set(results.methods)
    pairs = [tuple(pair) for pair in settings.pairs if set(pair) <= present]
    front = FrontSettings(replicates=settings.replicates, fractions=tuple(settings.fractions))
    results = analyse_frontier(results, pairs, seed=settings.seed, settings=front)
    results.write(out / "frontier.json")
    write_text_atomic(out / "frontier.md", frontier_summary(results))
    return results


def refresh_frontier(config: StudyConfig, output_dir: str | Path) -> FrontierResults:
    """``frontier.json`` and ``frontier.md`` from the records under ``output_dir`` alone (every run with an evaluated
    checkpoint; no model is loaded), e.g. while the study runs on in another checkout, or on copied records."""
    if config.frontier is None:
        raise ValueError("the recipe has no frontier section: nothing to refresh")
    out = Path(output_dir)
    specs = config.run_specs(config.model_path or SMOLLM2_NAME, out / "data" / "train.jsonl", out)
    return export_frontier(config, specs, out, CheckpointEval.read(out / "base.json"))
