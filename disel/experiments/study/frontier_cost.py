"""What the frontier study (issue 17) costs in single-thread worker time, from the evidence study's own timing.

The evidence results file records per run ``timing``: ``train_runtime_s`` and ``train_steps`` (the Trainer's
last invocation: a resumed run reports only its last part, so medians are used), and ``eval_s`` (all its
checkpoint evaluations: greedy generation on the test problems, then KL/perplexity passes on the retention
texts, and for DISeL the gate diagnostics). An evaluation's split into generation and forward passes is not
in that file: :class:`EvaluationSplit` gives it from a measurement (``generation_s_per_problem`` and
``forward_s_per_token`` for one token through both the model and its base, on the same machine), used only as
a ratio to apportion the file's ``eval_s``.

    python -m disel.experiments.study.frontier_cost    # measures the split first (about 2 minutes)
    python -m disel.experiments.study.frontier_cost --generation-s-per-problem 1.37 --forward-s-per-token 0.0288
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EvaluationSplit",
    "EvidenceTiming",
    "StudyPlan",
    "evidence_timing",
    "interpolation_error",
    "measure_evaluation_split",
    "study_cost",
]


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
class EvaluationSplit:
    """Measured on one machine: greedy generation seconds per test problem; seconds per token through the
    model and its base (one KL pass)."""

    generation_s_per_problem: float
    forward_s_per_token: float

    def generation_fraction(self, problems: int, tokens: int) -> float:
        """Fraction of an evaluation spent generating, for ``problems`` problems and ``tokens`` KL tokens."""
        generation = self.generation_s_per_problem * problems
        return generation / (generation + self.forward_s_per_token * tokens)


@dataclass(frozen=True)
class StudyPlan:
    """Runs of the study: ``adapter_runs`` (LoRA and DISeL), ``full_runs``, evaluated ``checkpoints`` per run,
    ``posthoc_evaluations`` (transformed checkpoints), ``task_tokens`` added to each evaluation's KL passes,
    ``full_step_factor``: a full fine-tuning step's cost over an adapter step's, ``disel_share`` of the adapter
    runs, ``problems`` test problems generated per evaluation."""

    adapter_runs: int
    full_runs: int
    checkpoints: int
    posthoc_evaluations: int
    task_tokens: int
    disel_share: float
    steps: int = 120
    full_step_factor: float = 1.5
    problems: int = 200
    base_logits_cached: bool = False
    """The base model's next-token distributions on the (fixed) texts computed once, not at every checkpoint:
    a KL pass then runs the tuned model only (half the forward passes; needs a change in ``kl.py``)."""


def study_cost(timing: EvidenceTiming, split: EvaluationSplit, plan: StudyPlan) -> dict[str, float]:
    """Worker-seconds of each part of the study: training, generation, KL passes, and the total.

    An evaluation's seconds (the evidence file's, per kind) are split by :class:`EvaluationSplit`; its KL part
    grows with the task-input tokens and halves with cached base logits. Adapter runs' evaluations mix the
    DISeL (gate diagnostics) and LoRA costs by ``disel_share``; full and post-hoc evaluations cost LoRA's.
    """
    fraction = split.generation_fraction(timing.test_problems, timing.retention_tokens)
    kl_scale = (timing.retention_tokens + plan.task_tokens) / timing.retention_tokens
    kl_scale *= 0.5 if plan.base_logits_cached else 1.0
    cost = timing.eval_s_per_checkpoint
    adapter = plan.disel_share * cost["disel"] + (1 - plan.disel_share) * cost["lora"]  # one evaluation
    evaluated = (
        plan.adapter_runs * plan.checkpoints * adapter
        + (plan.full_runs * plan.checkpoints + plan.posthoc_evaluations) * cost["lora"]
    )
    training_steps = plan.steps * (plan.adapter_runs + plan.full_step_factor * plan.full_runs)
    parts = {
        "training": timing.train_s_per_step * training_steps,
        "generation": evaluated * fraction * plan.problems / timing.test_problems,
        "kl_passes": evaluated * (1 - fraction) * kl_scale,
    }
    return {**parts, "total": sum(parts.values())}


def measure_evaluation_split(problems: int = 25, texts: int = 6) -> EvaluationSplit:
    """Time, single-threaded on SmolLM2-135M (the base model), greedy generation on ``problems`` of the evidence
    test problems (one batch) and one KL pass (model and base) over ``texts`` English retention texts."""
    import time

    import torch

    from ..data.arithmetic import train_and_test_problems
    from ..data.offline_text import general_english_texts
    from ..eval.generation import GenerationSettings, evaluate_gsm8k
    from ..models import force_offline, load_model_for_eval, smollm2_path
    from .kl import mean_token_kl, right_padded_batches

    force_offline()
    torch.set_num_threads(1)
    model, tokenizer = load_model_for_eval(smollm2_path(), None, device="cpu")[:2]
    rows = [p.as_row() for p in train_and_test_problems(1000, 200, 0)[1][:problems]]
    started = time.perf_counter()
    evaluate_gsm8k(model, tokenizer, rows, settings=GenerationSettings(max_new_tokens=44, batch_size=problems))
    generation = (time.perf_counter() - started) / problems
    ids = [tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in general_english_texts(150, seed=101)]
    ids = sorted(ids[:texts], key=len, reverse=True)
    started = time.perf_counter()
    mean_token_kl(model, right_padded_batches(ids, 8, tokenizer.pad_token_id), base_model=model)
    return EvaluationSplit(generation, (time.perf_counter() - started) / sum(len(i) for i in ids))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("paper_figs/evidence/results.json"))
    parser.add_argument("--generation-s-per-problem", type=float, help="measured; omit both to measure now")
    parser.add_argument("--forward-s-per-token", type=float, help="one KL pass (model and base), per token")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    timing = evidence_timing(args.results)
    if args.generation_s_per_problem is None or args.forward_s_per_token is None:
        split = measure_evaluation_split()
    else:
        split = EvaluationSplit(args.generation_s_per_problem, args.forward_s_per_token)
    print(f"split: {split}")
    print(f"evidence: {timing}")
    share = timing.train_total_s / timing.total_s
    print(f"evidence runs: {timing.total_s:.0f} worker-s, training {share:.0%}, evaluation {1 - share:.0%}")
    print(f"generation share of an evidence evaluation: {split.generation_fraction(200, timing.retention_tokens):.2f}")
    for kept in ([20, 40, 60, 120], [40, 80, 100, 120], [20, 60, 120]):
        print(f"interpolation error, checkpoints {kept}: {interpolation_error(args.results, kept):.4f} KL (English)")
    print("| plan | training h | generation h | KL passes h | total h |\n|---|---|---|---|---|")
    for name, plan in PLANS.items():
        cost = study_cost(timing, split, plan)
        hours = " | ".join(f"{cost[k] / 3600:.1f}" for k in ("training", "generation", "kl_passes", "total"))
        print(f"| {name} | {hours} |")
    return 0


# The recipe (recipes/frontier/smollm2_frontier.yaml), its second-seed phase, and what it would cost uncut.
# Phase 1: 4 LoRA + 4 DISeL + 2 gate-ratio arms (6 of 10 DISeL), 3 full; intruder reduction at 2 strengths on
# the 4 evaluated checkpoints of the 4 LoRA arms. Task inputs: 64 prompts of about 40 tokens.
_TASK_TOKENS = 64 * 40
_CACHED = {"base_logits_cached": True}
PLANS: dict[str, StudyPlan] = {
    "phase 1, 4 checkpoints (the recipe)": StudyPlan(10, 3, 4, 2 * 4 * 4, _TASK_TOKENS, 0.6),
    "phase 1, 6 checkpoints (uncut)": StudyPlan(10, 3, 6, 2 * 4 * 6, _TASK_TOKENS, 0.6),
    "phase 1, 4 checkpoints, 128 task prompts": StudyPlan(10, 3, 4, 2 * 4 * 4, 2 * _TASK_TOKENS, 0.6),
    # Phase 2: seed 1 of each method's two best configurations: 2 LoRA + 2 DISeL + (at most) 2 more LoRA
    # sources of the intruder arm's best two, 2 full; their post-hoc evaluations (2 configurations x 4).
    "phase 2 (second seeds)": StudyPlan(6, 2, 4, 2 * 4, _TASK_TOKENS, 2 / 6),
    "phase 1, base logits cached": StudyPlan(10, 3, 4, 2 * 4 * 4, _TASK_TOKENS, 0.6, base_logits_cached=True),
    "phase 2, LoRA and DISeL only, cached": StudyPlan(4, 0, 4, 2 * 4, _TASK_TOKENS, 0.5, base_logits_cached=True),
    "phase 1, cached, intruders on 2 LoRA arms": StudyPlan(10, 3, 4, 2 * 4 * 2, _TASK_TOKENS, 0.6, **_CACHED),
    "phase 1, cached, 100 problems": StudyPlan(10, 3, 4, 2 * 4 * 4, _TASK_TOKENS, 0.6, problems=100, **_CACHED),
}


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


if __name__ == "__main__":
    raise SystemExit(main())
