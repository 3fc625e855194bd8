"""The last stage: the results file (:mod:`.results`), the matched comparisons, the table and the verdict.

The verdict sentence is generated from the numbers: for each compared arm, the retention difference
against the reference arm at the matched exact-match levels, read on English KL (the more sensitive
metric), with its 95% interval; level by level it says "retains more", "retains less" or "no clear
difference" according to whether the interval excludes 0, and says so plainly when the arms share no
accuracy range.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..models import ADAPTER_CONFIG_FILE, is_adapter_dir, make_adapter_portable, portable_path, portable_paths
from ..schemas import TrainResult
from .config import RunSpec, StudyConfig
from .records import CheckpointEval
from .results import (
    CheckpointRecord,
    EvidenceResults,
    Interval,
    MatchedComparison,
    RunRecord,
    compare_arms,
)
from .stages import DOMAINS, GATE_DOMAINS
from .stats import exact_match_interval

__all__ = ["build_results", "copy_final_adapters", "format_table", "verdict"]


def _checkpoint(record: CheckpointEval, rng: np.random.Generator, replicates: int) -> CheckpointRecord:
    by_layer = record.anti_aligned_by_layer
    return CheckpointRecord(
        step=record.step,
        exact_match=Interval(*exact_match_interval(np.array(record.correct), rng, replicates)),
        perplexity=dict(record.perplexity),
        kl=dict(record.kl),
        anti_aligned_fraction=record.anti_aligned_fraction,
        anti_aligned_by_layer=None if by_layer is None else {int(k): v for k, v in by_layer.items()},
        gate_means=record.gate_means,
    )


def checkpoint_evals(spec: RunSpec) -> list[CheckpointEval]:
    """The run's evaluated checkpoints, by step."""
    return sorted((CheckpointEval.read(p) for p in (spec.run_dir / "eval").glob("step-*.json")), key=lambda r: r.step)


def _run_record(
    spec: RunSpec, base: CheckpointEval, rng: np.random.Generator, replicates: int, adapter: str | None
) -> RunRecord:
    """The run's path: the base model as step 0, then every evaluated checkpoint."""
    evals = checkpoint_evals(spec)
    records = [base, *evals]
    train = TrainResult.read(spec.source_dir)  # a post-hoc arm's: its source's training
    return RunRecord(
        arm=spec.arm,
        seed=spec.seed,
        checkpoints=[_checkpoint(r, rng, replicates) for r in records],
        correct=np.array([r.correct for r in records], dtype=bool),
        adapter=adapter,
        timing={
            "train_runtime_s": float(train.trainer_runtime_s or train.runtime_s),
            "train_steps": float(train.global_step),
            "eval_s": float(sum(r.seconds for r in evals)),
        },
    )


def build_results(
    config: StudyConfig,
    specs: list[RunSpec],
    base: CheckpointEval,
    throughput: dict[str, Any],
    adapters: dict[str, str],
    recipe: dict[str, Any],
) -> EvidenceResults:
    """Every run's path, and each arm against the reference arm (perplexity and KL, English and code); the adapter
    folders and the recipe's paths recorded portably (:func:`~disel.experiments.models.portable_path`)."""
    rng = np.random.default_rng(config.problems.data_seed + 9)
    replicates, fractions = config.evaluation.bootstrap_replicates, tuple(config.evaluation.matched_fractions)
    adapters = {label: portable_path(folder) for label, folder in adapters.items()}
    runs = [_run_record(s, base, rng, replicates, adapters.get(s.label)) for s in specs]
    comparisons = [
        compare_arms(runs, arm, config.reference_of(arm), kind, domain, rng, fractions=fractions, replicates=replicates)
        for arm in config.arms
        if arm != config.reference_of(arm)
        for kind in ("kl", "perplexity")
        for domain in DOMAINS
    ]
    return EvidenceResults(
        model=portable_path(specs[0].config.model.path),
        task="arithmetic word problems (exact match)",
        n_test_problems=len(base.correct),
        runs=runs,
        comparisons=comparisons,
        base=_checkpoint(base, rng, replicates),
        throughput=throughput,
        recipe=portable_paths(recipe),
    )


def copy_final_adapters(specs: list[RunSpec], target: Path) -> dict[str, str]:
    """``target/<arm>-seed<k>/`` ← each run's final adapter (safetensors + config, its base named portably:
    :func:`~disel.experiments.models.make_adapter_portable`); label → folder."""
    copied = {}
    for spec in specs:
        if not is_adapter_dir(spec.run_dir):
            continue  # a full fine-tuning or post-hoc arm: no adapter of its own to ship
        folder = target / spec.label
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("adapter_model.safetensors", ADAPTER_CONFIG_FILE):
            if (spec.run_dir / name).is_file():
                shutil.copy2(spec.run_dir / name, folder / name)
        make_adapter_portable(folder)  # is_adapter_dir: the config was copied
        copied[spec.label] = str(folder)
    return copied


