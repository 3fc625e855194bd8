"""The one study runner (``disel-study``): a whole study from one recipe, resumable, with progress and an ETA.

Stages (each skipped when its output file exists; every file is written atomically, so a killed run resumes):
data → base model evaluation (once) → per (arm, seed): training and checkpoint evaluations
(:func:`.stages.run_job`; ``workers`` of them in parallel, one single-threaded process each; post-hoc arms
each right after the arm it transforms) → throughput → ``results.json``
(:mod:`.results`), ``summary.md`` (table + verdict), final adapters → the export for ``paper_figs``
(:mod:`.export`) and the learning-forgetting fronts (``frontier.json``, ``frontier.md``:
:func:`.export.export_frontier`) if the recipe asks for them. Figures are drawn by ``paper_figs`` from these
files, not here.

Output folder layout: ``data/``, ``base.json``, ``runs/<arm>-seed<k>/`` (the Trainer's folder, with
``eval/step-<N>.json``), ``throughput.json``, ``results.json``, ``summary.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from disel.io import write_text_atomic

from ..models import check_model_dir, force_offline, load_model_for_eval, load_tokenizer, model_path_or_smollm2
from .aggregate import build_results, copy_final_adapters, diagnostics_table, format_table, verdict
from .config import RunSpec, StudyConfig, resolved_training_recipe
from .continual_run import run_continual
from .export import export_for_figures, export_frontier
from .records import CheckpointEval, DataManifest, Throughput, plain
from .stages import (
    drop_checkpoints,
    evaluate_model,
    evaluated_steps,
    forward_reports,
    headline,
    prepare_data,
    run_job,
    worker_pool,
)
from .throughput_stage import measure_training_throughput

__all__ = ["Progress", "run_study"]


class Progress:
    """A tqdm bar over every stage, weighted by each stage's estimated cost so the ETA is meaningful, and one
    printed line per finished stage."""

    def __init__(self, weights: dict[str, float], echo: Callable[[str], None] = print) -> None:
        self.weights = weights
        self.bar = tqdm(total=round(sum(weights.values())), unit="est.s", dynamic_ncols=True)
        self.echo = echo

    def skip(self, label: str) -> None:
        """Count a stage done by an earlier invocation."""
        self.bar.update(round(self.weights.get(label, 0.0)))

    def done(self, label: str, text: str) -> None:
        self.skip(label)
        self.bar.write(f"[{label}] {text}") if self.echo is print else self.echo(f"[{label}] {text}")

    def close(self) -> None:
        self.bar.close()


# Single-core seconds on the 2-core CPU this was written on (SmolLM2-135M): only the ETA uses them.
_TRAIN_STEP_S, _PROBLEM_S, _TOKEN_S = 6.0, 0.5, 0.01


def stage_weights(config: StudyConfig, specs: list[RunSpec]) -> dict[str, float]:
    """Every stage's label (as reported) and estimated cost."""
    evaluation = config.problems.test * _PROBLEM_S + 2 * config.evaluation.retention_tokens * _TOKEN_S + 10
    weights = {"data": 5.0, "base": evaluation, "throughput": 30.0, "results": 10.0}
    weights.update(export=5.0 if config.export else 0.0, frontier=60.0 if config.frontier else 0.0)
    for spec in specs:
        if spec.arm_config.from_arm is None:
            weights[f"{spec.label} train"] = spec.config.training.max_steps * _TRAIN_STEP_S
        for step in evaluated_steps(spec, config):
            weights[f"{spec.label} step {step}"] = evaluation
    return weights


def _base_stage(
    config: StudyConfig, out: Path, manifest: DataManifest, model_path: str, dtype: str, progress: Progress
) -> CheckpointEval:
    path = out / "base.json"
    if path.is_file():
        progress.done("base", "already evaluated")
        return CheckpointEval.read(path)
    loaded = load_model_for_eval(model_path, None, dtype=dtype, device=config.device)
    record = evaluate_model(loaded, config, manifest, is_base=True, is_disel=False)
    record.write(path)
    progress.done("base", headline(record))
    return record


def _worker_job(
    label: str, config: StudyConfig, out: Path, manifest: DataManifest, model_path: str, queue: Any
) -> dict:
    # A recipe holds a class built at run time (the TrainingArguments section), which does not pickle: the
    # worker rebuilds the specs from the evidence config, which does.
    spec = next(s for s in config.run_specs(model_path, Path(manifest.train_file), out) if s.label == label)
    return run_job(spec, config, manifest, model_path, lambda stage, text: queue.put((stage, text)))


def _done_before(spec: RunSpec) -> list[str]:
    """Labels of a run's stages done by an earlier invocation: training, and evaluated checkpoints."""
    done = [f"{spec.label} train"] if (spec.run_dir / "train_result.json").is_file() else []
    return done + [
        f"{spec.label} step {p.stem.removeprefix('step-')}" for p in (spec.run_dir / "eval").glob("step-*.json")
    ]


