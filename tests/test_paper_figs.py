"""The paper's figures are regenerable from result files, draw exactly the numbers in them, and refuse
missing or malformed inputs with a message naming the file and what is wrong.

The result files are real: one session-scoped fixture (``fixtures_results.make_tiny_results``) trains
tiny DISeL and LoRA models with the experiment path, evaluates every checkpoint, records gates and
writes the tradeoff table, and every figure script is then run on those files.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from disel.experiments import schemas, tables  # noqa: E402
from disel.experiments.cli import tradeoff as tradeoff_cli  # noqa: E402
from disel.experiments.schemas import (  # noqa: E402
    MalformedResultFileError,
    MissingResultFileError,
    ResultFileError,
    RetentionTable,
    TradeoffRow,
    TrainResult,
    read_gates,
    read_tradeoff_table,
    write_tradeoff_table,
)
from disel.experiments.tables import read_runs  # noqa: E402
from fixtures_results import TinyResults, make_tiny_results  # noqa: E402
from paper_figs import fig2_glue_tradeoff, fig4_gates_by_domain, fig6_retention_over_time, figure_modules, plots, style  # noqa: E402  # noqa: E402
from paper_figs.aggregate import checkpoint_curves, summarize_over_seeds  # noqa: E402

# The module, not the package-level helper function of the same name in paper_figs/__init__.py.
run_all = importlib.import_module("paper_figs.run_all")

ALL_FIGURES = tuple(range(1, 15))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyResults:
    """Result files of tiny DISeL/LoRA runs (ranks 2, 4; seeds 0, 1), made once per session."""
    return make_tiny_results(tmp_path_factory.mktemp("tiny_results"))


@pytest.fixture(scope="session")
def drawn(tiny, tmp_path_factory) -> Path:
    """The output folder after ``run_all`` drew every figure from the tiny results."""
    out = tmp_path_factory.mktemp("figures")
    assert run_all.main(tiny.run_all_argv(out)) == 0
    return out


def _copy(path: Path, tmp_path: Path) -> Path:
    target = tmp_path / path.name
    shutil.copy(path, target)
    return target


def _edit_json(path: Path, edit) -> Path:
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    return path


# --------------------------------------------------------------------------------------------------
# Every figure from the tiny runs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("figure", ALL_FIGURES)
def test_run_all_draws_every_figure_from_tiny_run_results(drawn, figure):
    """run_all regenerates Figure N as a PNG and a PDF, and the PNG is not blank: more than 1 % of its
    pixels are not white and it has more than a handful of colours."""
    png, pdf = drawn / f"figure{figure}.png", drawn / f"figure{figure}.pdf"
    assert png.is_file() and pdf.is_file()
    assert pdf.read_bytes()[:5] == b"%PDF-"
    image = plt.imread(png)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert (image.min(axis=-1) < 0.95).mean() > 0.01
    packed = (image[::3, ::3] * 255).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)  # (H/3, W/3)
    assert len(np.unique(packed)) > 16
    assert not [p for p in drawn.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_run_all_knows_every_figure_script():
    """Every paper_figs/fig*.py module is wired into run_all (a new figure cannot be forgotten)."""
    assert sorted(f"paper_figs.{m}" for m in run_all.FIGURES.values()) == sorted(figure_modules())


def test_tiny_results_are_what_the_figures_claim(tiny):
    """The fixture's files are the real experiment outputs: 8 runs with method/rank/seed from their
    train_result.json, a base row and a row per saved checkpoint in each table, three gate domains."""
    infos = [TrainResult.read(d) for d in tables.find_run_dirs(tiny.runs_dir)]
    assert sorted((i.method, i.rank, i.seed) for i in infos) == sorted(
        (m, r, s) for m in ("disel", "lora") for r in (2, 4) for s in (0, 1)
    )
    for run in read_runs(tables.find_run_dirs(tiny.runs_dir), "perplexity"):
        assert [row.checkpoint for row in run.table.rows] == ["base", "checkpoint-2", "checkpoint-4"]
        assert run.table.metric_columns == ("english", "code")
    gates = read_gates(tiny.gates_math)
    assert list(gates.domains) == ["math", "general", "code"]
    assert list(gates.domain("math").by_depth) == ["early", "mid", "late"]


# --------------------------------------------------------------------------------------------------
# Figures draw exactly the numbers in the files
# --------------------------------------------------------------------------------------------------


def test_tradeoff_figure_marks_seed_means_with_std_error_bars(tiny):
    """Figure 2: one marker per (method, rank) at the mean over seeds, error bars of ± the sample
    standard deviation, and the base model's retention as the dashed vertical line."""
    table = read_tradeoff_table(tiny.root / "tradeoff_glue.json")
    points = summarize_over_seeds(table)
    with style.paper_style():
        fig = fig2_glue_tradeoff.plot_figure2(table)
    try:
        ax = fig.axes[0]
        assert ax.get_xscale() == "log"
        markers = sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines if line.get_marker() == "o")
        assert markers == sorted((p.retention_mean, p.ft_mean) for p in points)
        spans = sorted(
            float(np.ptp(segment[:, 0])) for collection in ax.collections for segment in collection.get_segments()
        )
        expected = sorted(2 * p.retention_std for p in points) + sorted(2 * p.ft_std for p in points)
        assert sorted(s for s in spans if s > 0) == pytest.approx(sorted(e for e in expected if e > 0))
        vertical = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert [line.get_xdata()[0] for line in vertical] == [table.base_retention]
    finally:
        plt.close(fig)


