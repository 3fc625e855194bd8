"""Each default is written once (issue 16): the gate bias and gate learning-rate ratio in one constant each, the
training schedule in the recipes, not also in the code."""

from __future__ import annotations

import ast
from pathlib import Path

import disel
from disel.experiments.config import TRAINING_DEFAULTS, read_recipe

REPO = Path(__file__).resolve().parents[1]
ONE_HOME = {"gate_bias_init": "DEFAULT_GATE_BIAS_INIT", "gate_lr_ratio": "DEFAULT_GATE_LR_RATIO"}


def _literal_defaults(tree: ast.AST) -> list[tuple[str, int]]:
    """(name, line) of every ``gate_bias_init`` / ``gate_lr_ratio`` given a number literal as its default: a
    function parameter's default or a dataclass ``field(default=...)``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            positional = [*arguments.posonlyargs, *arguments.args]
            pairs = list(zip(positional[len(positional) - len(arguments.defaults) :], arguments.defaults))
            pairs += [(a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is not None]
            found += [(a.arg, node.lineno) for a, d in pairs if a.arg in ONE_HOME and _is_number(d)]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in ONE_HOME:
            value = node.value
            if isinstance(value, ast.Call):
                value = next((k.value for k in value.keywords if k.arg == "default"), None)
            if value is not None and _is_number(value):
                found.append((node.target.id, node.lineno))
    return found


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def test_gate_defaults_are_named_once():
    """No function or dataclass in ``disel/`` writes the gate bias or ratio default as a number (it was -3.0 in
    three places and 5.0 in two); each refers to its constant."""
    literal = [
        f"{path.relative_to(REPO)}:{line} {name}"
        for path in sorted((REPO / "disel").rglob("*.py"))
        for name, line in _literal_defaults(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert literal == []
    config = disel.DiselConfig()
    assert (config.gate_bias_init, config.gate_lr_ratio) == (disel.DEFAULT_GATE_BIAS_INIT, disel.DEFAULT_GATE_LR_RATIO)


def test_training_schedule_is_written_in_the_recipes_only():
    """The code's training defaults and the shared LLM recipe set no key in common (learning rate, scheduler,
    warm-up, batch size and logging steps were in both)."""
    recipe = read_recipe(REPO / "recipes/base/llm.yaml")["training"]
    assert recipe  # the recipe does hold a schedule: the test can fail
    assert set(TRAINING_DEFAULTS) & set(recipe) == set()


def test_adapter_folders_are_recognised_in_models_only():
    """ "Is this an adapter folder?" was answered in six places, each joining ``"adapter_config.json"`` itself;
    now :func:`disel.experiments.models.is_adapter_dir` answers (the file name is written in models.py only)."""
    joined = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in sorted((REPO / "disel" / "experiments").rglob("*.py"))
        if path.name != "models.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value == "adapter_config.json"
    ]
    assert joined == []


def test_the_default_model_is_the_offline_smollm2(tmp_path, monkeypatch):
    from disel.experiments import models

    monkeypatch.setattr(models, "smollm2_path", lambda cache_dir=None: tmp_path / "smollm2")
    assert models.model_path_or_smollm2(None) == models.model_path_or_smollm2("") == str(tmp_path / "smollm2")
    assert models.model_path_or_smollm2("/models/llama") == "/models/llama"
