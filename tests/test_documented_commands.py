"""Every command the READMEs and the recipe headers document runs as written, or is marked as a template (issue 16).

The rule, for ``README.md``, ``paper_figs/README.md``, ``recipes/**/README.md`` and the header comments of
``recipes/**/*.yaml``:

* A *command* is a line of a fenced code block of a README, or an indented line of a recipe header, that starts
  with a console script of ``pyproject.toml``, ``python``, ``bash`` or ``accelerate launch`` (after an optional
  ``nice -n N``) and gives it arguments. Backslash continuations are joined, trailing ``# comments`` dropped,
  shell variables set in the block (``R=runs/x``) expanded. Inline code spans in prose are names and fragments
  (``disel-eval gates``, ``disel-tradeoff ...``), not commands: only the project files they name must exist.
* A command holding a *placeholder* is a *template*: an ALL-CAPS word (``BASE``, ``RUN``, ``RECIPE``), ``<name>``,
  ``...``, or an absolute path outside ``/tmp`` (a folder of the reader's machine; the recipes write
  ``/path/to/...``). A template must stand below a line of its block that holds ``template:``; that line and the
  comment lines after it, up to the first command, name each ALL-CAPS placeholder. A command without placeholders
  runs as written with the project's own files.
* Either way the command is checked without training anything: its arguments go through its own parser (the
  parser's ``parse_args`` stops the command right after parsing), every project file it reads exists (or an
  earlier command of the same document writes it: it lies under that command's ``--out``/``--output-dir``),
  ``disel-train`` prints its resolved config (``--print-config``), ``disel-study`` validates its recipe with the
  overrides, ``bash`` names a script of the project, ``python -c`` compiles.
"""

from __future__ import annotations

import argparse
import importlib
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from disel.experiments.config import DISEL_ONLY_KEYS, load_config

REPO = Path(__file__).resolve().parents[1]
# [project.scripts] of pyproject.toml (read with a regex: tomllib is Python 3.11+, the package supports 3.10)
_SCRIPTS_TABLE = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", (REPO / "pyproject.toml").read_text(), re.M | re.S)
SCRIPTS: dict[str, str] = dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', _SCRIPTS_TABLE.group(1), flags=re.M))
_PROGRAMS = [*SCRIPTS, "python", "bash", "accelerate"]
_COMMAND_START = re.compile(rf"^({'|'.join(map(re.escape, _PROGRAMS))})\s+\S")
_CAPS = re.compile(r"(?<![\w./$-])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*(?![\w.-])")  # BASE, RUN/..., RESULTS_DIR
# ``...``, ``<name>``, or an absolute path of the reader's machine (``/path/to/...``; /tmp is anyone's)
_OTHER_PLACEHOLDER = re.compile(r"\.\.\.|<[\w-]+>|(?:^|[\s=\[,'\"])/(?!tmp/)\w")
_PROJECT_FILE = re.compile(
    r"(?<![\w/.-])(?:recipes|paper_figs|scripts|accelerate_configs|benchmarks|toy|runs)/[^\s,\]]*"
)
_OUTPUT_FLAGS = ("--out", "--output-dir")
_OUTPUT_KEYS = ("output_dir", "figures_dir")  # recipe keys (--override KEY=VALUE) that name a folder to write
DOCUMENTS = sorted(
    [
        REPO / "README.md",
        REPO / "paper_figs/README.md",
        *REPO.glob("recipes/**/README.md"),
        *REPO.glob("recipes/**/*.yaml"),
    ]
)


@dataclass(frozen=True)
class Documented:
    """One documented command: where it stands, as written (variables expanded), the ``template:`` line above it
    in its block (None: none), and the outputs of the commands above it in the same document."""

    file: str
    command: str
    label: str | None
    outputs_before: tuple[str, ...]

    @property
    def caps(self) -> set[str]:
        return set(_CAPS.findall(self.command))

    @property
    def is_template(self) -> bool:
        return bool(self.caps) or bool(_OTHER_PLACEHOLDER.search(self.command))


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


