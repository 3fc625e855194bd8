"""Arguments that several command lines share, declared once so that they parse alike."""

from __future__ import annotations

import argparse

__all__ = ["add_override_argument"]


def add_override_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--override KEY=VALUE ...`` (repeatable, collected into ``args.override``, default ``[]``)."""
    parser.add_argument("--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help)
