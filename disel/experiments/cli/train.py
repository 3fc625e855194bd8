"""``disel-train``: fine-tune a local model with DISeL, LoRA, DoRA, AdaLoRA or full fine-tuning from a recipe file
(the command line over :func:`disel.experiments.train.run.train`).

Usage::

    disel-train --config recipes/llama2_7b_metamath_disel.yaml \\
        --override model.path=/models/Llama-2-7b-hf data.train_files=[/data/MetaMathQA-395K.json]
    disel-train --config recipe.yaml --print-config        # resolved config, then exit
    accelerate launch --config_file accelerate_configs/ddp.yaml -m disel.experiments --config recipe.yaml
    torchrun --nproc_per_node 4 -m disel.experiments --config recipe.yaml

A bad config, data row, model path, output directory or target module, a damaged checkpoint or a resume with a
changed recipe prints one line naming the key / file / line and exits with status 2 (:mod:`.preflight` checks
before any weights are read); anything else raises with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._args import add_override_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disel-train", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", required=True, help="recipe file (YAML or JSON), e.g. recipes/roberta_base_sst2_disel.yaml"
    )
    add_override_argument(
        parser,
        help="set a config value, e.g. training.max_steps=100 method.r=16 (values parsed as YAML); repeatable",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument(
        "--allow-config-change",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY",
        help="on resume, accept these changed config keys (dotted, wildcards allowed), e.g. training.logging_steps",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, train, print a summary; return the exit status (0, or 2 for a usage/data error)."""
    from ..models import force_offline

    force_offline()  # before transformers/datasets read the variables at import
    args = build_parser().parse_args(argv)

    from ..config import ConfigError, load_config
    from ..data.datasets import DataFormatError
    from ..train.checkpoints import DamagedCheckpointError
    from . import preflight

    try:
        config = load_config(args.config, args.override)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        from ..train.run import RESULT_FILE, train

        preflight.check_training(config)  # before any weights are read
        result = train(config, allow_config_change=args.allow_config_change)
    except (ConfigError, preflight.UsageError, DataFormatError, FileNotFoundError, DamagedCheckpointError) as error:
        return preflight.report("disel-train", error)
    if int(os.environ.get("RANK", "0")) == 0:  # the main process of a data-parallel launch
        eval_text = ", ".join(f"{k}={v:.4g}" for k, v in result.eval.items() if k in ("eval_loss", "eval_accuracy"))
        print(
            f"disel-train: {result.method}{'' if result.rank is None else f' r={result.rank}'} finished "
            f"{result.global_step} steps on {result.world_size} process(es); final train loss {result.final_train_loss}"
            + (f"; {eval_text}" if eval_text else "")
            + f"; wrote {os.path.join(result.output_dir, RESULT_FILE)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