def test_checkpoint_figure_plots_the_seed_mean_of_each_rank(tiny):
    """Figure 6: each rank's line is the mean over seeds of the table values at each checkpoint step,
    DISeL in the left panel and LoRA in the right; the dashed line is the base row's value."""
    runs = read_runs(tables.find_run_dirs(tiny.runs_dir), "perplexity")
    with style.paper_style():
        fig = plots.checkpoint_figure(runs, metric="english", methods=["disel", "lora"], ylabel="ppl")
    try:
        for ax, method in zip(fig.axes, ("disel", "lora")):
            assert ax.get_title() == style.method_label(method)
            for rank in (2, 4):
                members = [r for r in runs if (r.info.method, r.info.rank) == (method, rank)]
                expected = np.mean([r.table.series("english")[1] for r in members], axis=0)
                (line,) = [ln for ln in ax.lines if ln.get_label() == f"r = {rank}"]
                assert list(line.get_xdata()) == [2, 4]
                assert line.get_ydata() == pytest.approx(expected)
            base = [ln for ln in ax.lines if ln.get_label() == "base model"]
            assert base[0].get_ydata()[0] == runs[0].table.value(runs[0].table.base, "english")
    finally:
        plt.close(fig)


def test_gate_histograms_are_the_normalised_counts_of_the_file(tiny):
    """Figure 4: each domain's curve in each depth panel is its histogram divided by its count, over
    the file's bin edges."""
    gates = read_gates(tiny.gates_math)
    with style.paper_style():
        fig = plots.gates_by_domain_figure(gates)
    try:
        for ax, depth in zip(fig.axes, ("early", "mid", "late")):
            outlines = [p for p in ax.patches if not p.get_fill()]
            for patch, domain in zip(outlines, gates.domains):
                histogram = gates.group(domain, "by_depth", depth)
                values, edges = patch.get_data().values, patch.get_data().edges
                assert values == pytest.approx([c / histogram.count for c in histogram.counts])
                assert math.isclose(sum(values), 1.0)
                assert list(edges) == list(gates.bin_edges)
    finally:
        plt.close(fig)


def test_gate_means_bars_are_the_means_of_the_file(tiny):
    """Figure 11: bar heights are the file's by_depth_and_module means, module by module."""
    gates = read_gates(tiny.gates_math)
    with style.paper_style():
        fig = plots.gate_means_figure(gates, domain="math")
    try:
        heights = sorted(round(p.get_height(), 12) for p in fig.axes[0].patches)
        summary = gates.domain("math").by_depth_and_module
        expected = sorted(round(h.mean, 12) for per_depth in summary.values() for h in per_depth.values())
        assert heights == expected
        labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        assert labels == list(schemas.MODULE_ORDER)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------------
# The tradeoff table
# --------------------------------------------------------------------------------------------------


