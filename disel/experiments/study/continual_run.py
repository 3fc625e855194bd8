"""The continual study of the study runner (issue 18): each arm learns the tasks one training phase per task.

A recipe with a ``continual:`` section (:class:`~.config.ContinualConfig`) runs here from
:func:`.run.run_study`. Each (arm, seed, order) is a sequence of phases, phase i training ``training.max_steps``
steps on task i of the order from the weights phase i-1 ended with, the arm's ``phases`` saying what happens
between phases (:func:`start_phase`):

* ``sequential`` — the one adapter (LoRA or DISeL) trains on;
* ``branches`` — ``disel.add_task_branch`` before each later phase: earlier branches frozen, all active;
* ``olora`` — a new LoRA adapter per task, earlier ones frozen, the orthogonality loss (``train.continual_baselines``);
* ``osf`` — peft's OSF re-wrapped per task on the merged weights (``start_osf_task``);
* ``multitask`` — one phase on every task's rows (shuffled), T times the steps, independent of the order.

After each phase the test rows are scored by label likelihood (:func:`~disel.experiments.eval.labels.score_rows`,
one rule for every arm, no task identity: each prompt is scored on its own task's label set, as the benchmark
does, with every branch or adapter active): the row of the accuracy matrix. After the last phase: KL to the
base on English and code (the runner's retention texts and :func:`~.kl.mean_token_kl`) and, for DISeL, the gate
table (:func:`gate_table`).

**Resumable at phase granularity**: ``runs/<arm>-seed<k>/<order>/phase-<i>-<task>/`` holds the phase's weights
(``adapter/``, or ``model/`` for OSF) and, written last, ``scores.json``; a killed run redoes the unfinished
phase only. The small JSON files (scores, ``final.json``, ``selection/``, ``base.json``) are what to keep; the
weights are needed only to continue an unfinished order (the ``.gitignore`` written in the output folder leaves
them out), so an order whose records are complete is skipped even without them, and one whose weights were lost restarts
after the last phase whose weights remain. A phase another order of the same run has already made (both orders begin
with the same tasks) is copied, not retrained (:func:`_copy_shared_phase`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from disel.io import write_json_atomic, write_text_atomic

from .config import RunSpec, StudyConfig, fixes_learning_rate
from .records import BaseScores, FinalRecord, PhaseScores, SelectionScores

__all__ = [
    "gate_table",
    "learning_rate",
    "run_continual",
    "run_order",
    "start_phase",
]

_GITIGNORE = (
    "# weights and Trainer folders: needed only to continue an unfinished order; the JSON records are the results\n"
    "adapter/\nmodel/\ntrainer/\nselection/work*/\n"
)


def _specs(config: StudyConfig, model_path: str, out: Path) -> dict[str, RunSpec]:
    """Every (arm, seed) run spec by label (the training recipe of each; the runner's data file is unused)."""
    return {spec.label: spec for spec in config.run_specs(model_path, out / "data" / "rows-in-memory.jsonl", out)}


@dataclass
class _Context:
    """What every phase needs: the config, output folder, tokenizer, tasks (test rows cut), retention texts."""

    config: StudyConfig
    out: Path
    model_path: str
    tokenizer: Any
    tasks: dict[str, Any]
    retention: dict[str, list[str]]
    echo: Any
    template: str  # the training recipe's prompt template: test prompts are asked as training asked them

    def load_base(self, path: str | Path | None = None) -> Any:
        from ..models import load_model

        model = load_model(path or self.model_path)
        return model.to(self.config.device)


def _prepare(config: StudyConfig, out: Path, model_path: str, template: str, echo) -> _Context:
    from ..data.continual import load_tasks
    from ..models import load_tokenizer
    from .stages import _retention_texts

    settings = config.continual
    tokenizer = load_tokenizer(model_path)
    tasks = load_tasks(settings.tasks, settings.data_dir, tokenizer=tokenizer, max_text_tokens=settings.max_text_tokens)
    tasks = {name: replace(task, test=task.test[: settings.test_per_task]) for name, task in tasks.items()}
    path = out / "data" / "retention.json"
    if not path.is_file():
        write_json_atomic(path, _retention_texts(config, tokenizer))
    import json

    retention = json.loads(path.read_text(encoding="utf-8"))
    return _Context(config, out, model_path, tokenizer, tasks, retention, echo, template)


def start_phase(spec: RunSpec, index: int, n_tasks: int, base: Any, previous: Path | None) -> Any:
    """The model phase ``index`` trains: phase 0 wraps ``base``; a later phase reloads the previous phase's
    weights (``previous``: its folder) onto ``base`` and applies the arm's ``phases`` step."""
    from peft import PeftModel, get_peft_model

    import disel

    from ..train.continual_baselines import add_task_adapter, load_task_adapters, start_osf_task, task_adapter_name
    from ..train.run import build_peft_config

    mode, config = spec.arm_config.phases, spec.config
    if mode == "osf":
        model = base if previous is None else _load_weights(previous / "model", base)
        return start_osf_task(model, index, n_tasks, config.method.target_modules)
    if mode == "olora":
        if previous is None:
            return add_task_adapter(base, build_peft_config(config))
        names = [task_adapter_name(k) for k in range(index)]
        return add_task_adapter(load_task_adapters(base, str(previous / "adapter"), names), build_peft_config(config))
    if previous is None:
        return get_peft_model(base, build_peft_config(config))
    model = PeftModel.from_pretrained(base, str(previous / "adapter"), is_trainable=True)
    return disel.add_task_branch(model) if mode == "branches" else model


def _load_weights(path: Path, like: Any) -> Any:
    from ..models import load_model

    return load_model(path).to(next(like.parameters()).device)


def _weights_folder(spec: RunSpec) -> str:
    """Where a phase folder keeps its weights: ``model`` (OSF's merged model) or ``adapter``."""
    return "model" if spec.arm_config.phases == "osf" else "adapter"


def _save_weights(spec: RunSpec, model: Any, folder: Path) -> Any:
    """Save the phase's weights: the adapter(s), or for OSF the merged model (the next phase's base, returned)."""
    if spec.arm_config.phases == "osf":
        model = model.merge_and_unload()
    model.save_pretrained(str(folder / _weights_folder(spec)))
    return model


def _has_weights(spec: RunSpec, folder: Path) -> bool:
    name = _weights_folder(spec)
    return (folder / name).is_dir() and any((folder / name).rglob("*.safetensors"))


def _train(ctx: _Context, spec: RunSpec, model: Any, rows, steps: int, rate: float, work: Path) -> tuple[Any, float]:
    """``steps`` optimizer steps of ``model`` on ``rows`` at learning rate ``rate`` with the arm's Trainer (DISeL's
    gate groups, O-LoRA's loss); returns (training loss, seconds). No checkpoints: a phase is the unit of resume."""
    from transformers import Trainer

    from disel.optim import DiselTrainer

    from ..data.collator import CausalLMCollator
    from ..data.continual import tokenize_rows
    from ..train.continual_baselines import olora_trainer_class
    from ..train.run import training_arguments

    started = time.perf_counter()
    settings = ctx.config.continual
    examples = tokenize_rows(rows, ctx.tokenizer, ctx.template, settings.max_length)
    update = {"max_steps": steps, "learning_rate": rate, "output_dir": str(work), "save_strategy": "no"}
    training = spec.config.training.model_copy(update={**update, "resume_from_checkpoint": None})
    args = training_arguments(spec.config.model_copy(update={"training": training}), has_validation=False)
    mode = spec.arm_config.phases
    trainer_class = olora_trainer_class() if mode == "olora" else DiselTrainer if spec.is_disel else Trainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=CausalLMCollator(int(ctx.tokenizer.pad_token_id)),
        processing_class=ctx.tokenizer,
    )
    output = trainer.train()
    return output.training_loss, time.perf_counter() - started


