"""Small but real result files for the figure scripts, made by tiny-model runs of the experiment path.

:func:`make_tiny_results` runs, on the CPU in well under a minute, what the paper's GPU runs do at scale:

1. trains a 3-layer tiny Llama (``tiny_models.make_tiny_causal_lm``) with
   :func:`disel.experiments.train.run.train` on arithmetic word problems, for DISeL and LoRA at ranks 2 and 4
   and seeds 0 and 1, saving a checkpoint every 2 steps;
2. evaluates the base model and every checkpoint with
   :func:`disel.experiments.eval.retention.evaluate_checkpoints`: perplexity on English prose and code
   (the retention stand-in) and GSM8K-style exact match on held-out problems (the fine-tuning score);
3. records the gates of two DISeL adapters on three domains (math, general text, code) with
   :func:`disel.experiments.eval.gates.analyze_gates`;
4. builds the tradeoff table from those tables with
   :func:`disel.experiments.tables.tradeoff_table_from_runs` and writes it;
5. writes Figure 1's numbers with a short run of ``python -m toy figure1``.

The layout is the one ``python -m paper_figs.run_all --results ROOT`` reads (module doc there), with
the perplexity table as retention (``--retention-evaluator perplexity``) and the same runs standing in
for the code-tuned model. A tiny random model learns no arithmetic in 4 steps: the exact-match curves are
flat at 0 and the figures show exactly that; the point is that every number on them came out of the
library.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tiny_models import make_tiny_causal_lm

__all__ = ["TinyResults", "make_tiny_results"]

METHODS = ("disel", "lora")
RANKS = (2, 4)
SEEDS = (0, 1)
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TinyResults:
    """Where :func:`make_tiny_results` put everything, and how long each stage took (seconds)."""

    root: Path
    base_model: Path
    runs_dir: Path
    tradeoff: Path
    gates_math: Path
    gates_code: Path
    seconds: dict[str, float] = field(default_factory=dict)

    def run_all_argv(self, out: Path) -> list[str]:
        """Arguments for ``paper_figs.run_all.main`` drawing every figure from these files."""
        return [
            "--results", str(self.root), "--out", str(out),
            "--runs-dir-code", str(self.runs_dir), "--retention-evaluator", "perplexity",
            "--code-ft-evaluator", "gsm8k", "--tradeoff-log-x",
        ]  # fmt: skip


def make_tiny_results(root: Path, *, steps: int = 4, save_steps: int = 2) -> TinyResults:
    """Train, evaluate and record into ``root`` (see the module docstring); returns the paths."""
    from disel.experiments.config import config_from_dict
    from disel.experiments.data.arithmetic import generate_problems, write_jsonl
    from disel.experiments.data.offline_text import general_english_texts, python_function_tasks
    from disel.experiments.data.templates import format_prompt
    from disel.experiments.eval.evaluators import Gsm8kEvaluator, PerplexityEvaluator
    from disel.experiments.eval.gates import GateDomain, analyze_gates, save_gates
    from disel.experiments.eval.generation import GenerationSettings
    from disel.experiments.eval.retention import evaluate_checkpoints
    from disel.experiments.models import load_model_for_eval
    from disel.experiments.tables import tradeoff_table_from_runs
    from disel.experiments.train.run import train

    root = Path(root)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    base = make_tiny_causal_lm(root / "base_model", num_hidden_layers=3)  # 3 layers: one per depth third
    train_file = write_jsonl(generate_problems(32, seed=0), root / "data" / "math_train.jsonl")
    held_out = [problem.as_row() for problem in generate_problems(4, seed=1)]
    english = general_english_texts(3, seed=1)
    code_tasks = python_function_tasks(3, seed=1)
    code_texts = [task["output"] for task in code_tasks]
    seconds["setup"] = time.perf_counter() - started

    runs_dir = root / "runs_math"
    perplexity = PerplexityEvaluator({"english": english, "code": code_texts}, max_length=64, batch_size=8)
    exact_match = Gsm8kEvaluator(held_out, GenerationSettings(max_new_tokens=6, batch_size=4))
    seconds["train"] = seconds["evaluate"] = 0.0
    for method in METHODS:
        for rank in RANKS:
            for seed in SEEDS:
                output_dir = runs_dir / f"{method}_r{rank}_s{seed}"
                config = config_from_dict(
                    {
                        "name": output_dir.name,
                        "model": {"path": str(base)},
                        "data": {"train_files": [str(train_file)], "template": "alpaca", "max_length": 96},
                        "method": {"name": method, "r": rank, "target_modules": TARGET_MODULES, "lora_dropout": 0.0},
                        "training": {
                            "output_dir": str(output_dir), "max_steps": steps, "save_steps": save_steps,
                            "per_device_train_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1,
                            "seed": seed, "use_cpu": True, "disable_tqdm": True,
                        },
                    },
                    source="tests/fixtures_results.py",
                )  # fmt: skip
                tick = time.perf_counter()
                train(config)
                seconds["train"] += time.perf_counter() - tick
                tick = time.perf_counter()
                for evaluator in (perplexity, exact_match):
                    evaluate_checkpoints(output_dir, evaluator, base_path=base, progress=None)
                seconds["evaluate"] += time.perf_counter() - tick

    tick = time.perf_counter()
    domains = [
        GateDomain("math", examples=held_out, format_prompt=lambda q: format_prompt("alpaca", q)),
        GateDomain("general", texts=english),
        GateDomain("code", examples=code_tasks, format_prompt=lambda q: format_prompt("magicoder", q)),
    ]
    gate_files = {}
    for name, rank in (("gates_math.json", 4), ("gates_code.json", 2)):
        loaded = load_model_for_eval(base, runs_dir / f"disel_r{rank}_s0", device="cpu")
        record = analyze_gates(loaded.model, loaded.tokenizer, domains, bins=10, max_length=256,
                               description={"run": f"disel_r{rank}_s0"})  # fmt: skip
        save_gates(record, root / name)
        gate_files[name] = root / name
    seconds["gates"] = time.perf_counter() - tick

    tradeoff = root / "tradeoff_llm_tiny.json"
    table = tradeoff_table_from_runs(
        sorted(runs_dir.iterdir()), ft_evaluator="gsm8k", retention_evaluator="perplexity",
        retention_higher_is_better=False, ft_metric_name="exact match (held-out problems)",
        retention_metric_name="perplexity (English + code)", title="tiny Llama, arithmetic",
    )  # fmt: skip
    table.write(tradeoff)
    # The same numbers as Figure 2's input (its plot type: log perplexity axis, seed error bars).
    table.write(root / "tradeoff_glue.json")

    tick = time.perf_counter()
    from toy.__main__ import main as toy_main

    toy_main(["figure1", "--steps", "20", "--no-progress", "--out", str(root)])
    seconds["toy"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started
    return TinyResults(
        root, base, runs_dir, tradeoff, gate_files["gates_math.json"], gate_files["gates_code.json"], seconds
    )
