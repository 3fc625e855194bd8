"""What the frontier study (issue 17) costs in single-thread worker time, from measured stage times.

:func:`measured_stages` reads a study's output folder as the runner leaves it: every checkpoint evaluation
(``runs/*/eval/step-*.json``) records its seconds, of which ``generation_s`` (greedy generation on the test
problems) and ``retention_s`` (the KL / perplexity passes on English, code and the task's prompts, one forward
pass of the model per batch against the cached base log-probabilities); the rest is loading, the post-hoc
transform and, for DISeL, the gate diagnostics. Each trained run's ``train_result.json`` gives its seconds per
step. Stages the folder has not measured yet (e.g. before a DISeL or full fine-tuning run finished) come from
the evidence study's timing (``paper_figs/evidence/results.json``: per run ``train_runtime_s``, ``train_steps``
and ``eval_s``), or an assumed factor, as :class:`MeasuredStages` says. :func:`study_cost` adds them up for a
:class:`StudyPlan`::

    python -c "import sys; from disel.experiments.study import frontier_cost as f; print(f.cost_table(sys.argv[1]))" \
        paper_figs/frontier
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = [
    "EvidenceTiming",
    "MeasuredStages",
    "PLANS",
    "StudyPlan",
    "cost_table",
    "evidence_timing",
    "interpolation_error",
    "measured_stages",
    "study_cost",
]

EVIDENCE_RESULTS = Path("paper_figs") / "evidence" / "results.json"


@dataclass(frozen=True)
class EvidenceTiming:
    """Medians over the evidence runs: training seconds per step; evaluation seconds per checkpoint for LoRA
    and for DISeL arms (gate diagnostics included); the file's total and its run and checkpoint counts."""

    train_s_per_step: float
    eval_s_per_checkpoint: dict[str, float]
    total_s: float
    train_total_s: float
    runs: int
    checkpoints_per_run: int
    test_problems: int
    retention_tokens: int


def evidence_timing(path: str | Path) -> EvidenceTiming:
    """Read the evidence results file at ``path`` (``timing`` of every run; step 0 is the base, not timed)."""
    raw = json.loads(Path(path).read_text())
    runs = raw["runs"]
    per_step = [r["timing"]["train_runtime_s"] / r["timing"]["train_steps"] for r in runs]
    checkpoints = {len(r["checkpoints"]) - 1 for r in runs}
    if len(checkpoints) != 1:
        raise ValueError(f"{path}: runs differ in their number of checkpoints {sorted(checkpoints)}")
    count = checkpoints.pop()
    by_kind: dict[str, list[float]] = {}
    for run in runs:
        kind = "lora" if run["arm"] == "lora" else "disel"
        by_kind.setdefault(kind, []).append(run["timing"]["eval_s"] / count)
    total = sum(r["timing"]["train_runtime_s"] + r["timing"]["eval_s"] for r in runs)
    return EvidenceTiming(
        train_s_per_step=statistics.median(per_step),
        eval_s_per_checkpoint={kind: statistics.median(values) for kind, values in by_kind.items()},
        total_s=total,
        train_total_s=sum(r["timing"]["train_runtime_s"] for r in runs),
        runs=len(runs),
        checkpoints_per_run=count,
        test_problems=raw["n_test_problems"],
        retention_tokens=2 * raw["recipe"]["evidence"]["evaluation"]["retention_tokens"],
    )


@dataclass(frozen=True)
class MeasuredStages:
    """Seconds of each stage (medians): ``train_s_per_step`` of an adapter run; per checkpoint evaluation
    ``generation_s``, ``retention_s`` and ``other_s`` (loading, transform); ``gates_s`` added by a DISeL
    evaluation; ``base_s`` the base evaluation (once); ``full_step_factor`` a full fine-tuning step over an
    adapter step. ``sources``: stage → where its number comes from (this study's records or the evidence file
    or an assumption)."""

    train_s_per_step: float
    generation_s: float
    retention_s: float
    other_s: float
    gates_s: float
    base_s: float
    full_step_factor: float
    sources: dict[str, str] = field(default_factory=dict)


def measured_stages(study_dir: str | Path, evidence: str | Path = EVIDENCE_RESULTS) -> MeasuredStages:
    """The stage times of the study in ``study_dir`` (module docstring); ``FileNotFoundError`` without any
    evaluated checkpoint there."""
    from ..schemas import TrainResult
    from .records import CheckpointEval

    study, timing = Path(study_dir), evidence_timing(evidence)
    evals = {p: CheckpointEval.read(p) for p in sorted(study.glob("runs/*/eval/step-*.json"))}
    if not evals:
        raise FileNotFoundError(f"no runs/*/eval/step-*.json under {study}: nothing measured yet")
    adapter = [r for r in evals.values() if r.gate_means is None]
    disel = [r for r in evals.values() if r.gate_means is not None]
    rest = [r.seconds - r.generation_s - (r.retention_s or 0.0) for r in adapter]
    trained = [
        TrainResult.read(folder.parent)
        for folder in study.glob("runs/*/train_result.json")
        if (folder.parent / "eval").is_dir()
    ]
    steps: dict[str, list[float]] = {}  # method → seconds per step of each of its runs
    for r in trained:
        steps.setdefault(r.method, []).append((r.trainer_runtime_s or r.runtime_s) / r.global_step)
    per_step = {method: statistics.median(values) for method, values in steps.items()}
    adapter_step = per_step.get("lora", per_step.get("disel"))
    sources = {
        "train_s_per_step": "this study" if adapter_step else "evidence study",
        "gates_s": "this study" if disel else "evidence study (DISeL − LoRA evaluation)",
        "full_step_factor": "this study" if "full" in per_step and adapter_step else "assumed 1.5",
    }
    base = CheckpointEval.read(study / "base.json")
    median = statistics.median
    return MeasuredStages(
        train_s_per_step=adapter_step or timing.train_s_per_step,
        generation_s=median(r.generation_s for r in adapter),
        retention_s=median(r.retention_s for r in adapter),
        other_s=median(rest),
        gates_s=median(r.seconds - r.generation_s - r.retention_s for r in disel) - median(rest)
        if disel
        else timing.eval_s_per_checkpoint["disel"] - timing.eval_s_per_checkpoint["lora"],
        base_s=base.seconds,
        full_step_factor=per_step["full"] / adapter_step if "full" in per_step and adapter_step else 1.5,
        sources=sources,
    )


