"""The stages of a study, each writing one JSON file atomically (its presence = done).

* :func:`prepare_data` → ``data/manifest.json`` (+ ``train.jsonl``, ``test.jsonl``): problems with no test
  question in the training set, and the retention texts (English, code);
* :func:`evaluate_model` on the base model → ``base.json``, once for all runs;
* :func:`run_job` per (arm, seed): training (the Trainer resumes a killed run from its newest checkpoint),
  then one ``eval/step-<N>.json`` per evaluated checkpoint (``evaluation.checkpoint_steps``, default every
  saved one): per-problem correctness, perplexity and KL to the base on English, code and, if asked, the
  task's own prompts, with per-text sums (:func:`~.kl.mean_token_kl`, one forward pass of the model per batch:
  the base's log-probabilities on these fixed texts are computed once per process, :func:`base_log_probs_of`,
  which also serves full fine-tuning and post-hoc arms, whose weights outside an adapter may have changed), and
  for DISeL the gate means per domain (:mod:`~disel.experiments.eval.gates`, the whole ``disel.gates/1`` record
  kept as ``gates/step-<N>.json``) and the anti-aligned fraction (:mod:`.diagnostics`). A post-hoc arm trains
  nothing: it scores its source arm's checkpoints after its transform (:mod:`.transforms`). A finished run
  whose checkpoints are gone (committed records in a fresh checkout) before all its steps, and those of the
  post-hoc arms on it, were evaluated trains again (:func:`_restart_if_unfinishable`).
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import ConfigError, DataConfig
from ..data.arithmetic import train_and_test_problems, write_jsonl
from ..data.offline_text import general_english_texts, python_code_texts
from ..data.templates import get_template
from ..eval.gates import GateDomain, analyze_gates, mean_gate, save_gates
from ..eval.perplexity import causal_lm_windows, window_batches
from ..eval.retention import list_checkpoints
from ..models import force_offline, is_adapter_dir, load_model_for_eval
from ..train.run import RESULT_FILE
from .config import RunSpec, StudyConfig, checkpoint_steps_of, resolved_training_recipe, saved_steps
from .diagnostics import gate_alignment
from .kl import base_log_probs, mean_token_kl
from .records import CheckpointEval, DataManifest
from .task_kl import in_text_order, task_input_texts, text_batches
from .transforms import apply_transform

__all__ = ["drop_checkpoints", "evaluate_model", "evaluated_steps", "prepare_data", "retention_pools", "run_job"]

DOMAINS = ("english", "code")
GATE_DOMAINS = ("math", *DOMAINS)  # gate means: the task text first, then the retention texts
Report = Callable[[str, str], None]  # (stage label, headline) of a finished stage


def worker_init(threads: int) -> None:
    """A spawned worker process of the runner: offline, ``threads`` torch threads."""
    import torch

    force_offline()
    torch.set_num_threads(threads)


@contextmanager
def worker_pool(workers: int) -> Iterator[tuple[futures.ProcessPoolExecutor, Any]]:
    """``workers`` spawned single-thread processes (fresh interpreters: no forked torch thread pools) and a queue
    on which their jobs put reports, each a tuple of arguments for :func:`forward_reports`' ``report``."""
    context = multiprocessing.get_context("spawn")
    with (
        context.Manager() as manager,
        futures.ProcessPoolExecutor(workers, mp_context=context, initializer=worker_init, initargs=(1,)) as pool,
    ):
        yield pool, manager.Queue()


def forward_reports(queue: Any, report: Callable[..., None]) -> None:
    """``report(*item)`` for every item waiting in ``queue``."""
    while not queue.empty():
        report(*queue.get())


def prepare_data(config: StudyConfig, out: Path, tokenizer: Any) -> DataManifest:
    """Training/test problems and retention texts (``data/manifest.json``; read back if present)."""
    manifest_path = out / "data" / "manifest.json"
    retention = config.evaluation.model_dump(include={"retention_tokens", "retention_max_length"})
    settings = {"problems": config.problems.model_dump(), **retention}
    if manifest_path.is_file():
        manifest = DataManifest.read(manifest_path)
        if manifest.settings not in (None, settings):  # None: written before the settings were recorded
            raise ConfigError(
                f"{manifest_path} was made with other problems or retention settings ({manifest.settings}, the "
                f"recipe: {settings}): another study's output folder? Give another --output-dir"
            )
        return manifest
    train, test = train_and_test_problems(config.problems.train, config.problems.test, config.problems.data_seed)
    manifest = DataManifest(
        train_file=str(write_jsonl(train, out / "data" / "train.jsonl")),
        test_file=str(write_jsonl(test, out / "data" / "test.jsonl")),
        test_rows=[p.as_row() for p in test],
        retention=_retention_texts(config, tokenizer),
        settings=settings,
    )
    manifest.write(manifest_path)
    return manifest