def test_tradeoff_from_runs_selects_the_best_ft_checkpoint_and_its_retention(tiny):
    """Each row's ft_score is the run's best checkpoint score (ties: the earliest checkpoint) and its
    retention that same checkpoint's retention; the base row is the tables' base row."""
    table = read_tradeoff_table(tiny.tradeoff)
    ft_runs = read_runs(tables.find_run_dirs(tiny.runs_dir), "gsm8k")
    retention_runs = {r.info.run_dir: r for r in read_runs(tables.find_run_dirs(tiny.runs_dir), "perplexity")}
    for run in ft_runs:
        rows = run.table.checkpoints
        best = max(rows, key=lambda row: (row.values["mean"], -row.step))
        retention = retention_runs[run.info.run_dir].table
        (row,) = [
            r for r in table.rows if (r.method, r.rank, r.seed) == (run.info.method, run.info.rank, run.info.seed)
        ]
        assert row.ft_score == best.values["mean"]
        assert row.retention == retention.row(best.checkpoint).values["mean"]
    assert table.base_retention == retention.base.values["mean"]
    assert table.retention_higher_is_better is False


def test_summarize_over_seeds_is_mean_and_sample_std():
    """Mean and sample (n − 1) standard deviation per (method, rank); one seed gives std 0; methods in
    order of first appearance, ranks ascending, full FT (rank None) last."""
    rows = [TradeoffRow("lora", 8, s, ft, ret) for s, ft, ret in ((0, 0.5, 10.0), (1, 0.7, 14.0), (2, 0.6, 12.0))]
    rows += [
        TradeoffRow("lora", 2, 0, 0.4, 9.0),
        TradeoffRow("disel", 8, 0, 0.8, 8.0),
        TradeoffRow("full", None, 0, 0.9, 20.0),
    ]
    table = schemas.TradeoffTable("acc", "ppl", False, 7.0, None, tuple(rows))
    points = summarize_over_seeds(table)
    assert [(p.method, p.rank) for p in points] == [("lora", 2), ("lora", 8), ("disel", 8), ("full", None)]
    lora8 = points[1]
    assert lora8.ft_mean == pytest.approx(0.6) and lora8.ft_std == pytest.approx(0.1)
    assert lora8.retention_mean == pytest.approx(12.0) and lora8.retention_std == pytest.approx(2.0)
    assert points[0].ft_std == 0.0 and points[0].seeds == (0,)


def test_write_tradeoff_table_round_trips_and_is_atomic(tmp_path):
    """write_tradeoff_table writes what read_tradeoff_table reads back, NumPy scalars included, and
    leaves no temporary file."""
    path = tmp_path / "sub" / "tradeoff.json"
    write_tradeoff_table(
        path, ft_metric="GSM8K", retention_metric="retention", retention_higher_is_better=True,
        base_retention=np.float64(0.6), base_ft_score=None, title="Llama",
        rows=[{"method": "disel", "rank": 8, "seed": 0, "ft_score": np.float32(0.5), "retention": 0.59},
              TradeoffRow("full", None, None, 0.55, 0.5)],
    )  # fmt: skip
    table = read_tradeoff_table(path)
    assert table.title == "Llama" and table.base_ft_score is None and table.base_retention == 0.6
    assert table.rows[0] == TradeoffRow("disel", 8, 0, pytest.approx(0.5), 0.59)
    assert table.rows[1] == TradeoffRow("full", None, None, 0.55, 0.5)
    assert json.loads(path.read_text())["schema"] == "disel.tradeoff/1"
    assert [p.name for p in path.parent.iterdir()] == ["tradeoff.json"]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"method": "lora", "rank": 4, "seed": 0, "ft_score": float("nan"), "retention": 1.0}, "rows[0].ft_score"),
        ({"method": "lora", "rank": 4, "seed": 0, "retention": 1.0}, "missing key 'rows[0].ft_score'"),
        ({"method": "lora", "rank": "4", "seed": 0, "ft_score": 0.1, "retention": 1.0}, "rows[0].rank"),
    ],
)
def test_write_tradeoff_table_refuses_what_the_reader_would_reject(tmp_path, row, message):
    """A NaN score, a missing field or a mistyped rank is refused before anything is written."""
    path = tmp_path / "t.json"
    with pytest.raises(MalformedResultFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        write_tradeoff_table(path, ft_metric="a", retention_metric="b", retention_higher_is_better=True,
                             base_retention=1.0, rows=[row])  # fmt: skip
    assert not path.exists()


def test_tradeoff_table_rejects_a_repeated_model(tmp_path):
    """Each (method, rank, seed) appears once: a duplicate would be counted twice in the seed mean."""
    row = {"method": "lora", "rank": 4, "seed": 0, "ft_score": 0.1, "retention": 1.0}
    with pytest.raises(MalformedResultFileError, match=r"rows\[1\] repeats"):
        write_tradeoff_table(tmp_path / "t.json", ft_metric="a", retention_metric="b",
                             retention_higher_is_better=True, base_retention=1.0, rows=[row, row])  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reader",
    [read_gates, RetentionTable.read, read_tradeoff_table, TrainResult.read],
    ids=lambda reader: reader.__self__.__name__,
)
def test_readers_name_a_missing_file(tmp_path, reader):
    """Each reader raises MissingResultFileError (a FileNotFoundError) whose message starts with the path."""
    path = tmp_path / "nope.json"
    with pytest.raises(MissingResultFileError, match="does not exist") as info:
        reader(path)
    assert str(info.value).startswith(str(path))
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ResultFileError)