def _score(ctx: _Context, model: Any, names) -> tuple[dict[str, list[int]], float]:
    """0/1 per test row of each named task (label likelihood over the task's labels), and the seconds spent."""
    from ..eval.labels import score_rows

    started = time.perf_counter()
    batch = ctx.config.continual.score_batch_size
    correct = {}
    for name in names:
        task = ctx.tasks[name]
        scored = score_rows(model, ctx.tokenizer, task.test, task.labels, template=ctx.template, batch_size=batch)
        correct[name] = [int(c) for c in scored.correct]
    return correct, time.perf_counter() - started


def _phases(ctx: _Context, spec: RunSpec, order: list[str]) -> list[tuple[str, list[Any], int]]:
    """(task name, training rows, steps) of each phase of ``spec`` in ``order``."""
    from ..data.continual import multitask_rows

    steps = spec.config.training.max_steps
    if spec.arm_config.phases == "multitask":
        rows = multitask_rows([ctx.tasks[name] for name in order], seed=spec.seed)
        return [("multitask", rows, steps * len(order))]
    return [(name, list(ctx.tasks[name].train), steps) for name in order]


def _scored_tasks(ctx: _Context, order: list[str], index: int, n_phases: int) -> list[str]:
    """The tasks scored after phase ``index``: those learned so far (``lower_triangle``), else every task."""
    if n_phases == 1 or ctx.config.continual.matrix == "full":
        return list(order)
    return list(order[: index + 1])


