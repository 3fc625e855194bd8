"""``python -m toy`` refuses a value its configuration or sweep refuses (issue 19 item 7): one line
``python -m toy: error: --FLAG: …``, status 2, before any training (the trainers are made to fail to prove it).
Regression: ``figure1 --steps -5``, ``sweep-rank --ranks 0 1`` and ``sweep-separation --means nan`` ended in a
Python traceback, the NaN one only after training the points before it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import toy.__main__ as toy_cli
from toy import continual_train as toy_continual_train
from toy import sweeps

REFUSED = [
    (["figure1", "--steps", "-5"], "--steps", "steps must be a positive integer, got steps=-5"),
    (["figure1", "--steps", "0"], "--steps", "steps must be a positive integer, got steps=0"),
    (["figure1", "--seed", "-1"], "--seed", "seed must be an integer >= 0, got -1"),
    (["sweep-rank", "--steps", "-5"], "--steps", "steps must be a positive integer"),
    (["sweep-rank", "--ranks", "0", "1"], "--ranks", "ranks must be positive integers, at least one, got [0, 1]"),
    (["sweep-rank", "--trained", "7"], "--trained", "trained must be a subset of ranks=[1, 2, 3, 4, 5, 6, 8]"),
    (["sweep-rank", "--rank-delta", "0"], "--rank-delta", "rank_delta must be an integer in [1, min(d, m)]"),
    (["sweep-rank", "--rank-delta", "11"], "--rank-delta", "= [1, 10], got 11"),
    (["sweep-separation", "--means", "nan"], "--means", "means must be finite numbers >= 0 (|μ|), at least one"),
    (["sweep-separation", "--means", "0.5", "inf"], "--means", "got [0.5, inf]"),
    (["sweep-separation", "--means", "-1"], "--means", "got [-1.0]"),
    (["sweep-separation", "--means", "1", "--trained", "2"], "--trained", "trained must be a subset of means=[1.0]"),
    (["sweep-separation", "--seed", "-3"], "--seed", "seed must be an integer >= 0, got -3"),
    (["continual", "--tasks", "0"], "--tasks", "num_tasks must be in [1, d] = [1, 10]"),
    (["continual", "--tasks", "11"], "--tasks", "got num_tasks=11"),
    (["continual", "--mean", "nan"], "--mean", "must be a finite number > 0"),
    (["continual", "--mean", "0"], "--mean", "got 0.0"),
    (["continual", "--steps", "-1"], "--steps", "steps must be a positive integer"),
]


@pytest.mark.parametrize("argv, flag, message", REFUSED, ids=[" ".join(a) for a, _, _ in REFUSED])
def test_a_refused_value_is_one_line_before_training(tmp_path, capsys, monkeypatch, argv, flag, message):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before the values were checked")

    monkeypatch.setattr(toy_cli, "run_figure1", no_training)
    monkeypatch.setattr(sweeps, "train_method", no_training)
    monkeypatch.setattr(toy_continual_train, "run_continual", no_training)
    out = tmp_path / "out"
    assert toy_cli.main([*argv, "--out", str(out), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"python -m toy: error: {flag}: ") and message in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not out.exists()


def test_the_command_line_itself_exits_2_with_one_line(tmp_path):
    """The real process: status 2, and stderr is the one error line (no traceback, no import notice)."""
    root = Path(__file__).resolve().parent.parent
    finished = subprocess.run(
        [sys.executable, "-m", "toy", "figure1", "--steps", "-5", "--out", str(tmp_path / "out")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2
    assert finished.stderr == "python -m toy: error: --steps: steps must be a positive integer, got steps=-5\n"
