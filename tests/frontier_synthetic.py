"""A synthetic frontier results file with known structure, for the frontier's results and figure tests.

Methods and configurations as the study recipe has them (LoRA and DISeL at three learning rates, full
fine-tuning at two, intruder-reduced LoRA at two strengths of one learning rate); each run's accuracy rises
towards a top that depends on its learning rate, and its per-text KL grows along the run with a per-method
slope (DISeL's the smallest), task-input KL being a fixed multiple of English KL plus noise.
"""

from __future__ import annotations

import numpy as np

from disel.experiments.study.frontier_results import FrontierResults, PointRun, TextRecord

STEPS = [0, 30, 60, 90, 120]
SLOPES = {"lora": 1.0, "disel": 0.5, "full": 1.5, "lora_intruder": 0.8}
ARMS = [
    ("lora", 1.25e-4, {}),
    ("lora", 5e-4, {}),
    ("lora", 2e-3, {}),
    ("disel", 1.25e-4, {}),
    ("disel", 5e-4, {}),
    ("disel", 2e-3, {}),
    ("full", 1e-5, {}),
    ("full", 5e-5, {}),
    ("lora_intruder", 5e-4, {"mitigation_lambda": 0.5}),
    ("lora_intruder", 5e-4, {"mitigation_lambda": 0.0}),
]


def _texts(rng: np.random.Generator, kl_per_token: np.ndarray, count: int) -> TextRecord:
    tokens = rng.integers(20, 80, size=count).astype(float)
    kl = np.abs(kl_per_token[:, None] * (1 + 0.3 * rng.standard_normal((len(STEPS), count)))) * tokens
    kl[0] = 0.0  # the base against itself
    nll = (3.0 + kl / tokens) * tokens
    return TextRecord(tokens.tolist(), kl.tolist(), nll.tolist())


def synthetic_frontier(problems: int = 60, seed: int = 0) -> FrontierResults:
    rng = np.random.default_rng(seed)
    base_correct = rng.random(problems) < 0.05
    runs = []
    for method, rate, extra in ARMS:
        top = 0.6 - 0.15 * abs(np.log10(rate * (10 if method == "full" else 1) / 5e-4))
        accuracy = 0.05 + (top - 0.05) * (1 - np.exp(-np.array(STEPS) / 40))
        correct = rng.random((len(STEPS), problems)) < accuracy[:, None]
        correct[0] = base_correct
        kl = SLOPES[method] * accuracy * rate / 5e-4 * (10 if method == "full" else 1) ** 0.5 * 0.1
        kl[0] = 0.0
        settings = {"learning_rate": rate, **extra}
        name = ",".join(f"{k}={v:g}" for k, v in settings.items())
        runs.append(
            PointRun(
                method,
                name,
                0,
                STEPS,
                ["".join("1" if c else "0" for c in row) for row in correct],
                {"english": _texts(rng, kl, 6), "code": _texts(rng, 0.8 * kl, 6), "task": _texts(rng, 2 * kl, 8)},
                settings=settings,
                source=f"lora/learning_rate={rate:g}/seed0" if method == "lora_intruder" else None,
            )
        )
    return FrontierResults(model="synthetic", task="arithmetic", n_test_problems=problems, runs=runs)