def test_readers_name_the_expected_schema(tiny, tmp_path):
    """A file of another schema (here a gates file read as a tradeoff table) is refused naming both."""
    with pytest.raises(
        MalformedResultFileError, match=r"expected schema 'disel.tradeoff/1'.*found schema 'disel.gates/1'"
    ):
        read_tradeoff_table(tiny.gates_math)
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "disel.gates/1", ')
    with pytest.raises(MalformedResultFileError, match="not valid JSON"):
        read_gates(broken)


@pytest.mark.parametrize(
    "source, reader, edit, message",
    [
        ("tradeoff", read_tradeoff_table, lambda raw: raw.pop("ft_metric"), "missing key 'ft_metric'"),
        ("tradeoff", read_tradeoff_table, lambda raw: raw["base"].pop("retention"), "missing key 'base.retention'"),
        ("gates", read_gates, lambda raw: raw["domains"]["math"].pop("by_depth"),
         "missing key 'domains.math.by_depth'"),
        ("gates", read_gates, lambda raw: raw["domains"]["code"]["by_kind"]["mlp"]["histogram"].__setitem__(0, 10**9),
         "domains.code.by_kind.mlp': histogram adds up to"),
        ("retention", RetentionTable.read, lambda raw: raw["rows"][1].pop("step"), "missing key 'rows\\[1\\].step'"),
        ("train_result", TrainResult.read, lambda raw: raw.pop("method"), "missing key 'method'"),
    ],
)  # fmt: skip
def test_readers_name_the_missing_or_malformed_key(tiny, tmp_path, source, reader, edit, message):
    """A missing or inconsistent field is reported with its full location inside the file."""
    original = {
        "tradeoff": tiny.tradeoff,
        "gates": tiny.gates_math,
        "retention": tiny.runs_dir / "disel_r2_s0" / "retention_perplexity.json",
        "train_result": tiny.runs_dir / "disel_r2_s0" / "train_result.json",
    }[source]
    path = _edit_json(_copy(original, tmp_path), edit)
    with pytest.raises(MalformedResultFileError, match=message) as info:
        reader(path)
    assert str(info.value).startswith(str(path))