def _blocks(path: Path) -> list[list[str]]:
    """A README's fenced code blocks, or a recipe's header comment (one block, the ``#`` removed)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return [block.splitlines() for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)]
    header = [line.lstrip("#") for line in text.splitlines() if line.lstrip().startswith("#")]
    return [header]


def _inline_spans(path: Path) -> list[str]:
    if path.suffix != ".md":
        return []
    prose = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose)


def _outputs(argv: list[str]) -> list[str]:
    """What a command writes: its ``--out`` / ``--output-dir`` and ``*output_dir=`` / ``*figures_dir=`` overrides."""
    flags = [value for flag, value in zip(argv, argv[1:]) if flag in _OUTPUT_FLAGS]
    keys = [value for key, _, value in (a.partition("=") for a in argv) if value and key.endswith(_OUTPUT_KEYS)]
    return flags + keys


def documented_commands() -> list[Documented]:
    found = []
    for path in DOCUMENTS:
        outputs: list[str] = []
        for block in _blocks(path):
            variables, label = {}, None
            for line in _joined(block):
                if "template:" in line or (label is not None and not _COMMAND_START.match(line)):
                    label = line if "template:" in line else f"{label} {line}"  # its lines up to the command
                    continue
                assignment = re.fullmatch(r"([A-Za-z_]\w*)=(\S+)", line)
                if assignment:
                    variables[assignment[1]] = assignment[2]
                    continue
                for name, value in variables.items():
                    line = re.sub(rf"\${name}\b", value, line)
                line = re.sub(r"^nice\s+-n\s+\d+\s+", "", line)
                if _COMMAND_START.match(line):
                    found.append(Documented(str(path.relative_to(REPO)), line, label, tuple(outputs)))
                    outputs += _outputs(shlex.split(line))
    return found


COMMANDS = documented_commands()


def test_the_documented_commands_are_found():
    """The parser finds what the files say: each RoBERTa recipe's baseline, the README's two setup scripts, the
    comparison and evidence runs and their figures, and the templates of the evaluation commands."""
    files = {c.file for c in COMMANDS}
    roberta = sorted(str(p.relative_to(REPO)) for p in REPO.glob("recipes/roberta_base_*_disel.yaml"))
    assert roberta and set(roberta) <= files
    assert {"README.md", "paper_figs/README.md", "recipes/README.md", "recipes/evidence/README.md"} <= files
    baselines = [c for c in COMMANDS if c.file in roberta and "method.name=lora" in c.command]
    assert len(baselines) == len(roberta)
    readme = [c.command for c in COMMANDS if c.file == "README.md"]
    assert {"bash scripts/figure1.sh", "bash scripts/test.sh"} <= set(readme)
    assert any(c.startswith("disel-study --recipe recipes/comparison/") for c in readme)
    assert any(c.startswith("python -m paper_figs.run_all --results runs/smollm2-methods-ranks") for c in readme)
    assert any(c.startswith("disel-eval gates --base BASE") for c in readme)


@pytest.mark.parametrize("documented", COMMANDS, ids=[f"{c.file}:{c.command[:60]}" for c in COMMANDS])
def test_a_command_with_placeholders_is_a_labelled_template(documented):
    if not documented.is_template:
        return
    assert documented.label is not None, (
        f"{documented.file}: `{documented.command}` holds placeholders but no line above it in its block says "
        "'template:'"
    )
    unnamed = {word for word in documented.caps if not re.search(rf"\b{word}\b", documented.label)}
    assert not unnamed, f"{documented.file}: the template line does not say what {sorted(unnamed)} stand for"


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once a command's arguments parsed: nothing after parsing runs."""