def retention_pools(config: StudyConfig) -> dict[str, list[str]]:
    """The seeded English and code texts the retention texts are the first of (the rest: held out from them)."""
    seed = config.problems.data_seed
    return {"english": general_english_texts(150, seed=seed + 101), "code": python_code_texts(300, seed=seed + 202)}


def _retention_texts(config: StudyConfig, tokenizer: Any) -> dict[str, list[str]]:
    """About ``retention_tokens`` tokens per domain (texts in seeded order until the count is reached; each
    text counts at most ``retention_max_length`` tokens, as it is scored)."""
    settings = config.evaluation
    chosen: dict[str, list[str]] = {}
    for domain, pool in retention_pools(config).items():
        chosen[domain], total = [], 0
        for text in pool:
            if total >= settings.retention_tokens:
                break
            chosen[domain].append(text)
            total += min(len(tokenizer(text)["input_ids"]), settings.retention_max_length)
        if total < settings.retention_tokens:
            raise RuntimeError(
                f"evaluation.retention_tokens={settings.retention_tokens}: only {total} {domain} tokens available"
            )
    return chosen


def token_batches(tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> list[dict[str, Any]]:
    """Right-padded batches of the texts, each cut at ``max_length`` tokens and scored in one window (the one
    perplexity definition, :func:`~disel.experiments.eval.perplexity.causal_lm_windows`)."""
    windows = causal_lm_windows(tokenizer, texts, max_length=max_length, max_tokens=max_length)
    return window_batches(windows, batch_size, tokenizer.pad_token_id)


def evaluate_model(
    loaded: Any,
    config: StudyConfig,
    manifest: DataManifest,
    *,
    is_base: bool,
    is_disel: bool,
    base_model: Any = None,
    gates_path: Path | None = None,
    base_cache: dict[str, list[Any]] | None = None,
) -> CheckpointEval:
    """One model's evaluation (:class:`~.records.CheckpointEval`, step 0; KL 0 for the base by definition).
    ``base_model``: the reference of the KL (default: the model with its adapter disabled; pass the base when
    the adapted model's own base weights were changed, as by a static merge, or it has no adapter);
    ``base_cache``: instead, the base's log-probabilities per domain (:func:`base_log_probs_of`), one forward
    pass fewer per batch. ``gates_path``: where a DISeL model's whole ``disel.gates/1`` record is kept (for the
    gate figures)."""
    from ..eval.generation import GenerationSettings, evaluate_gsm8k  # looked up per call: tests spy on it

    settings, (model, tokenizer) = config.evaluation, loaded[:2]
    started = time.perf_counter()
    generation = GenerationSettings(max_new_tokens=settings.max_new_tokens, batch_size=settings.generation_batch_size)
    graded = evaluate_gsm8k(
        model, tokenizer, manifest.test_rows, settings=generation, template=training_template(config)
    )
    record: dict[str, Any] = {
        "correct": [int(s["correct"]) for s in graded["samples"]],
        "exact_match": graded["exact_match"],
        "perplexity": {},
        "kl": {},
        "generation_s": graded["seconds"],
        "longest_response_chars": max(len(s["response"]) for s in graded["samples"]),
    }
    record["texts"], retention_started = {}, time.perf_counter()
    for domain, texts in scored_texts(config, manifest).items():
        batches, order = text_batches(tokenizer, texts, settings.retention_max_length, settings.retention_batch_size)
        cached = None if is_base or base_cache is None else base_cache[domain]
        result = mean_token_kl(model, batches, base_model=model if is_base else base_model, base_log_probs=cached)
        record["perplexity"][domain] = result.base_perplexity if is_base else result.perplexity
        record["kl"][domain] = 0.0 if is_base else result.mean_kl  # the base against itself: 0 by definition
        record["texts"][domain] = {  # per text, in the order of the texts
            "kl_sums": [0.0] * len(texts) if is_base else in_text_order(result.sequence_kl_sums, order),
            "nll_sums": in_text_order(result.sequence_base_nll_sums if is_base else result.sequence_nll_sums, order),
            "tokens": in_text_order(result.sequence_tokens, order),
        }
    record["retention_s"] = time.perf_counter() - retention_started
    if is_disel:
        record.update(_gate_diagnostics(model, tokenizer, config, manifest, gates_path))
    return CheckpointEval(**record, seconds=time.perf_counter() - started)


def training_template(config: StudyConfig) -> str:
    """The prompt template (``data.template``) of the shared training recipe: the test problems are asked, and
    the gates read, in the words training used."""
    return DataConfig.model_validate(resolved_training_recipe(config).get("data", {})).template


def scored_texts(config: StudyConfig, manifest: DataManifest) -> dict[str, list[str]]:
    """Domain → the texts KL and perplexity are scored on: English and code, and ``task`` (the first
    ``evaluation.task_prompts`` test prompts in the training template) when asked for."""
    texts = {domain: manifest.retention[domain] for domain in DOMAINS}
    if config.evaluation.task_prompts:
        rows = manifest.test_rows[: config.evaluation.task_prompts]
        texts["task"] = task_input_texts(rows, training_template(config))
    return texts


_BASE_CACHE: dict[tuple, dict[str, list[Any]]] = {}  # one study's base log-probabilities, kept for the process


def base_log_probs_of(config: StudyConfig, manifest: DataManifest, model_path: str, dtype: str) -> dict[str, list]:
    """The base's log-probabilities on every scored text (:func:`~.kl.base_log_probs`), per domain: computed once
    per process and study, then every checkpoint needs one forward pass per batch, not two (the same numbers).
    Memory: 4 · vocabulary bytes per scored token (about 2 GB for SmolLM2 on 9,500 tokens)."""
    settings, texts = config.evaluation, scored_texts(config, manifest)
    key = (model_path, dtype, config.device, settings.retention_max_length, settings.retention_batch_size, str(texts))
    if key not in _BASE_CACHE:
        _BASE_CACHE.clear()  # one study at a time: never two caches in memory
        model, tokenizer = load_model_for_eval(model_path, None, dtype=dtype, device=config.device)[:2]
        length, size = settings.retention_max_length, settings.retention_batch_size
        batches = {domain: text_batches(tokenizer, texts[domain], length, size)[0] for domain in texts}
        _BASE_CACHE[key] = {domain: base_log_probs(model, b, base_model=model) for domain, b in batches.items()}
    return _BASE_CACHE[key]


def _gate_diagnostics(
    model: Any, tokenizer: Any, config: StudyConfig, manifest: DataManifest, gates_path: Path | None
) -> dict[str, Any]:
    """Anti-aligned fraction (overall and per layer) and mean gate on math / English / code (every real token)."""
    n, settings = config.evaluation.gate_sequences, config.evaluation
    template = get_template(training_template(config))
    texts = {
        "math": [template.format_prompt(r["instruction"]) + r["output"] for r in manifest.test_rows[:n]],
        **{domain: manifest.retention[domain][:n] for domain in DOMAINS},
    }
    gates = analyze_gates(
        model,
        tokenizer,
        [GateDomain(domain, texts=t) for domain, t in texts.items()],
        batch_size=settings.retention_batch_size,
        max_length=settings.retention_max_length,
    )
    if gates_path is not None:
        save_gates(gates, gates_path)
    alignment = gate_alignment(model)
    return {
        "anti_aligned_fraction": alignment.fraction,
        "anti_aligned_by_layer": {str(layer): f for layer, f in alignment.by_layer.items()},  # JSON keys
        "min_cosine": alignment.min_cosine,
        "gate_means": {domain: mean_gate(summary) for domain, summary in gates["domains"].items()},
    }


def evaluated_steps(spec: RunSpec, config: StudyConfig) -> list[int]:
    """The checkpoint steps a run evaluates (:func:`~.config.checkpoint_steps_of`), sorted."""
    steps = checkpoint_steps_of(spec, config)
    return saved_steps(spec) if steps is None else sorted(steps)


def run_job(
    spec: RunSpec, config: StudyConfig, manifest: DataManifest, model_path: str, report: Report
) -> dict[str, Any]:
    """Train one (arm, seed) unless finished (a post-hoc arm trains nothing), then evaluate every checkpoint of
    its source folder (those of :func:`~.config.checkpoint_steps_of` if set) not yet evaluated, the KL against the
    base's cached log-probabilities (:func:`base_log_probs_of`: the base is never needed beside the model)."""
    from ..train.run import train  # looked up per call: tests count the trainings

    posthoc = spec.arm_config.from_arm is not None
    if not posthoc:
        _restart_if_unfinishable(spec, config, report)
    if not posthoc and not (spec.run_dir / RESULT_FILE).is_file():
        result = train(spec.config)
        loss = "n/a" if result.final_train_loss is None else f"{result.final_train_loss:.3f}"
        report(f"{spec.label} train", f"{result.global_step} steps, last logged loss {loss}, {result.runtime_s:.0f} s")
    saved = dict(list_checkpoints(spec.source_dir))
    wanted = checkpoint_steps_of(spec, config) or sorted(saved)
    todo = sorted(s for s in wanted if not (spec.run_dir / "eval" / f"step-{s}.json").is_file())
    if set(todo) - set(saved):
        raise FileNotFoundError(
            f"{spec.label}: the checkpoints of steps {sorted(set(todo) - set(saved))} are not in {spec.source_dir} "
            f"(saved: {sorted(saved)}): a post-hoc arm runs in the session that trained its source arm (the "
            "checkpoints are not committed)"
        )
    for step in todo:
        loaded = _load_checkpoint(spec, config, saved[step], model_path)
        if posthoc:
            apply_transform(spec.arm_config.transform, loaded.model, **spec.arm_config.transform_params)
        cache = base_log_probs_of(config, manifest, model_path, spec.config.model.dtype)
        gates = spec.run_dir / "gates" / f"step-{step}.json" if spec.is_disel else None
        record = evaluate_model(
            loaded, config, manifest, is_base=False, is_disel=spec.is_disel, gates_path=gates, base_cache=cache
        )
        record = replace(record, step=step)
        record.write(spec.run_dir / "eval" / f"step-{step}.json")
        report(f"{spec.label} step {step}", headline(record))
    return {"arm": spec.arm, "seed": spec.seed}


def drop_checkpoints(spec: RunSpec) -> None:
    """Delete a finished run's ``checkpoint-<N>`` folders (``evaluation.keep_checkpoints`` false)."""
    if (spec.run_dir / RESULT_FILE).is_file():
        for _, folder in list_checkpoints(spec.run_dir):
            shutil.rmtree(folder)


def _restart_if_unfinishable(spec: RunSpec, config: StudyConfig, report: Report) -> None:
    """A finished training whose checkpoints are gone (a fresh checkout of committed records) while a step of it or
    of a post-hoc arm on it is not evaluated: its records are removed so that it trains again from the start
    (a seeded run; the post-hoc arms' records too, so that every record of a run comes from one training)."""
    if not (spec.run_dir / RESULT_FILE).is_file():
        return
    runs = [spec.run_dir] + [
        spec.run_dir.parent / f"{arm}-seed{spec.seed}"
        for arm, settings in config.arms.items()
        if settings.from_arm == spec.arm and spec.seed in settings.seeds
    ]
    steps = evaluated_steps(spec, config)
    missing = {s for run in runs for s in steps if not (run / "eval" / f"step-{s}.json").is_file()}
    gone = missing - {step for step, _ in list_checkpoints(spec.run_dir)}
    if not gone:
        return
    for run in runs:
        for folder in ("eval", "gates"):
            shutil.rmtree(run / folder, ignore_errors=True)
    (spec.run_dir / RESULT_FILE).unlink()
    report(f"{spec.label} restart", f"steps {sorted(gone)} not evaluated and their checkpoints gone: training again")


def _load_checkpoint(spec: RunSpec, config: StudyConfig, path: Path | None, model_path: str) -> Any:
    """The base (``path`` None), an adapter checkpoint on it, or a fully fine-tuned checkpoint (no adapter)."""
    dtype = spec.config.model.dtype
    if path is None or is_adapter_dir(path):
        return load_model_for_eval(model_path, path, dtype=dtype, device=config.device)
    return load_model_for_eval(path, None, dtype=dtype, device=config.device, tokenizer_path=model_path)


def headline(record: CheckpointEval) -> str:
    """One line of a checkpoint's numbers."""
    ppl, kl = record.perplexity, record.kl
    text = (
        f"EM {record.exact_match:.3f}, ppl en/code {ppl['english']:.2f}/{ppl['code']:.2f}, "
        f"KL en/code {kl['english']:.4f}/{kl['code']:.4f}"
    )
    if record.anti_aligned_fraction is not None:
        gates = record.gate_means
        text += (
            f", anti-aligned {record.anti_aligned_fraction:.3f}, gates math/en/code "
            f"{gates['math']:.3f}/{gates['english']:.3f}/{gates['code']:.3f}"
        )
    return text
