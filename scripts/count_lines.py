"""Line counts of ``disel/experiments/`` at a git revision: raw lines, code lines, docstring + comment lines.

    python scripts/count_lines.py [REV] [--exclude PART ...] [--exclude-from FILE]

Files whose path contains an excluded part are left out, e.g. ``--exclude evidence/ study/ compress.py
preflight.py`` counts only the files of the features that existed when issue 8 was filed (the study runner was
``evidence/`` until issue 16). A part ``FILE::NAME`` leaves out only the top-level definition ``NAME`` (a
function, class or assignment) of the files whose path contains ``FILE``: a feature added to a shared file.
``--exclude-from`` reads parts from a file, one per line (``#`` starts a comment). Blank lines count as raw
lines only.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def count(source: str, leave_out: frozenset[str] = frozenset()) -> tuple[int, int, int]:
    """(raw, code, docstring + comment) line counts of one Python source, without the lines of its top-level
    definitions named in ``leave_out``."""
    tree = ast.parse(source)
    lines = source.splitlines()
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        for statement in getattr(node, "body", []) if isinstance(getattr(node, "body", None), list) else []:
            value = getattr(statement, "value", None)
            if isinstance(statement, ast.Expr) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(statement.lineno, statement.end_lineno + 1))
    dropped: set[int] = set()
    for node in tree.body:
        if _names(node) & leave_out:
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            dropped.update(range(first, node.end_lineno + 1))
    kept = [(i, line) for i, line in enumerate(lines, 1) if i not in dropped]
    blank = sum(1 for i, line in kept if not line.strip() and i not in docstrings)  # a docstring's: prose only
    comments = sum(1 for i, line in kept if line.strip().startswith("#") and i not in docstrings)
    prose = len(docstrings - dropped) + comments
    return len(kept), len(kept) - blank - prose, prose


def _names(node: ast.stmt) -> set[str]:
    """The names a top-level statement defines (a function, a class, assignment targets)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="HEAD")
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--exclude-from", type=Path, help="a file of parts to exclude, one per line")
    args = parser.parse_args()
    parts = list(args.exclude)
    if args.exclude_from:
        parts += [line.split("#")[0].strip() for line in args.exclude_from.read_text().splitlines()]
    whole = [part for part in parts if part and "::" not in part]
    definitions = [part.split("::") for part in parts if "::" in part]
    files = [
        path
        for path in _git("ls-tree", "-r", "--name-only", args.rev, "disel/experiments").split()
        if path.endswith(".py") and not any(part in path for part in whole)
    ]
    counts = []
    for path in files:
        leave_out = frozenset(name for part, name in definitions if part in path)
        counts.append(count(_git("show", f"{args.rev}:{path}"), leave_out))
    totals = [sum(column) for column in zip(*counts)]
    print(f"{args.rev}: {len(files)} files, raw {totals[0]}, code {totals[1]}, docstrings+comments {totals[2]}")


if __name__ == "__main__":
    main()
