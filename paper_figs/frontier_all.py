"""Every frontier figure of a ``frontier.json`` (``disel-study`` with a recipe's ``frontier`` section, issue 17): the
points and fronts (KL English, KL code, perplexity English), best exact match against learning rate per method,
and task-input KL against English and code KL.

    python -m paper_figs.run_all --frontier paper_figs/frontier/frontier.json --out paper_figs/frontier --only frontier
"""

from __future__ import annotations

from collections.abc import Sequence

from . import frontier, frontier_lr, frontier_proxy
from .frontier_plots import frontier_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run each figure script on ``--results``; the first non-zero exit status ends it (the script said why)."""
    args = frontier_parser(__doc__, "python -m paper_figs.frontier_all").parse_args(argv)
    for script in (frontier, frontier_lr, frontier_proxy):
        status = script.main(["--results", str(args.results), "--out", str(args.out)])
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
