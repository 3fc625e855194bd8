"""``disel-evidence`` (also ``python -m disel.experiments.study``): the issue-9 experiment from one recipe.

    disel-evidence --recipe recipes/evidence/smollm2_tradeoff.yaml --output-dir runs/evidence --workers 2
    disel-evidence --recipe ... --device cuda --override model.dtype=bfloat16 training.bf16=true

``--override`` keys of a training-recipe section (model, data, method, training) apply to every arm's training
recipe; other keys set the evidence recipe (``problems.test=8``, ``evaluation.max_new_tokens=16``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..cli._args import add_override_argument

__all__ = ["build_parser", "main"]

DEFAULT_RECIPE = "recipes/evidence/smollm2_tradeoff.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disel-evidence",
        allow_abbrev=False,
        description=(
            "Does DISeL forget less than LoRA at equal accuracy? Trains every arm and seed of the recipe, evaluates "
            "each checkpoint, and writes results.json, summary.md, figures and the final adapters (resumable)."
        ),
    )
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"evidence recipe (default {DEFAULT_RECIPE})")
    parser.add_argument(
        "--output-dir", default="runs/evidence", help="where every stage writes (default runs/evidence)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="(arm, seed) jobs run at once, each in its own single-thread process (default 1: in this process)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--arms",
        nargs="+",
        metavar="ARM",
        help="only these arms of the recipe (default: all), e.g. to aggregate the arms a running experiment "
        "has finished: stages already done are reused",
    )
    add_override_argument(parser, help="e.g. training.max_steps=2 problems.test=8 model.dtype=bfloat16")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads of this process (default: torch's choice)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..cli import preflight
    from ..config import ConfigError
    from .config import load_evidence_config

    try:  # every argument checked before any model is loaded
        preflight.check_positive(args.workers, "--workers")
        preflight.check_positive(args.threads, "--threads")
        preflight.check_output_dir(args.output_dir, "--output-dir")
        config = load_evidence_config(args.recipe, args.override, device=args.device, arms=args.arms)
    except (ConfigError, preflight.UsageError) as error:
        return preflight.report("disel-evidence", error)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .run import run_evidence

    try:
        summary = run_evidence(config, args.output_dir, workers=args.workers)
    except (ConfigError, FileNotFoundError) as error:
        return preflight.report("disel-evidence", error)
    print(summary["table"])
    print(summary["verdict"])
    return 0
