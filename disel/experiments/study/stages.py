"""The stages of the evidence experiment, each writing one JSON file atomically (its presence = done).

* :func:`prepare_data` → ``data/manifest.json`` (+ ``train.jsonl``, ``test.jsonl``): problems with no test
  question in the training set, and the retention texts (English, code);
* :func:`evaluate_model` on the base model → ``base.json``, once for all runs;
* :func:`run_job` per (arm, seed): training (the Trainer resumes a killed run from its newest checkpoint),
  then one ``eval/step-<N>.json`` per checkpoint: per-problem correctness, perplexity and KL to the base
  on English and code (one forward pass of each model per batch, :func:`~.kl.mean_token_kl`, the base
  being the same weights with the adapter disabled), and for DISeL the gate means per domain
  (:mod:`~disel.experiments.eval.gates`) and the anti-aligned fraction (:mod:`.diagnostics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from disel.io import read_json, write_json_atomic

from .config import EvidenceConfig, RunSpec

__all__ = ["evaluate_model", "prepare_data", "read_json", "retention_pools", "run_job"]

DOMAINS = ("english", "code")
GATE_DOMAINS = ("math", *DOMAINS)  # gate means: the task text first, then the retention texts
Report = Callable[[str, str], None]  # (stage label, headline) of a finished stage


def prepare_data(config: EvidenceConfig, out: Path, tokenizer: Any) -> dict[str, Any]:
    """Training/test problems and retention texts (``data/manifest.json``; read back if present)."""
    from ..data.arithmetic import train_and_test_problems, write_jsonl

    manifest_path = out / "data" / "manifest.json"
    if manifest_path.is_file():
        return read_json(manifest_path)
    problems = config.problems
    train, test = train_and_test_problems(problems.train, problems.test, problems.data_seed)
    manifest = {
        "train_file": str(write_jsonl(train, out / "data" / "train.jsonl")),
        "test_file": str(write_jsonl(test, out / "data" / "test.jsonl")),
        "test_rows": [p.as_row() for p in test],
        "retention": _retention_texts(config, tokenizer),
    }
    write_json_atomic(manifest_path, manifest)
    return manifest


def retention_pools(config: EvidenceConfig) -> dict[str, list[str]]:
    """The seeded English and code texts the retention texts are the first of (the rest: held out from them)."""
    from ..data.offline_text import general_english_texts, python_code_texts

    seed = config.problems.data_seed
    return {"english": general_english_texts(150, seed=seed + 101), "code": python_code_texts(300, seed=seed + 202)}


def _retention_texts(config: EvidenceConfig, tokenizer: Any) -> dict[str, list[str]]:
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


def _token_batches(tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> list[dict[str, Any]]:
    """Right-padded batches of the texts, longest first (little padding per batch)."""
    from .kl import right_padded_batches

    ids = sorted(
        (tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts), key=len, reverse=True
    )
    return list(right_padded_batches(ids, batch_size, tokenizer.pad_token_id))


def evaluate_model(
    loaded: Any,
    config: EvidenceConfig,
    manifest: dict[str, Any],
    *,
    is_base: bool,
    is_disel: bool,
    base_model: Any = None,
) -> dict[str, Any]:
    """One model's evaluation record: ``correct`` (0/1 per test problem), ``exact_match``, ``perplexity`` and
    ``kl`` per domain (KL 0 for the base by definition), and for DISeL ``anti_aligned_*`` and ``gate_means``.
    ``base_model``: the reference of the KL (default: the model with its adapter disabled; pass the base when
    the adapted model's own base weights were changed, as by a static merge)."""
    from ..eval.generation import GenerationSettings, evaluate_gsm8k
    from .kl import mean_token_kl

    settings, (model, tokenizer) = config.evaluation, loaded[:2]
    started = time.perf_counter()
    generation = GenerationSettings(max_new_tokens=settings.max_new_tokens, batch_size=settings.generation_batch_size)
    graded = evaluate_gsm8k(
        model, tokenizer, manifest["test_rows"], settings=generation, template=training_template(config)
    )
    record: dict[str, Any] = {
        "correct": [int(s["correct"]) for s in graded["samples"]],
        "exact_match": graded["exact_match"],
        "perplexity": {},
        "kl": {},
        "generation_s": graded["seconds"],
        "longest_response_chars": max(len(s["response"]) for s in graded["samples"]),
    }
    for domain in DOMAINS:
        batches = _token_batches(
            tokenizer, manifest["retention"][domain], settings.retention_max_length, settings.retention_batch_size
        )
        result = mean_token_kl(model, batches, base_model=model if is_base else base_model)
        record["perplexity"][domain] = result.base_perplexity if is_base else result.perplexity
        record["kl"][domain] = 0.0 if is_base else result.mean_kl  # the base against itself: 0 by definition
    if is_disel:
        record.update(_gate_diagnostics(model, tokenizer, config, manifest))
    record["seconds"] = time.perf_counter() - started
    return record


def training_template(config: EvidenceConfig) -> str:
    """The prompt template (``data.template``) of the shared training recipe: the test problems are asked, and
    the gates read, in the words training used."""
    from ..config import DataConfig
    from .config import resolved_training_recipe

    return DataConfig.model_validate(resolved_training_recipe(config).get("data", {})).template


def _gate_diagnostics(model: Any, tokenizer: Any, config: EvidenceConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Anti-aligned fraction (overall and per layer) and mean gate on math / English / code (every real token)."""
    from ..data.templates import get_template
    from ..eval.gates import GateDomain, analyze_gates, mean_gate
    from .diagnostics import gate_alignment

    n, settings = config.evaluation.gate_sequences, config.evaluation
    template = get_template(training_template(config))
    texts = {
        "math": [template.format_prompt(r["instruction"]) + r["output"] for r in manifest["test_rows"][:n]],
        **{domain: manifest["retention"][domain][:n] for domain in DOMAINS},
    }
    gates = analyze_gates(
        model,
        tokenizer,
        [GateDomain(domain, texts=t) for domain, t in texts.items()],
        batch_size=settings.retention_batch_size,
        max_length=settings.retention_max_length,
    )
    alignment = gate_alignment(model)
    return {
        "anti_aligned_fraction": alignment.fraction,
        "anti_aligned_by_layer": alignment.by_layer,
        "min_cosine": alignment.min_cosine,
        "gate_means": {domain: mean_gate(summary) for domain, summary in gates["domains"].items()},
    }


def run_job(
    spec: RunSpec, config: EvidenceConfig, manifest: dict[str, Any], model_path: str, report: Report
) -> dict[str, Any]:
    """Train one (arm, seed) unless finished, then evaluate every checkpoint not yet evaluated."""
    from ..eval.generation import load_model_for_eval
    from ..eval.retention import list_checkpoints
    from ..train.run import RESULT_FILE, train

    if not (spec.run_dir / RESULT_FILE).is_file():
        result = train(spec.config)
        loss = "n/a" if result.final_train_loss is None else f"{result.final_train_loss:.3f}"
        report(f"{spec.label} train", f"{result.global_step} steps, last logged loss {loss}, {result.runtime_s:.0f} s")
    for step, path in list_checkpoints(spec.run_dir):
        target = spec.run_dir / "eval" / f"step-{step}.json"
        if target.is_file():
            continue
        loaded = load_model_for_eval(model_path, path, dtype=spec.config.model.dtype, device=config.device)
        record = {"step": step, **evaluate_model(loaded, config, manifest, is_base=False, is_disel=spec.is_disel)}
        write_json_atomic(target, record)
        report(f"{spec.label} step {step}", headline(record))
    return {"arm": spec.arm, "seed": spec.seed}


def headline(record: dict[str, Any]) -> str:
    """One line of a checkpoint's numbers."""
    text = (
        f"EM {record['exact_match']:.3f}, ppl en/code {record['perplexity']['english']:.2f}/"
        f"{record['perplexity']['code']:.2f}, KL en/code {record['kl']['english']:.4f}/{record['kl']['code']:.4f}"
    )
    if record.get("anti_aligned_fraction") is not None:
        gates = record["gate_means"]
        text += (
            f", anti-aligned {record['anti_aligned_fraction']:.3f}, gates math/en/code "
            f"{gates['math']:.3f}/{gates['english']:.3f}/{gates['code']:.3f}"
        )
    return text
