"""Line counts of ``disel/experiments/`` at a git revision: raw lines, code lines, docstring + comment lines.

    python scripts/count_lines.py [REV] [--exclude PART ...]

Files whose path contains an excluded part are left out, e.g. ``--exclude evidence/ study/ compress.py
preflight.py`` counts only the files of the features that existed when issue 8 was filed (the study runner was
``evidence/`` until issue 16). Blank lines count as raw lines only.
"""

from __future__ import annotations

import argparse
import ast
import subprocess


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def count(source: str) -> tuple[int, int, int]:
    """(raw, code, docstring + comment) line counts of one Python source."""
    lines = source.splitlines()
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        for statement in getattr(node, "body", []) if isinstance(getattr(node, "body", None), list) else []:
            value = getattr(statement, "value", None)
            if isinstance(statement, ast.Expr) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(statement.lineno, statement.end_lineno + 1))
    blank = sum(1 for i, line in enumerate(lines, 1) if not line.strip() and i not in docstrings)  # counted once
    comments = sum(1 for i, line in enumerate(lines, 1) if line.strip().startswith("#") and i not in docstrings)
    prose = len(docstrings) + comments
    return len(lines), len(lines) - blank - prose, prose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="HEAD")
    parser.add_argument("--exclude", nargs="*", default=[])
    args = parser.parse_args()
    files = [
        path
        for path in _git("ls-tree", "-r", "--name-only", args.rev, "disel/experiments").split()
        if path.endswith(".py") and not any(part in path for part in args.exclude)
    ]
    totals = [sum(column) for column in zip(*(count(_git("show", f"{args.rev}:{path}")) for path in files))]
    print(f"{args.rev}: {len(files)} files, raw {totals[0]}, code {totals[1]}, docstrings+comments {totals[2]}")


if __name__ == "__main__":
    main()
