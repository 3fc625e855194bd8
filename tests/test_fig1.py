"""Figure 1 plumbing: the CLI writes the numbers and the figure, the figure draws exactly those numbers,
and the shared style module writes files atomically. Training runs here are short smoke runs; the
claims about the default recipe live in test_toy_train.py."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from paper_figs import (  # noqa: E402
    fig1_toy,
    figure_modules,  # noqa: E402
    style,
)
from toy.__main__ import main as toy_main  # noqa: E402


def _numbers() -> dict:
    """Synthetic Figure 1 numbers in the layout of ``Figure1Result.to_dict()``."""

    def mse(ft, pt):
        return {"ft": ft, "pt": pt, "mixture": (ft + pt) / 2}

    return {
        "closed_form": {"fixed_optimum": mse(50.0, 50.0), "bayes": mse(2.0, 2.5)},
        "methods": {
            "full": {"mse": mse(49.0, 51.0), "mse_stderr": mse(0.2, 0.2)},
            "lora": {"mse": mse(50.5, 49.5), "mse_stderr": mse(0.2, 0.2)},
            "disel": {"mse": mse(2.1, 2.6), "mse_stderr": mse(0.05, 0.05)},
        },
    }


def test_figure_draws_exactly_the_given_numbers():
    """Figures show only numbers the code produced: bar heights and reference lines equal the inputs."""
    numbers = _numbers()
    with style.paper_style():
        fig = fig1_toy.plot_figure1(numbers)
    try:
        ax = fig.axes[0]
        heights = sorted(round(patch.get_height(), 9) for patch in ax.patches)
        expected = sorted(
            entry["mse"][population] for entry in numbers["methods"].values() for population in ("ft", "pt")
        )
        assert heights == expected
        # Reference lines are horizontal segments (hlines): collect their heights.
        lines = {
            round(float(segment[0][1]), 9)
            for collection in ax.collections
            if hasattr(collection, "get_segments")
            for segment in collection.get_segments()
            if len(segment) == 2 and segment[0][1] == segment[1][1]
        }
        for reference in ("fixed_optimum", "bayes"):
            for population in ("ft", "pt"):
                assert numbers["closed_form"][reference][population] in lines
    finally:
        plt.close(fig)


def test_savefig_writes_png_and_pdf_atomically(tmp_path: Path):
    """savefig writes stem.png and stem.pdf, leaves no temporary file, and a PDF rerun is byte-identical."""
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    try:
        paths = style.savefig(fig, tmp_path / "sub" / "demo")
        assert [p.name for p in paths] == ["demo.png", "demo.pdf"]
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert paths[1].read_bytes()[:5] == b"%PDF-"
        first_pdf = paths[1].read_bytes()
        style.savefig(fig, tmp_path / "sub" / "demo")
        assert paths[1].read_bytes() == first_pdf
        assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["demo.pdf", "demo.png"]
        with pytest.raises(ValueError, match="stem"):
            style.savefig(fig, tmp_path / "demo.png")
    finally:
        plt.close(fig)


def test_style_has_a_colour_and_label_for_every_method():
    for method in style.METHOD_ORDER:
        assert style.method_color(method).startswith("#")
        assert style.method_label(method)
    assert len(set(style.METHOD_COLORS.values())) == len(style.METHOD_COLORS)
    with pytest.raises(KeyError, match="expected one of"):
        style.method_color("prefix-tuning")


def test_paper_style_does_not_leak_rcparams():
    before = matplotlib.rcParams["font.size"]
    with style.paper_style():
        assert matplotlib.rcParams["font.size"] == style.RC_PARAMS["font.size"]
    assert matplotlib.rcParams["font.size"] == before


def test_cli_figure1_smoke(tmp_path: Path, capsys):
    """`python -m paper_figs.fig1_toy` (what scripts/figure1.sh runs) trains through `python -m toy figure1`,
    which prints the table and writes only figure1.json, then draws figure1.png/.pdf from that JSON."""
    assert fig1_toy.main(["--steps", "40", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for label in ("Full FT", "LoRA", "DISeL", "fixed optimum (closed form)", "Bayes (closed form)"):
        assert label in printed
    numbers = json.loads((tmp_path / "figure1.json").read_text())
    assert set(numbers["methods"]) == {"full", "lora", "disel"}
    assert numbers["config"]["steps"] == 40
    assert (tmp_path / "figure1.png").stat().st_size > 0 and (tmp_path / "figure1.pdf").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left

    # The toy alone computes and writes the numbers, no figure.
    alone = tmp_path / "toy_only"
    assert toy_main(["figure1", "--steps", "8", "--out", str(alone), "--no-progress"]) == 0
    assert sorted(p.name for p in alone.iterdir()) == ["figure1.json"]

    # Redraw from the JSON alone (no training) through the figure script's main().
    redraw = tmp_path / "redraw"
    assert fig1_toy.main(["--from-json", str(tmp_path / "figure1.json"), "--out", str(redraw)]) == 0
    assert (redraw / "figure1.png").exists() and (redraw / "figure1.pdf").exists()


def test_toy_does_not_import_the_figures():
    """The toy is a library the figures use, never the other way round (no import cycle)."""
    import ast

    for path in Path(toy_main.__code__.co_filename).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.split(".")[0] == "paper_figs"], path


def test_toy_cli_checks_out_before_training(tmp_path: Path, capsys, monkeypatch):
    """A bad --out is a one-line usage error (exit 2) before any training starts."""
    import toy.__main__ as toy_cli

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(toy_cli, "run_figure1", no_training)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file, a_file / "below"):
        assert toy_main(["figure1", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("python -m toy: error: --out: ") and err.count("\n") == 1


def test_toy_cli_refuses_abbreviated_flags(tmp_path: Path, capsys):
    """`--step 4` is not silently taken as `--steps 4` (prefix matching is off)."""
    with pytest.raises(SystemExit) as exit_info:
        toy_main(["figure1", "--step", "4", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--step" in capsys.readouterr().err
    assert not (tmp_path / "figure1.json").exists()


@pytest.mark.parametrize(
    "argv, name",
    [
        (["sweep-separation", "--means", "0", "1", "--trained", "1"], "separation"),
        (["sweep-rank", "--ranks", "1", "2", "--trained", "2", "--rank-delta", "2"], "rank"),
    ],
)
def test_cli_sweeps_smoke(tmp_path: Path, capsys, argv, name):
    """`python -m toy sweep-*` writes sweep_<name>.json with every point and prints a table."""
    assert toy_main([*argv, "--steps", "30", "--out", str(tmp_path), "--no-progress"]) == 0
    numbers = json.loads((tmp_path / f"sweep_{name}.json").read_text())
    assert numbers["parameter"] == name and len(numbers["points"]) == 2
    assert any(point["trained"] for point in numbers["points"])
    assert np.isfinite(numbers["points"][0]["fixed"]["mixture"])
    assert "fixed" in capsys.readouterr().out


def test_run_all_discovers_the_figure1_module():
    assert "paper_figs.fig1_toy" in figure_modules()


def test_committed_figure1_numbers_still_draw(tmp_path: Path):
    """The committed paper_figs/out/figure1.json (written before the toy stopped drawing) redraws as it is."""
    committed = Path(fig1_toy.__file__).parent / "out" / "figure1.json"
    assert fig1_toy.main(["--from-json", str(committed), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "figure1.png").stat().st_size > 0 and (tmp_path / "figure1.pdf").stat().st_size > 0