def _run_jobs(
    specs: list[RunSpec],
    config: StudyConfig,
    out: Path,
    manifest: DataManifest,
    model_path: str,
    workers: int,
    progress: Progress,
) -> None:
    """Every (arm, seed) job: in this process (``workers`` 1) or in ``workers`` single-thread processes."""
    for spec in specs:
        for label in _done_before(spec):
            progress.skip(label)
    trained = [spec for spec in specs if spec.arm_config.from_arm is None]
    posthoc = {  # need their source's checkpoints, so each runs once its source is trained
        spec.run_dir: [p for p in specs if p.arm_config.from_arm is not None and p.source_dir == spec.run_dir]
        for spec in trained
    }
    keep = config.evaluation.keep_checkpoints
    if workers == 1:  # each post-hoc run right after its source (its checkpoints are not kept across sessions)
        for spec in trained:
            for job in [spec, *posthoc[spec.run_dir]]:
                run_job(job, config, manifest, model_path, progress.done)
            if not keep:
                drop_checkpoints(spec)
        return
    with worker_pool(workers) as (pool, queue):
        waiting, running = list(trained), {}  # running: future -> its spec
        left = {spec.run_dir: len(jobs) for spec, jobs in zip(trained, posthoc.values())}  # post-hoc jobs not done
        sources = {p.label: spec for spec in trained for p in posthoc[spec.run_dir]}
        while waiting or running:
            while waiting and len(running) < workers:  # at most `workers` in flight, so post-hoc jobs go next
                spec = waiting.pop(0)
                running[pool.submit(_worker_job, spec.label, config, out, manifest, model_path, queue)] = spec
            finished, _ = futures.wait(running, timeout=2.0, return_when=futures.FIRST_COMPLETED)
            forward_reports(queue, progress.done)
            for job in finished:
                job.result()  # re-raises a worker's error here
                spec = running.pop(job)
                source = sources.get(spec.label, spec)
                if spec is source:
                    waiting[:0] = posthoc[spec.run_dir]
                else:
                    left[source.run_dir] -= 1
                if not keep and left[source.run_dir] == 0:
                    drop_checkpoints(source)
        forward_reports(queue, progress.done)


def run_study(config: StudyConfig, output_dir: str | Path, *, workers: int = 1, echo=print) -> dict[str, Any]:
    """Run (or resume) the whole experiment; returns ``{"results", "table", "verdict"}``. A continual recipe
    (``continual:``) runs its phases instead (:func:`.continual_run.run_continual`, with ``workers`` too)."""
    if workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers}")
    if config.continual is not None:
        return run_continual(config, output_dir, echo=echo, workers=workers)

    force_offline()
    out = Path(output_dir)
    model_path = model_path_or_smollm2(config.model_path)
    specs = config.run_specs(model_path, out / "data" / "train.jsonl", out)  # every recipe validated up front
    check_model_dir(model_path, what="model_path")
    manifest = prepare_data(config, out, load_tokenizer(model_path))
    progress = Progress(stage_weights(config, specs), echo)
    progress.done(
        "data",
        f"{config.problems.train} training / {len(manifest.test_rows)} test problems, "
        f"{len(manifest.retention['english'])} English and {len(manifest.retention['code'])} code texts",
    )
    try:
        base = _base_stage(config, out, manifest, model_path, specs[0].config.model.dtype, progress)
        _run_jobs(specs, config, out, manifest, model_path, workers, progress)
        throughput = _throughput_stage(specs, out, model_path, progress)
        summary = _aggregate_stage(config, specs, out, base, throughput, progress)
        if config.export is not None:
            written = export_for_figures(config, specs, out, base)
            progress.done("export", f"{len(written)} files for paper_figs in {out}")
        if config.frontier is not None:
            export_frontier(config, specs, out, base)
            progress.done("frontier", f"{out / 'frontier.json'}, {out / 'frontier.md'}")
    finally:
        progress.close()
    return summary


def _throughput_stage(specs: list[RunSpec], out: Path, model_path: str, progress: Progress) -> Throughput:
    path = out / "throughput.json"
    if not path.is_file():
        measure_training_throughput(specs, model_path).write(path)
    record = Throughput.read(path)
    progress.done(
        "throughput",
        ", ".join(
            f"{arm}: no training runtime logged"
            if r.tokens_per_s is None
            else f"{arm} {r.tokens_per_s:.0f} tok/s = {r.fraction_of_flop_limit:.0%} of the FLOP limit"
            for arm, r in record.arms.items()
        ),
    )
    return record


def _aggregate_stage(
    config: StudyConfig,
    specs: list[RunSpec],
    out: Path,
    base: CheckpointEval,
    throughput: Throughput,
    progress: Progress,
) -> dict[str, Any]:
    figures_dir = out if config.figures_dir is None else Path(config.figures_dir)
    adapters = copy_final_adapters(specs, figures_dir / "adapters")
    recipe = {"evidence": config.model_dump(mode="json"), "training": resolved_training_recipe(config)}
    results = build_results(config, specs, base, plain(throughput), adapters, recipe)
    results.write(out / "results.json")
    table, sentence = format_table(results), verdict(results)
    write_text_atomic(out / "summary.md", f"{table}\n{sentence}\n\n{diagnostics_table(results)}")
    progress.done("results", f"{out / 'results.json'}, final adapters in {figures_dir / 'adapters'}")
    return {"results": results, "table": table, "verdict": sentence}