def _parse_only(monkeypatch, run) -> argparse.Namespace:
    """The namespace ``run()`` parses with its own parser; argparse's own error (SystemExit) fails the test."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed) as parsed:
        run()
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    return parsed.value.args[0]


def _python(monkeypatch, argv: list[str]):
    """``python -m MODULE ...`` or ``python FILE.py ...`` as a callable, with ``sys.argv`` set as Python sets it."""
    if argv[0] == "-m":
        monkeypatch.setattr(sys, "argv", [argv[1], *argv[2:]])
        return lambda: runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    assert (REPO / argv[0]).is_file(), f"python {argv[0]}: no such file in the project"
    monkeypatch.setattr(sys, "argv", argv)
    return lambda: runpy.run_path(str(REPO / argv[0]), run_name="__main__")


def _dry_run_study(args: argparse.Namespace) -> None:
    """What ``disel-study`` checks before it trains: the recipe with the overrides (a compression recipe: its
    settings)."""
    from disel.experiments.config import apply_overrides, read_recipe
    from disel.experiments.study.compression import CompressionConfig
    from disel.experiments.study.config import load_study_config

    raw = read_recipe(args.recipe)
    if raw.get("kind") == "compression":
        CompressionConfig.model_validate(apply_overrides(raw, args.override or []))
    else:
        load_study_config(args.recipe, args.override or [], device=args.device, arms=args.arms)


def _check_files(documented: Documented, argv: list[str]) -> None:
    """Every project file the command reads exists, or an earlier command of the document writes it."""
    outputs = set(_outputs(argv))
    for argument in argv:
        value = argument.partition("=")[2] if re.match(r"^[\w.]+=", argument) else argument
        for path in _PROJECT_FILE.findall(value.strip("[]")):
            path = path.rstrip("/")
            if path in outputs or "..." in path:
                continue
            written = any(path == out or path.startswith(out.rstrip("/") + "/") for out in documented.outputs_before)
            assert (REPO / path).exists() or written, f"{documented.file}: `{documented.command}` reads {path}"


@pytest.mark.parametrize("documented", COMMANDS, ids=[f"{c.file}:{c.command[:60]}" for c in COMMANDS])
def test_documented_command_parses_and_its_files_exist(documented, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # documented paths are relative to the repository root
    program, *argv = shlex.split(documented.command)
    _check_files(documented, argv)
    if program == "bash":
        assert argv[0].startswith("scripts/") and (REPO / argv[0]).is_file(), documented.command
        return
    if program == "python" and argv[0] == "-c":
        compile(argv[1], documented.command, "exec")
        return
    if program == "accelerate":
        assert argv[0] == "launch" and "-m" in argv, documented.command
        argv = ["-m", *argv[argv.index("-m") + 1 :]]
        program = "python"
    if program == "python":
        _parse_only(monkeypatch, _python(monkeypatch, argv))
        return
    module_name, _, function = SCRIPTS[program].partition(":")
    main = getattr(importlib.import_module(module_name), function)
    if program == "disel-train":
        status = main([*argv, *([] if "--print-config" in argv else ["--print-config"])])
        captured = capsys.readouterr()
        assert status == 0, f"{documented.file}: `{documented.command}` failed: {captured.err}"
        assert "training:" in captured.out  # the resolved config was printed
        return
    args = _parse_only(monkeypatch, lambda: main(argv))
    if program == "disel-study":
        _dry_run_study(args)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_project_files_named_in_prose_exist(document):
    """An inline code span naming a recipe or script of the project names one that exists."""
    for span in _inline_spans(document):
        for path in re.findall(r"(?:recipes|scripts|accelerate_configs)/[\w./-]+\.(?:yaml|sh|py)\b", span):
            assert (REPO / path).is_file() or "*" in span, f"{document.relative_to(REPO)}: `{span}` names {path}"


def test_the_check_catches_a_wrong_flag_and_an_unlabelled_placeholder(monkeypatch, capsys):
    """The checks above can fail: a misspelt flag stops in the command's parser, a missing recipe is reported, and
    a placeholder without a ``template:`` line is refused."""
    bad = Documented("x.md", "disel-study --recipe recipes/evidence/smollm2_tradeoff.yaml --workerz 2", None, ())
    with pytest.raises(SystemExit):
        test_documented_command_parses_and_its_files_exist(bad, monkeypatch, capsys)
    missing = Documented("x.md", "disel-study --recipe recipes/evidence/no_such.yaml", None, ())
    with pytest.raises(AssertionError, match="reads recipes/evidence/no_such.yaml"):
        test_documented_command_parses_and_its_files_exist(missing, monkeypatch, capsys)
    unlabelled = Documented("x.md", "disel-eval gates --base BASE --adapter RUN --out g.json", None, ())
    with pytest.raises(AssertionError, match="no line above it"):
        test_a_command_with_placeholders_is_a_labelled_template(unlabelled)
    half = Documented("x.md", unlabelled.command, "# template: BASE = a base model folder", ())
    with pytest.raises(AssertionError, match=r"\['RUN'\]"):
        test_a_command_with_placeholders_is_a_labelled_template(half)


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