def _final(results: EvidenceResults, arm: str, kind: str, domain: str) -> tuple[float, float]:
    """Mean over seeds of the last checkpoint's exact match and retention."""
    lasts = [run.checkpoints[-1] for run in results.runs_of(arm)]
    return (
        float(np.mean([c.exact_match.estimate for c in lasts])),
        float(np.mean([c.retention(kind, domain) for c in lasts])),
    )


def _header(columns: str) -> list[str]:
    """A markdown table's header line ``| a | b |`` and the rule under it."""
    return [columns, "|" + "---|" * (columns.count(" | ") + 1)]


def format_table(results: EvidenceResults) -> str:
    """Markdown: final exact match and retention per arm (seed means), then every matched difference."""
    lines = _header("| arm | seeds | exact match | ppl English | ppl code | KL English | KL code |")
    base = results.base
    lines.append(
        f"| base | - | {base.exact_match.estimate:.3f} | {base.perplexity['english']:.3f} | "
        f"{base.perplexity['code']:.3f} | 0 | 0 |"
    )
    for arm, seeds in results.seeds.items():
        em, _ = _final(results, arm, "kl", "english")
        cells = [
            f"{_final(results, arm, kind, d)[1]:.{3 if kind == 'perplexity' else 4}f}"
            for kind in ("perplexity", "kl")
            for d in DOMAINS
        ]
        lines.append(f"| {arm} | {len(seeds)} | {em:.3f} | " + " | ".join(cells) + " |")
    lines += ["", *_header("| arm − reference | retention | exact-match level | difference [95% interval] | defined |")]
    for comp in results.comparisons:
        for d in comp.differences:
            lines.append(
                f"| {comp.arm} − {comp.reference_arm} | {comp.kind} {comp.domain} | {d.level:.3f} | "
                f"{d.difference:+.4f} [{d.low:+.4f}, {d.high:+.4f}] | {d.defined_fraction:.2f} |"
            )
    return "\n".join(lines) + "\n"


def diagnostics_table(results: EvidenceResults) -> str:
    """Markdown: per DISeL arm the largest anti-aligned fraction over every checkpoint and seed and the final gate
    means (seed means); then each measured arm's training speed against the FLOP limit of its step."""
    lines = _header("| arm | seeds | max anti-aligned fraction | final gate mean math | English | code |")
    for arm, seeds in results.seeds.items():
        runs = results.runs_of(arm)
        fractions = [c.anti_aligned_fraction for run in runs for c in run.checkpoints if c.step > 0]
        if any(f is None for f in fractions):
            continue  # not a DISeL arm
        gates = [np.mean([run.checkpoints[-1].gate_means[d] for run in runs]) for d in GATE_DOMAINS]
        lines.append(f"| {arm} | {len(seeds)} | {max(fractions):.3f} | " + " | ".join(f"{g:.3f}" for g in gates) + " |")
    lines += ["", *_header("| arm (run measured) | training tokens/s | FLOP-limit tokens/s | fraction | padding |")]
    for arm, r in results.throughput.get("arms", {}).items():
        lines.append(
            f"| {arm} ({r['run']}) | {r['tokens_per_s']:.1f} | {r['flop_limit_tokens_per_s']:.1f} | "
            f"{r['fraction_of_flop_limit']:.2f} | {r['padding_fraction']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _sentence(comp: MatchedComparison) -> str:
    """The verdict for one arm, level by level: MORE where the interval is below 0 (closer to the base), LESS
    where it is above 0, NO clear difference where it covers 0."""
    if not comp.differences:
        return (
            f"{comp.arm} and {comp.reference_arm} reach no common exact-match range, so they cannot be "
            f"compared at equal accuracy."
        )
    groups: dict[str, list[str]] = {"MORE": [], "LESS": [], "NO": []}  # finding → its levels (with intervals)
    for d in comp.differences:
        finding = "MORE" if d.high < 0 else "LESS" if d.low > 0 else "NO"
        groups[finding].append(f"{d.level:.2f} ({d.difference:+.4f} [{d.low:+.4f}, {d.high:+.4f}])")
    ref = comp.reference_arm
    findings = [
        f"retains {k} of the base model than {ref} at {', '.join(groups[k])}" for k in ("MORE", "LESS") if groups[k]
    ]
    if groups["NO"]:
        findings.append(f"shows NO clear retention difference from {ref} at {', '.join(groups['NO'])}")
    return (
        f"At equal exact match, {comp.arm} {'; '.join(findings)}: difference in {comp.kind} on {comp.domain} text "
        f"at each exact-match level, with its 95% bootstrap interval over test problems and seeds "
        f"(negative = closer to the base)."
    )


def verdict(results: EvidenceResults) -> str:
    """One sentence per compared arm, on English KL (module docstring)."""
    chosen = [c for c in results.comparisons if c.kind == "kl" and c.domain == "english"]
    return "\n".join(_sentence(c) for c in chosen)
