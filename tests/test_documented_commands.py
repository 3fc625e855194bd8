"""Every command a recipe header or a README under ``recipes/`` documents runs as written (issue 16).

The commands are parsed out of the files, so a newly documented command is tested without editing this file:
a comment line of a recipe (``#   disel-train --config ...``), a line of a fenced code block or an inline code
span of a README that starts with one of the console scripts of ``pyproject.toml`` and gives it arguments.
Backslash continuations are joined and a trailing ``# comment`` dropped. ``disel-train`` runs up to model
loading (``--print-config``: the recipe is read, overridden and validated); any other command is parsed by its
own argument parser and every recipe file it names must exist.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from disel.experiments.config import DISEL_ONLY_KEYS, load_config

REPO = Path(__file__).resolve().parents[1]
# [project.scripts] of pyproject.toml (read with a regex: tomllib is Python 3.11+, the package supports 3.10)
_SCRIPTS_TABLE = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", (REPO / "pyproject.toml").read_text(), re.M | re.S)
SCRIPTS: dict[str, str] = dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', _SCRIPTS_TABLE.group(1), flags=re.M))
_COMMAND_START = re.compile(rf"^({'|'.join(map(re.escape, SCRIPTS))})\s+\S")


def _joined(lines: list[str]) -> list[str]:
    """Lines with backslash continuations joined and trailing ``# comments`` removed."""
    joined, pending = [], ""
    for line in lines:
        line = line.strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined]


def _candidates(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
        spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
        return _joined([line for block in blocks for line in block.splitlines()]) + spans
    comments = [line.lstrip("#") for line in text.splitlines() if line.lstrip().startswith("#")]
    return _joined(comments)


def documented_commands() -> list[tuple[str, str]]:
    """``(file, command)`` for every command documented under ``recipes/``."""
    files = sorted([*REPO.glob("recipes/**/*.yaml"), *REPO.glob("recipes/**/README.md")])
    return [
        (str(path.relative_to(REPO)), command)
        for path in files
        for command in _candidates(path)
        if _COMMAND_START.match(command)
    ]


COMMANDS = documented_commands()


def test_the_documented_baselines_are_found():
    """The parser finds what the files say: each RoBERTa recipe's baseline command and the README's commands."""
    files = {file for file, _ in COMMANDS}
    roberta = sorted(str(p.relative_to(REPO)) for p in REPO.glob("recipes/roberta_base_*_disel.yaml"))
    assert roberta and set(roberta) <= files
    assert "recipes/README.md" in files
    baselines = [c for f, c in COMMANDS if f in roberta and "method.name=lora" in c]
    assert len(baselines) == len(roberta)


@pytest.mark.parametrize(("file", "command"), COMMANDS, ids=[f"{f}:{c[:60]}" for f, c in COMMANDS])
def test_documented_command_runs_as_written(file, command, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # documented paths are relative to the repository root
    program, *argv = shlex.split(command)
    module_name, _, function = SCRIPTS[program].partition(":")
    module = importlib.import_module(module_name)
    if program == "disel-train":
        status = module.main([*argv, *([] if "--print-config" in argv else ["--print-config"])])
        captured = capsys.readouterr()
        assert status == 0, f"{file}: `{command}` failed: {captured.err}"
        assert "training:" in captured.out  # the resolved config was printed
        return
    assert hasattr(module, "build_parser"), f"{program} ({SCRIPTS[program]}) has no build_parser to check it with"
    module.build_parser().parse_args(argv)  # argparse exits (fails the test) on a bad flag
    for argument in argv:
        value = argument.partition("=")[2] or argument
        if re.fullmatch(r"recipes/\S+\.(yaml|yml|json)", value):
            assert (REPO / value).is_file(), f"{file}: `{command}` names {value}, which does not exist"


@pytest.mark.parametrize("recipe", sorted(REPO.glob("recipes/roberta_base_*_disel.yaml")), ids=lambda p: p.stem)
def test_another_method_drops_the_disel_keys(recipe):
    """``method.name=lora`` on a DISeL recipe is LoRA with every shared setting kept and no gate key (the
    documented baseline failed while the base recipe set ``gate_weight_init``)."""
    disel = load_config(recipe)
    lora = load_config(recipe, ["method.name=lora"])
    assert disel.method.disel_settings()  # the recipe does set gate keys: the test can fail
    assert lora.method.disel_settings() == {}
    assert all(getattr(lora.method, key) is None for key in DISEL_ONLY_KEYS)
    shared = lora.method.model_dump(exclude={"name", *DISEL_ONLY_KEYS})
    assert shared == disel.method.model_dump(exclude={"name", *DISEL_ONLY_KEYS})
    assert lora.training == disel.training


def test_method_change_after_loading_drops_the_disel_keys():
    """Assigning ``method.name`` on a loaded config drops the gate keys as loading does."""
    config = load_config(REPO / "recipes/llama2_7b_metamath_disel.yaml")
    config.method.name = "lora"
    assert config.method.disel_settings() == {} and config.method.gate_bias_init is None