def run_order(ctx: _Context, spec: RunSpec, order_name: str, order: list[str], rate: float) -> list[PhaseScores]:
    """Every phase of ``spec`` in ``order`` not yet scored, then ``final.json``; returns the phases' scores."""
    folder = spec.run_dir / order_name
    phases = _phases(ctx, spec, order)
    dirs = [folder / f"phase-{i}-{name}" for i, (name, _, _) in enumerate(phases)]
    done = [(d / "scores.json").is_file() for d in dirs]
    _refuse_other_settings(folder, [d / "scores.json" for d, ok in zip(dirs, done) if ok], rate, phases)
    if all(done) and (folder / "final.json").is_file():
        return [PhaseScores.read(d / "scores.json") for d in dirs]
    start = done.index(False) if not all(done) else len(dirs) - 1  # final.json missing: redo the last phase
    while start > 0 and not _has_weights(spec, dirs[start - 1]):  # weights lost (a fresh checkout): go back
        start -= 1
    for index in range(start, len(phases)):
        model = _run_phase(ctx, spec, order_name, order, index, phases, dirs, rate)
    _final(ctx, spec, model, order, folder / "final.json")
    return [PhaseScores.read(d / "scores.json") for d in dirs]


def _refuse_other_settings(folder: Path, records: list[Path], rate: float, phases) -> None:
    """A phase record made with another learning rate or step count (the recipe or the rate selection changed since)
    cannot continue this run: refused, naming the folder, rather than mixed into one run's accuracy matrix."""
    for path in records:
        record = PhaseScores.read(path)
        steps = phases[record.phase][2]
        if (record.learning_rate, record.steps) != (rate, steps):
            raise ValueError(
                f"{path} was made with learning rate {record.learning_rate:g} and {record.steps} steps, but this "
                f"recipe now gives {rate:g} and {steps}: delete {folder} to run this order again"
            )


def _run_phase(ctx: _Context, spec: RunSpec, order_name: str, order, index: int, phases, dirs, rate: float) -> Any:
    """Train phase ``index`` from the previous phase's weights, save its weights, score it (``scores.json``)."""
    from transformers import set_seed

    name, rows, steps = phases[index]
    if index < len(phases) - 1 and _copy_shared_phase(ctx, spec, order_name, order, index, dirs[index], rate, steps):
        return None  # only the next phase reads this one's weights, from its folder
    set_seed(spec.seed + index)  # the new adapter or branch's initialisation, the data order
    model = start_phase(spec, index, len(phases), ctx.load_base(), dirs[index - 1] if index else None)
    loss, train_s = _train(ctx, spec, model, rows, steps, rate, dirs[index] / "trainer")
    model = _save_weights(spec, model, dirs[index])
    if spec.arm_config.phases == "osf" and index > 0:  # only the newest merged model is ever read again
        shutil.rmtree(dirs[index - 1] / "model", ignore_errors=True)
    correct, score_s = _score(ctx, model, _scored_tasks(ctx, order, index, len(phases)))
    record = PhaseScores(spec.arm, spec.seed, order_name, index, name, rate, steps, loss, train_s, score_s, correct)
    record.write(dirs[index] / "scores.json")
    accuracy = ", ".join(f"{task} {sum(c) / len(c):.2f}" for task, c in correct.items())
    ctx.echo(f"[{spec.label} {order_name} phase {index} {name}] loss {loss:.3f}, {train_s:.0f} s; accuracy {accuracy}")
    return model


