"""Held-out text that every Python installation carries: English prose and Python code, no download.

* English: the prose of Python's own reference documentation, shipped as ``pydoc_data/topics.py``
  (the text behind ``help("assert")``). Grammar blocks and code examples (indented) and heading
  underlines are dropped; consecutive prose paragraphs are joined into passages.
* Code: top-level functions and classes of the standard library's pure-Python modules
  (``sysconfig.get_paths()["stdlib"]/*.py``), one definition per text, read with ``ast``.

These stand in for WikiText / HumanEval in the offline retention and gate analyses. Candidates are
enumerated in a fixed (sorted) order, and ``seed`` picks ``n`` of them without replacement, so the same
Python version always gives the same texts.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Modules whose "code" is not representative: rot13 text (this), a web-browser side effect (antigravity),
# frozen-module test stubs (__hello__, __phello__).
_SKIPPED_MODULES = frozenset({"this", "antigravity", "__hello__", "__phello__"})
_HEADING_RULE = re.compile(r"^[*=\-~^\"]{3,}$")
_PASSAGE_CHARS = (300, 1500)  # an English passage: shorter ones dropped, longer ones cut
_DEFINITION_CHARS = (200, 2000)  # a code definition outside these bounds is skipped


def _prose_paragraphs(topic_text: str) -> list[str]:
    """Paragraphs of flowing English in one pydoc topic: no indented blocks (code, grammar), no headings."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", topic_text):
        lines = block.split("\n")
        if not block.strip() or lines[0].startswith((" ", "\t")):
            continue  # indented: a code example, a grammar production or a table
        if any(_HEADING_RULE.match(line.strip()) for line in lines):
            continue  # a section title with its underline
        text = " ".join(line.strip() for line in lines)
        letters = sum(ch.isalpha() or ch.isspace() for ch in text)
        # Headings, one-line notes and symbol-heavy lines are not prose.
        if len(text) >= 80 and letters >= 0.85 * len(text) and text.rstrip().endswith((".", ":", ")")):
            paragraphs.append(text)
    return paragraphs


@lru_cache(maxsize=None)
def _english_passages() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    min_chars, max_chars = _PASSAGE_CHARS
    passages = []
    for name in sorted(topics):
        current = ""
        for paragraph in _prose_paragraphs(topics[name]):
            if current and len(current) + 1 + len(paragraph) > max_chars:
                if len(current) >= min_chars:
                    passages.append(current)
                current = ""
            current = f"{current} {paragraph}".strip() if current else paragraph
        if len(current) >= min_chars:
            passages.append(current[:max_chars] if len(current) > max_chars else current)
    return tuple(passages)


def _sample(candidates: list | tuple, n: int, seed: int, what: str) -> list:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got n={n!r}")
    if n > len(candidates):
        raise ValueError(f"n={n} {what} requested but only {len(candidates)} are available")
    return random.Random(seed).sample(list(candidates), n)


def general_english_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` English passages from Python's reference documentation (``pydoc_data.topics``).

    Each passage joins consecutive prose paragraphs of one topic, 300 to 1500 characters. About 180 passages
    exist (Python 3.11); asking for more raises.
    """
    return _sample(_english_passages(), n, seed, "English passages")


@dataclass(frozen=True)
class CodeDefinition:
    """One top-level ``def``/``class`` of a standard-library module (``module``: the file stem)."""

    module: str
    name: str
    source: str
    docstring: str  # "" when it has none
    body_without_docstring: str  # the "solution" half of an instruction/response pair


def _definitions_in(path: Path) -> list[CodeDefinition]:
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    found = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        text = "\n".join(lines[start : node.end_lineno])
        if not _DEFINITION_CHARS[0] <= len(text) <= _DEFINITION_CHARS[1] or not text.isascii():
            continue
        docstring = ast.get_docstring(node) or ""
        body = text
        if docstring:  # then the first statement is the docstring: cut it out
            first = node.body[0]
            body = "\n".join(lines[start : first.lineno - 1] + lines[first.end_lineno : node.end_lineno])
        found.append(CodeDefinition(path.stem, node.name, text, docstring, body))
    return found


@lru_cache(maxsize=None)
def _all_definitions() -> tuple[CodeDefinition, ...]:
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return tuple(d for path in paths if path.stem not in _SKIPPED_MODULES for d in _definitions_in(path))


def stdlib_definitions(exclude: Iterable[str] = ()) -> list[CodeDefinition]:
    """All top-level definitions (200 to 2000 characters, ASCII) of the top-level
    standard-library modules, in sorted module order, skipping modules named in ``exclude``
    (file stems such as ``"json"`` or ``"textwrap"``; use it to keep evaluation code disjoint from
    code that was trained on)."""
    if isinstance(exclude, str):
        raise TypeError(f"exclude must be an iterable of module names, not the string {exclude!r}; use [{exclude!r}]")
    excluded = frozenset(exclude)
    return [d for d in _all_definitions() if d.module not in excluded]


def python_code_texts(n: int, seed: int = 0, exclude: Iterable[str] = ()) -> list[str]:
    """``n`` Python source texts, each one top-level function or class of a standard-library module
    not in ``exclude`` (see :func:`stdlib_definitions`)."""
    return [d.source for d in _sample(stdlib_definitions(exclude), n, seed, "Python definitions")]


def python_function_tasks(n: int, seed: int = 0, exclude: Iterable[str] = ()) -> list[dict[str, str]]:
    """``n`` code instruction/response pairs ``{"instruction", "output"}`` from documented stdlib functions.

    The instruction asks for the function by name and docstring; the response is its source without
    the docstring. The code-domain stand-in for HumanEval in the gate analysis (where gates are read
    on response tokens only).
    """
    definitions = [
        d for d in stdlib_definitions(exclude) if d.docstring and d.source.lstrip().startswith(("def ", "async def "))
    ]
    return [
        dict(instruction=f"Write a Python function `{d.name}`.\n{d.docstring.strip()}", output=d.body_without_docstring)
        for d in _sample(definitions, n, seed, "documented Python functions")
    ]
