"""Layering of the repository: no import cycle among the modules of ``disel``, ``toy`` and ``paper_figs`` (imports
inside functions included), the core never imports the experiment path, and neither the experiment path nor the
toy imports the figures (the figures read what they wrote)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("disel", "toy", "paper_figs")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that ``name`` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


GRAPH = {name: _imports(name, path, _modules()) for name, path in _modules().items()}


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize(
    "importer, forbidden",
    [
        ("disel", "disel.experiments"),
        ("disel.experiments", "paper_figs"),
        ("toy", "paper_figs"),
        ("toy", "disel.experiments"),
    ],
)
def test_layers_import_only_downwards(importer, forbidden):
    """The core (``disel`` outside ``disel.experiments``) never imports the experiment path; the experiment path
    (its commands included) and the toy never import the figures (the figures draw what they wrote)."""
    for name, targets in GRAPH.items():
        if not (name == importer or name.startswith(importer + ".")) or name.startswith(forbidden):
            continue
        if importer == "disel" and name.startswith("disel.experiments"):
            continue
        bad = sorted(t for t in targets if t == forbidden or t.startswith(forbidden + "."))
        assert not bad, f"{name} imports {bad}"


def test_the_graph_sees_known_imports():
    """The checker reads imports correctly (else the tests above would pass on an empty graph)."""
    assert "disel.experiments.config" in GRAPH["disel.experiments.train.run"]
    assert "disel.io" in GRAPH["disel.recording"]
    assert "toy.train" in GRAPH["toy.__main__"]
    assert "disel.experiments.schemas" in GRAPH["paper_figs._cli"]  # the edge the figures layer test forbids reversed


def test_every_command_of_the_experiment_path_lives_in_cli():
    """No module of ``disel/experiments`` outside ``cli/`` parses a command line or defines a ``main``: the
    library takes typed configs, the commands are in one place."""
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("disel.experiments") or name.startswith("disel.experiments.cli"):
            continue
        if name == "disel.experiments.__main__":
            continue  # ``python -m disel.experiments`` = disel-train: it imports cli.train's main, defines nothing
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                offenders.append(f"{name} defines main()")
            if isinstance(node, ast.Import) and any(alias.name == "argparse" for alias in node.names):
                offenders.append(f"{name} imports argparse")
    assert not offenders, offenders