def _copy_shared_phase(
    ctx: _Context, spec: RunSpec, order_name: str, order: list[str], index: int, folder: Path, rate: float, steps: int
) -> bool:
    """Copy phase ``index`` from another order of the same run that starts with the same ``index + 1`` tasks
    (e.g. two orders that both begin DBpedia, Amazon): same starting weights, rows, seed and settings, so the same
    phase, with nothing to train or score. Its record names the source order (``shared_from``) and counts no
    seconds. False when no such finished phase with its weights is there (OSF keeps only its newest weights)."""
    weights = _weights_folder(spec)
    for other_name, other in ctx.config.continual.orders.items():
        source = spec.run_dir / other_name / folder.name
        if other_name == order_name or list(other[: index + 1]) != list(order[: index + 1]):
            continue
        if not ((source / "scores.json").is_file() and _has_weights(spec, source)):
            continue
        record = PhaseScores.read(source / "scores.json")
        if (record.learning_rate, record.steps) != (rate, steps):
            continue
        partial = folder / f"{weights}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            shutil.copytree(source / weights, partial)
        except OSError:  # the other order moved on and deleted them meanwhile (OSF): train this phase instead
            shutil.rmtree(partial, ignore_errors=True)
            continue
        shutil.rmtree(folder / weights, ignore_errors=True)
        partial.rename(folder / weights)
        shared = replace(record, order=order_name, train_s=0.0, score_s=0.0, shared_from=other_name, path=None)
        shared.write(folder / "scores.json")
        ctx.echo(f"[{spec.label} {order_name} {folder.name}] copied from {other_name} (the same phase)")
        return True
    return False


def _final(ctx: _Context, spec: RunSpec, model: Any, order: list[str], path: Path) -> None:
    """KL to the base on English and code after the last phase, and the gate table of a DISeL model."""
    from .kl import mean_token_kl
    from .stages import DOMAINS, token_batches

    started, settings = time.perf_counter(), ctx.config.evaluation
    base = ctx.load_base()
    kl, perplexity = {}, {}
    for domain in DOMAINS:
        batches = token_batches(
            ctx.tokenizer, ctx.retention[domain], settings.retention_max_length, settings.retention_batch_size
        )
        result = mean_token_kl(model, batches, base_model=base)
        kl[domain], perplexity[domain] = result.mean_kl, result.perplexity
    gates = (
        gate_table(model, ctx.tokenizer, ctx.tasks, order, ctx.template, settings.gate_sequences)
        if spec.is_disel
        else None
    )
    FinalRecord(kl, perplexity, gates, time.perf_counter() - started).write(path)
    ctx.echo(f"[{spec.label} {path.parent.name} final] KL en/code {kl['english']:.4f}/{kl['code']:.4f}")


def gate_table(model: Any, tokenizer: Any, tasks: dict[str, Any], order: list[str], template: str, n: int) -> dict:
    """Mean gate of each DISeL branch on each task's inputs (the first ``n`` test prompts with their labels, every
    real token, every adapted layer): ``{"branches": [k: the task trained when branch k was trainable],
    "tasks": order, "mean": [branch][task]}``. A model with one branch (sequential, multitask) has one row."""
    import torch

    import disel

    from ..data.templates import format_prompt

    ranks = disel.task_branch_ranks(model)
    n_branches = len(next(iter(ranks.values())))
    table = []
    for name in order:
        texts = [format_prompt(template, row.instruction) + row.label for row in tasks[name].test[:n]]
        batch = tokenizer(texts, padding=True, return_tensors="pt").to(next(model.parameters()).device)
        with disel.record_gates(model, token_mask=batch["attention_mask"]) as recorder, torch.no_grad():
            model(**batch)
        table.append(_branch_means(recorder.stats, ranks, n_branches))
    branches = list(order[:n_branches]) if n_branches == len(order) else ["all"] * n_branches
    return {"branches": branches, "tasks": list(order), "mean": [list(row) for row in zip(*table)]}