def test_figure_script_exits_2_naming_the_missing_file(tmp_path, capsys):
    """A figure script given a missing file prints one error line naming it and writes nothing."""
    missing = tmp_path / "gates_math.json"
    assert fig4_gates_by_domain.main(["--gates", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert f"error: {missing}: does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_figure_script_names_an_unknown_domain_and_metric(tiny, tmp_path, capsys):
    """Asking for a domain the gates file lacks, or a column a retention table lacks, lists what exists."""
    assert (
        fig4_gates_by_domain.main(["--gates", str(tiny.gates_math), "--domains", "legal", "--out", str(tmp_path)]) == 2
    )
    assert "has no domain 'legal'; its domains are ['math', 'general', 'code']" in capsys.readouterr().err
    argv = [
        "--runs-dir",
        str(tiny.runs_dir),
        "--evaluator",
        "perplexity",
        "--metric",
        "wikitext",
        "--out",
        str(tmp_path),
    ]
    assert fig6_retention_over_time.main(argv) == 2
    assert "has no metric 'wikitext'; its metrics are ['english', 'code', 'mean']" in capsys.readouterr().err
    argv = ["--runs-dir", str(tiny.runs_dir), "--out", str(tmp_path)]  # default evaluator lm-eval: not run here
    assert fig6_retention_over_time.main(argv) == 2
    assert "retention_lm-eval.json: does not exist" in capsys.readouterr().err


def test_runs_that_disagree_on_the_base_model_are_refused(tiny, tmp_path):
    """Runs evaluated against different base models cannot share one base line."""
    runs_dir = tmp_path / "runs"
    for name in ("lora_r2_s0", "lora_r4_s0"):
        shutil.copytree(
            tiny.runs_dir / name, runs_dir / name, ignore=shutil.ignore_patterns("checkpoint-*", "*.safetensors")
        )
    _edit_json(
        runs_dir / "lora_r4_s0" / "retention_perplexity.json", lambda raw: raw["rows"][0].__setitem__("mean", 1.0)
    )
    runs = read_runs(tables.find_run_dirs(runs_dir), "perplexity")
    with pytest.raises(MalformedResultFileError, match="base-model 'mean' is 1.0 but"):
        tables.shared_base_value(runs, "mean")


def test_seeds_saving_at_different_steps_are_refused(tiny, tmp_path):
    """Seeds of one (method, rank) are averaged step by step, so they must share their steps."""
    runs_dir = tmp_path / "runs"
    for name in ("disel_r2_s0", "disel_r2_s1"):
        shutil.copytree(
            tiny.runs_dir / name, runs_dir / name, ignore=shutil.ignore_patterns("checkpoint-*", "*.safetensors")
        )
    _edit_json(
        runs_dir / "disel_r2_s1" / "retention_perplexity.json", lambda raw: raw["rows"][2].__setitem__("step", 5)
    )
    runs = read_runs(tables.find_run_dirs(runs_dir), "perplexity")
    with pytest.raises(MalformedResultFileError, match=r"checkpoints at steps \[2, 5\]"):
        checkpoint_curves(runs, "mean")


def test_run_all_stops_on_missing_inputs_unless_allowed(tiny, tmp_path, capsys):
    """Without --allow-missing a missing input stops run_all before drawing, listing each missing input;
    with it, those figures are skipped with a message and the others are drawn."""
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    shutil.copy(tiny.gates_math, results_dir / "gates_math.json")
    out = tmp_path / "out"
    assert run_all.main(["--results", str(results_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"figure 2: missing {results_dir / 'tradeoff_glue.json'}" in err
    assert f"figure 6: missing {results_dir / 'runs_math'}" in err
    assert not out.exists()

    assert run_all.main(["--results", str(results_dir), "--out", str(out), "--allow-missing"]) == 0
    printed = capsys.readouterr().out
    assert "figure 3: skipped, missing" in printed and "figure 12: skipped, missing" in printed
    assert sorted(p.name for p in out.glob("*.png")) == ["figure10.png", "figure11.png", "figure4.png", "figure5.png"]


def test_run_all_fails_on_a_malformed_file_even_with_allow_missing(tiny, tmp_path, capsys):
    """A malformed file is an error, never a skip."""
    bad = _edit_json(_copy(tiny.tradeoff, tmp_path), lambda raw: raw.pop("rows"))
    argv = ["--tradeoff", str(bad), "--out", str(tmp_path / "out"), "--allow-missing", "--only", "3"]
    assert run_all.main(argv) == 2
    assert "missing key 'rows'" in capsys.readouterr().err


def test_tradeoff_command_line_writes_the_table_from_runs(tiny, tmp_path, capsys):
    """`disel-tradeoff` writes the same rows as tradeoff_table_from_runs,
    and names a missing per-checkpoint table instead of writing anything."""
    out = tmp_path / "tradeoff.json"
    argv = ["--runs-dir", str(tiny.runs_dir), "--ft-evaluator", "gsm8k", "--retention-evaluator",
            "perplexity", "--lower-is-better", "--out", str(out)]  # fmt: skip
    assert tradeoff_cli.main(argv) == 0
    written = read_tradeoff_table(out)
    assert written.rows == read_tradeoff_table(tiny.tradeoff).rows
    assert written.retention_higher_is_better is False and written.ft_metric == "gsm8k mean"
    argv[argv.index("gsm8k")] = "humaneval"
    assert tradeoff_cli.main([*argv[:-1], str(tmp_path / "other.json")]) == 2
    assert "retention_humaneval.json: does not exist" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()
