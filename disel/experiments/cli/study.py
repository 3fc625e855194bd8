"""``disel-study``: one SmolLM2 study from its recipe (:mod:`disel.experiments.study`): trains every arm and seed,
evaluates each checkpoint (exact match, perplexity and KL to the base, gates), and writes results.json, summary.md,
the final adapters and, if the recipe asks, the files paper_figs draws (resumable).

    disel-study --recipe recipes/evidence/smollm2_tradeoff.yaml --output-dir runs/evidence --workers 2
    disel-study --recipe recipes/comparison/smollm2_methods_ranks.yaml --output-dir runs/smollm2-methods-ranks
    disel-study --recipe ... --device cuda --override model.dtype=bfloat16 training.bf16=true
    disel-study --recipe recipes/evidence/smollm2_compression.yaml

``--override`` keys of a training-recipe section (model, data, method, training) apply to every arm's training
recipe; other keys set the study recipe (``problems.test=8``, ``evaluation.max_new_tokens=16``). A recipe with
``kind: compression`` is the compression study of a finished evidence run
(:class:`~disel.experiments.study.compression.CompressionConfig`; ``--override`` sets its keys, ``--output-dir``
its ``out``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._args import add_override_argument

__all__ = ["build_parser", "main"]

DEFAULT_RECIPE = "recipes/evidence/smollm2_tradeoff.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disel-study", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"study recipe (default {DEFAULT_RECIPE})")
    parser.add_argument(
        "--output-dir", help="where every stage writes (default runs/<recipe name>; a compression recipe: its out)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="jobs run at once, each in its own single-thread process: (arm, seed) runs, or a continual study's "
        "selection candidates and (arm, order) runs (default 1: in this process)",
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
    parser.add_argument("--threads", type=int, help="torch threads of this process (default: torch's choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from ..config import ConfigError, read_recipe
    from . import preflight

    try:  # every argument checked before any model is loaded
        preflight.check_positive(args.workers, "--workers")
        preflight.check_positive(args.threads, "--threads")
        if args.threads:
            torch.set_num_threads(args.threads)
        if preflight.as_usage_error(read_recipe, args.recipe, prefix="--recipe: ").get("kind") == "compression":
            return _compression(args)
        from ..study.config import load_study_config

        config = load_study_config(args.recipe, args.override, device=args.device, arms=args.arms)
        args.output_dir = args.output_dir or f"runs/{config.name}"
        preflight.check_output_dir(args.output_dir, "--output-dir")
        if config.model_path is not None:
            preflight.check_model_dir(config.model_path, "model_path")
    except ValueError as error:  # ConfigError, UsageError and pydantic's ValidationError are ValueErrors
        return preflight.report("disel-study", error)
    from ..study.run import run_study

    try:
        summary = run_study(config, args.output_dir, workers=args.workers)
    except (ConfigError, FileNotFoundError) as error:
        return preflight.report("disel-study", error)
    print(summary["table"])
    print(summary["verdict"])
    return 0


def _compression(args: argparse.Namespace) -> int:
    """The compression study of a ``kind: compression`` recipe (errors propagate to :func:`main`'s report)."""
    from ..config import apply_overrides, read_recipe
    from ..study.compression import CompressionConfig, check_compression, format_table, run_compression

    raw = apply_overrides(read_recipe(args.recipe), args.override)
    settings = CompressionConfig.model_validate(
        {**raw, "device": args.device, **({"out": args.output_dir} if args.output_dir else {})}
    )
    check_compression(settings)
    print(format_table(run_compression(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