def _branch_means(stats: dict, ranks: dict[str, list[int]], n_branches: int) -> list[float]:
    """Per branch: the mean of its components' mean gates over every adapted layer (slices by ``ranks``)."""
    sums, counts = [0.0] * n_branches, [0] * n_branches
    for summary in stats.values():
        path = summary.paths[0]
        layer_ranks = next(r for p, r in ranks.items() if path.endswith(p))
        means, start = list(summary.component_means), 0
        for k, rank in enumerate(layer_ranks):
            sums[k] += sum(means[start : start + rank])
            counts[k] += rank
            start += rank
    return [s / c for s, c in zip(sums, counts)]


def learning_rate(ctx: _Context, spec: RunSpec) -> float:
    """The learning rate of ``spec``'s method: chosen by the one rule (:class:`~.config.LearningRateSelection`) the
    first time the method is needed (its candidate runs are files, so a rerun reads them), or the recipe's rate
    when the recipe selects none for that method or the arm's overrides set it (``config.fixes_learning_rate``)."""
    from .continual_metrics import choose_learning_rate

    selection, method = ctx.config.continual.learning_rates, spec.config.method.name
    if selection is None or method not in selection.grids or fixes_learning_rate(spec.arm_config):
        return spec.config.training.learning_rate
    accuracy = {rate: _selection_run(ctx, spec, rate).accuracy for rate in selection.grids[method]}
    chosen = choose_learning_rate(accuracy)
    if len(accuracy) > 1 and chosen in (min(accuracy), max(accuracy)):  # the best may lie outside the grid
        ctx.echo(f"[learning rate {method}] {chosen:g} is at the edge of its grid {sorted(accuracy)}: widen the grid")
    return chosen


def _selection_run(ctx: _Context, spec: RunSpec, rate: float) -> SelectionScores:
    """One candidate rate: phase 0 of ``spec`` on the selection task's training rows less the held-out ones,
    scored on those (cached in a file)."""
    from transformers import set_seed

    from ..data.continual import held_out_split

    method, settings = spec.config.method.name, ctx.config.continual
    path = ctx.out / "selection" / f"{method}-lr{rate:g}.json"
    if path.is_file():
        return SelectionScores.read(path)
    task = next(iter(settings.orders.values()))[0]  # the first task of the first order
    selection = settings.learning_rates
    train, held = held_out_split(ctx.tasks[task].train, selection.held_out_fraction, selection.seed)
    set_seed(spec.seed)
    model = start_phase(spec, 0, len(settings.tasks), ctx.load_base(), None)
    work = ctx.out / "selection" / f"work-{method}-lr{rate:g}"  # one per candidate: candidates may run at once
    loss, train_s = _train(ctx, spec, model, train, spec.config.training.max_steps, rate, work)
    held_task = replace(ctx.tasks[task], test=tuple(held))
    correct, score_s = _score(replace(ctx, tasks={task: held_task}), model, [task])
    record = SelectionScores(method, rate, task, sum(correct[task]) / len(held), correct[task], loss, train_s, score_s)
    record.write(path)
    return record


def _base_scores(ctx: _Context) -> BaseScores:
    path = ctx.out / "base.json"
    if not path.is_file():
        correct, _ = _score(ctx, ctx.load_base(), list(ctx.config.continual.tasks))
        BaseScores(correct).write(path)
    return BaseScores.read(path)


