"""Arguments that several command lines share, declared once so that they parse alike.

``MODEL_FLAGS`` and ``DATA_FLAGS`` are the flags of ``disel-eval components``, ``disel-prune`` and
``disel-merge-static``: the statistics and the compressions measure on the same model and data
(:func:`~disel.experiments.cli.preflight.domain_specs` reads the ``--domain`` files).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["DATA_FLAGS", "MODEL_FLAGS", "OFFLINE_DOMAINS", "add_flags", "add_override_argument"]

OFFLINE_DOMAINS = ("math", "general", "code")  # disel.experiments.eval.gates.default_offline_domains

Flags = dict[str, dict[str, Any]]  # flag -> the keyword arguments of ArgumentParser.add_argument

MODEL_FLAGS: Flags = {
    "--base": dict(required=True, help="pre-trained model directory the adapter was trained on"),
    "--adapter": dict(required=True, help="DISeL adapter directory (PeftModel.save_pretrained)"),
    "--dtype": dict(
        default="float32", help="float32 (default: folds and statistics at full precision), bfloat16, float16"
    ),
    "--device": dict(help="cuda / cpu (default: cuda if available)"),
}
_DOMAIN_HELP = (
    "rows with 'text', or instruction/output, question/answer or prompt/canonical_solution pairs (prompt in TEMPLATE, "
    "default the adapter run's training template, else alpaca, then the response; all tokens count)"
)
# The data the statistics are measured on (and prune / merge measure their output change on).
DATA_FLAGS: Flags = {
    "--domain": dict(nargs="*", default=[], metavar="NAME=FILE.jsonl[:TEMPLATE]", help=_DOMAIN_HELP),
    "--offline": dict(
        nargs="*", choices=OFFLINE_DOMAINS, help="offline domains to add (default: all three when no --domain is given)"
    ),
    "--n": dict(type=int, default=32, help="texts per domain (the first N rows of a file)"),
    "--seed": dict(type=int, default=12345, help="seed of the offline domains (keep it off the training seed)"),
    "--max-length": dict(type=int, default=256),
    "--batch-size": dict(type=int, default=8),
}


def add_flags(parser: argparse.ArgumentParser, flags: Flags) -> None:
    """Each flag of ``flags``, in order."""
    for name, options in flags.items():
        parser.add_argument(name, **options)


def add_override_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--override KEY=VALUE ...`` (repeatable, collected into ``args.override``, default ``[]``)."""
    parser.add_argument("--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help)