@dataclass(frozen=True)
class StudyPlan:
    """Runs of the study: ``adapter_runs`` (LoRA and DISeL) of which ``disel_runs``, ``full_runs``, evaluated
    ``checkpoints`` per run, ``posthoc_evaluations`` (transformed checkpoints), ``steps`` per training."""

    adapter_runs: int
    disel_runs: int
    full_runs: int
    checkpoints: int
    posthoc_evaluations: int
    steps: int = 120


def study_cost(stages: MeasuredStages, plan: StudyPlan) -> dict[str, float]:
    """Worker-seconds of each part of the study: training, generation, KL passes, the rest of the evaluations
    (loading, transforms, DISeL's gate diagnostics) and the total."""
    evaluations = (plan.adapter_runs + plan.full_runs) * plan.checkpoints + plan.posthoc_evaluations
    adapter_steps = plan.steps * (plan.adapter_runs + stages.full_step_factor * plan.full_runs)  # equivalent
    parts = {
        "training": stages.train_s_per_step * adapter_steps,
        "generation": evaluations * stages.generation_s,
        "kl_passes": evaluations * stages.retention_s,
        "other": evaluations * stages.other_s + plan.disel_runs * plan.checkpoints * stages.gates_s + stages.base_s,
    }
    return {**parts, "total": sum(parts.values())}


# The recipe (recipes/frontier/smollm2_frontier.yaml) and its second-seed phase: 4 LoRA + 4 DISeL + 2 gate-ratio
# arms, 3 full; the intruder reduction at 2 strengths on the evaluated checkpoints of the 4 LoRA arms.
PLANS: dict[str, StudyPlan] = {
    "phase 1 (the recipe: 4 checkpoints)": StudyPlan(10, 6, 3, 4, 2 * 4 * 4),
    "phase 1 with 6 checkpoints (uncut)": StudyPlan(10, 6, 3, 6, 2 * 4 * 6),
    "phase 1, intruders on 2 LoRA arms": StudyPlan(10, 6, 3, 4, 2 * 4 * 2),
    # seed 1 of the two best configurations of LoRA and DISeL (with the intruder arms of those LoRA runs)
    "phase 2 (seed 1, LoRA and DISeL)": StudyPlan(4, 2, 0, 4, 2 * 2 * 4),
    "phase 2 (seed 1, every method)": StudyPlan(4, 2, 2, 4, 2 * 2 * 4),
}


def cost_table(study_dir: str | Path, evidence: str | Path = EVIDENCE_RESULTS) -> str:
    """Markdown: the measured stage times, then worker-hours of each plan of :data:`PLANS`."""
    stages = measured_stages(study_dir, evidence)
    lines = [f"stages (s): {replace(stages, sources={})}", f"sources: {stages.sources}", ""]
    lines += ["| plan | training h | generation h | KL passes h | other h | total h |", "|---|---|---|---|---|---|"]
    for name, plan in PLANS.items():
        cost = study_cost(stages, plan)
        hours = " | ".join(f"{cost[k] / 3600:.1f}" for k in ("training", "generation", "kl_passes", "other", "total"))
        lines.append(f"| {name} | {hours} |")
    return "\n".join(lines)


def interpolation_error(path: str | Path, kept_steps: Sequence[int], domain: str = "english") -> float:
    """Largest change, over the evidence runs and 20 exact-match levels per run, of the path's KL (``domain``)
    when only ``kept_steps`` (and step 0) are evaluated instead of every checkpoint: what fewer checkpoints
    cost in interpolation along the path (:func:`~.fronts.path_front`)."""
    import numpy as np

    from .fronts import path_front

    worst = 0.0
    for run in json.loads(Path(path).read_text())["runs"]:
        steps = [c["step"] for c in run["checkpoints"]]
        accuracy = np.array([c["exact_match"]["estimate"] for c in run["checkpoints"]])
        kl = np.array([c["kl"][domain] for c in run["checkpoints"]])
        missing = sorted(set(kept_steps) - set(steps))
        if missing:
            raise ValueError(f"kept_steps {missing} were not evaluated in {path} (steps: {steps})")
        kept = [i for i, step in enumerate(steps) if step == 0 or step in kept_steps]
        levels = np.linspace(accuracy[0], accuracy.max(), 20)
        difference = path_front(accuracy[kept], kl[kept], levels) - path_front(accuracy, kl, levels)
        worst = max(worst, float(np.nanmax(np.abs(difference))))
    return worst