def _schedule(config: StudyConfig, specs: dict[str, RunSpec]) -> list[tuple[str, list[str], RunSpec]]:
    """(order name, order, spec) in the order they run: order by order every sequential arm in recipe order (the
    first order's comparison of all arms completes first), then each multitask arm once (``multitask``, on the
    first order's task list: it does not depend on the order)."""
    orders = config.continual.orders
    sequential = [s for s in specs.values() if s.arm_config.phases != "multitask"]
    multitask = [s for s in specs.values() if s.arm_config.phases == "multitask"]
    first = next(iter(orders.values()))
    return [(name, list(order), s) for name, order in orders.items() for s in sequential] + [
        ("multitask", list(first), s) for s in multitask
    ]


def run_continual(config: StudyConfig, output_dir: str | Path, *, echo=print, workers: int = 1) -> dict[str, Any]:
    """Run (or resume) a continual study: base scores, learning-rate selection, then order by order every arm's
    phases (the first order first, so its comparison of all arms is complete earliest; a multitask arm once),
    then ``results.json`` and ``summary.md`` (:mod:`.continual_results`). Returns ``{"results", "table",
    "verdict"}``. With ``workers`` > 1, every selection candidate, then every (arm, order), runs in one of
    ``workers`` single-thread processes (each its own files: the records are the same kind either way)."""
    from ..models import check_model_dir, force_offline, model_path_or_smollm2
    from .continual_results import aggregate_continual

    force_offline()
    out = Path(output_dir)
    model_path = model_path_or_smollm2(config.model_path)
    check_model_dir(model_path, what="model_path")
    specs = _specs(config, model_path, out)
    ctx = _prepare(config, out, model_path, next(iter(specs.values())).config.data.template, echo)
    write_text_atomic(out / ".gitignore", _GITIGNORE)
    _base_scores(ctx)
    schedule = _schedule(config, specs)
    selection = config.continual.learning_rates
    if workers > 1 and selection is not None:
        first = {s.config.method.name: s for _, _, s in schedule if not fixes_learning_rate(s.arm_config)}
        candidates = [
            ("select", spec.label, rate) for method, spec in first.items() for rate in selection.grids.get(method, [])
        ]
        _in_workers(candidates, config, out, model_path, workers, echo)
    rates: dict[str, float] = {}
    jobs = []
    for order_name, order, spec in schedule:
        key = spec.arm if fixes_learning_rate(spec.arm_config) else spec.config.method.name
        if key not in rates:  # one process: chosen when first needed, so the first order's runs start early
            rates[key] = learning_rate(ctx, spec)
            echo(f"[learning rate {key}] {rates[key]:g}")
        if workers == 1:
            run_order(ctx, spec, order_name, order, rates[key])
        else:
            jobs.append(("order", spec.label, order_name, order, rates[key]))
    _in_workers(jobs, config, out, model_path, workers, echo)
    summary = aggregate_continual(config, out)
    echo(f"[results] {out / 'results.json'}")
    return summary


def _in_workers(jobs: list[tuple], config: StudyConfig, out: Path, model_path: str, workers: int, echo) -> None:
    """Each job (:func:`_worker_job`) in one of ``workers`` spawned single-thread processes, in order; their
    lines forwarded to ``echo``; a worker's error re-raised here."""
    from concurrent import futures

    from .stages import forward_reports, worker_pool

    if not jobs:
        return
    with worker_pool(workers) as (pool, queue):
        running = {pool.submit(_worker_job, config, out, model_path, job, queue) for job in jobs}
        while running:
            finished, running = futures.wait(running, timeout=2.0, return_when=futures.FIRST_COMPLETED)
            forward_reports(queue, echo)
            for job in finished:
                job.result()
        forward_reports(queue, echo)


def _worker_job(config: StudyConfig, out: Path, model_path: str, job: tuple, queue: Any) -> None:
    """``("select", label, rate)``: one selection candidate; ``("order", label, order name, order, rate)``: one
    (arm, order). The context is rebuilt here (a spawned process shares nothing)."""
    kind, label, *args = job
    spec = _specs(config, model_path, out)[label]
    ctx = _prepare(config, out, model_path, spec.config.data.template, lambda line: queue.put((line,)))
    if kind == "select":
        record = _selection_run(ctx, spec, *args)
        ctx.echo(f"[selection {record.method} {record.learning_rate:g}] held-out accuracy {record.accuracy:.2f}")
    else:
        run_order(ctx, spec, *args)
