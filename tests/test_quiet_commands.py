"""The project's commands print only what they have to say (issue 19 item 8).

bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels' …" at
import (through peft) on CPUs with AVX-512 BF16 when the optional ``kernels`` package is absent. ``disel``'s
import filters exactly that record; a real bitsandbytes message, or the same notice with another cause, still
surfaces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


COMMANDS = [
    (["-m", "toy", "figure1", "--steps", "-5"], "python -m toy: error: --steps: "),
    (["-m", "disel.experiments", "--config", "missing.yaml"], "disel-train: error: config file 'missing.yaml'"),
    (
        ["-m", "disel.experiments.cli.eval", "components", "--base", "m", "--adapter", "m", "--out", "s.json"],
        "disel-eval: error: --adapter 'm'",
    ),
    (
        [
            "-c",
            "import sys; from disel.experiments.cli.compress import main_prune; sys.exit(main_prune())",
            *["--base", "m", "--adapter", "m", "--stats", "s.json", "--keep-fraction", "0.5", "--out", "o"],
        ],
        "disel-prune: error: --base 'm'",
    ),
]


@pytest.mark.parametrize("argv, error", COMMANDS, ids=["toy", "disel-train", "disel-eval", "disel-prune"])
def test_a_command_prints_only_its_own_line(tmp_path, argv, error):
    """Each command (all import peft, hence bitsandbytes) refuses a bad value: its stderr is that one line."""
    finished = _run(argv, tmp_path)
    assert finished.returncode == 2
    assert NOTICE not in finished.stderr
    assert finished.stderr.startswith(error) and finished.stderr.count("\n") == 1, finished.stderr


EMIT = """
import logging, disel
logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
template = "{notice}: %s. Please make sure you already `pip install kernels` and the kernels >= 0.11.1"
missing = ModuleNotFoundError("No module named 'kernels'", name="kernels")
logger.warning(template, missing)                                          # the known notice: filtered
logger.warning(template, RuntimeError("kernels installed but broken"))     # same text, real cause: shown
logger.warning(template, ModuleNotFoundError("No module named 'numpy'", name="numpy"))  # shown
logging.getLogger("bitsandbytes.cextension").warning("a real bitsandbytes problem")      # shown
logger.error("another CPU backend error")                                 # shown
""".format(notice=NOTICE)


def test_only_the_known_notice_is_filtered(tmp_path):
    """The filter drops the notice only when its cause is the missing ``kernels`` package; every other
    bitsandbytes record (the same text with another cause, other loggers, errors) still reaches stderr."""
    tail = ". Please make sure you already `pip install kernels` and the kernels >= 0.11.1"
    expected = [
        f"{NOTICE}: kernels installed but broken{tail}",
        f"{NOTICE}: No module named 'numpy'{tail}",
        "a real bitsandbytes problem",
        "another CPU backend error",
    ]
    lines = _run(["-c", EMIT], tmp_path).stderr.splitlines()
    assert [line for line in lines if NOTICE in line or line in expected] == expected


def test_without_disel_the_notice_is_bitsandbytes_own(tmp_path):
    """The notice comes from importing bitsandbytes itself (so filtering it in disel is what removes it):
    on a CPU where bitsandbytes prints it, it appears without disel and not after ``import disel``."""
    pytest.importorskip("bitsandbytes")
    plain = _run(["-c", "import bitsandbytes"], tmp_path).stderr  # bitsandbytes alone imports no peft, no disel
    if NOTICE not in plain:
        pytest.skip("this CPU/bitsandbytes prints no kernels notice")
    assert NOTICE not in _run(["-c", "import disel, bitsandbytes"], tmp_path).stderr


EXPLICIT = """
import warnings
import disel
import transformers
from peft import LoraConfig, get_peft_model
text = "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` instead."
def emit(message, module, category=FutureWarning):
    warnings.warn_explicit(message, category, module.replace(".", "/") + ".py", 1, module=module)
emit(text, "transformers.modeling_utils")                       # the known one: ignored
emit("another deprecation", "transformers.modeling_utils")      # shown
emit(text, "somewhere.else")                                    # shown: same text, another module
emit(text, "transformers.modeling_utils", DeprecationWarning)   # shown: another category
config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=2, vocab_size=32)
get_peft_model(transformers.LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
"""


def test_only_the_deprecation_peft_triggers_is_ignored(tmp_path):
    """peft's ``get_peft_model`` reads transformers' deprecated ``is_gradient_checkpointing`` (a FutureWarning on
    every model built); disel ignores exactly that warning from that module, and nothing else."""
    finished = _run(["-W", "default", "-c", EXPLICIT], tmp_path)
    assert finished.returncode == 0, finished.stderr
    shown = [line for line in finished.stderr.splitlines() if "Warning: " in line and "torch/jit" not in line]
    assert len(shown) == 3, finished.stderr
    assert "transformers/modeling_utils.py:1: FutureWarning: another deprecation" in shown
    assert "somewhere/else.py:1: FutureWarning: `is_gradient_checkpointing` is deprecated" in shown[1]
    assert "transformers/modeling_utils.py:1: DeprecationWarning: `is_gradient_checkpointing`" in shown[2]
