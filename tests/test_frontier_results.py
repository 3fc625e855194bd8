"""The frontier results file (disel.experiments.study.frontier_results): analysis, round trip, validation; and
its figures (paper_figs/frontier*.py) drawn from a synthetic file."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from frontier_synthetic import synthetic_frontier  # noqa: E402

from disel.experiments.schemas import MalformedResultFileError  # noqa: E402
from disel.experiments.study.frontier_results import (  # noqa: E402
    FrontierResults,
    PointRun,
    analyse_frontier,
    load_frontier_results,
)
from disel.experiments.study.fronts import FrontSettings, observed_front  # noqa: E402
from paper_figs import frontier, frontier_lr, frontier_proxy  # noqa: E402

PAIRS = [("disel", "lora"), ("disel", "full"), ("disel", "lora_intruder")]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    results = analyse_frontier(synthetic_frontier(), PAIRS, seed=0, settings=FrontSettings(replicates=100))
    path = tmp_path_factory.mktemp("frontier") / "results.json"
    results.write(path)
    return results, path


def test_analysis_has_every_measure_pair_and_level_and_round_trips(analysed):
    results, path = analysed
    assert [(c.kind, c.domain) for c in results.comparisons] == [
        ("kl", "english"),
        ("kl", "code"),
        ("perplexity", "english"),
        ("perplexity", "code"),
        ("kl", "task"),
    ]
    english = results.comparisons[0].differences
    assert {(d.method, d.reference) for d in english} == set(PAIRS) and len(english) == 4 * len(PAIRS)
    assert {b.method for b in results.best_accuracy} == {"lora", "disel", "full", "lora_intruder"}
    assert set(results.proxy) == {"english", "code"} and results.proxy["english"].n == 1 + 10 * 4
    again = load_frontier_results(path)
    assert again.runs == results.runs and again.proxy == results.proxy
    assert again.comparisons[0].differences[0].estimate == pytest.approx(english[0].estimate)


def test_a_run_must_start_at_the_base_and_match_the_problem_count(analysed):
    results, path = analysed
    run = results.runs[0]
    with pytest.raises(ValueError, match="start at 0"):
        PointRun(run.method, run.configuration, 0, run.steps[1:], run.correct[1:], {})
    raw = json.loads(path.read_text())
    raw["n_test_problems"] = 61
    bad = path.with_name("bad.json")
    bad.write_text(json.dumps(raw))
    with pytest.raises(MalformedResultFileError, match="60 problems"):
        FrontierResults.read(bad)


def test_the_frontier_figure_draws_every_point_and_each_methods_front(analysed):
    """Faint points: one per checkpoint of every run, at the file's (KL, exact match); bold lines: the observed
    front of each method (fronts.observed_front) on the level grid."""
    results, _ = analysed
    fig = frontier.plot_frontier(results)
    ax = fig.axes[0]  # KL English
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    by_method = [run for method in results.methods for run in results.runs if run.method == method]
    expected = np.concatenate([np.stack([r.text("english").measure("kl"), r.exact_match], axis=1) for r in by_method])
    np.testing.assert_allclose(points, expected)
    levels = ax.lines[0].get_ydata()
    fronts = observed_front([r.frontier_run("kl", "english") for r in results.runs], levels)
    for line, method in zip(ax.lines, results.methods):
        np.testing.assert_allclose(line.get_xdata(), fronts[method])
        # the post-hoc method (intruder-reduced LoRA) dashed, so that a front equal to LoRA's leaves LoRA's visible
        assert (line.get_linestyle() == "--") == (method == "lora_intruder"), method
    assert len(fig.axes) == 3


def test_accuracy_by_learning_rate_and_proxy_figures_read_the_file(analysed, tmp_path):
    results, path = analysed
    lines = frontier_lr.best_by_learning_rate(results)
    rates, best = lines["LoRA"]
    lora = [r for r in results.runs if r.method == "lora"]
    assert rates.tolist() == sorted(r.settings["learning_rate"] for r in lora)
    assert best.tolist() == [r.exact_match.max() for r in sorted(lora, key=lambda r: r.settings["learning_rate"])]
    assert set(lines) >= {"LoRA, intruders reduced (mitigation_lambda=0)", "Full FT"}
    fig = frontier_proxy.plot_proxy(results)
    assert f"R² = {results.proxy['english'].r_squared:.2f}" in fig.axes[0].get_title()
    for module, stem in ((frontier, "frontier"), (frontier_lr, "frontier_lr"), (frontier_proxy, "frontier_proxy")):
        assert module.main(["--results", str(path), "--out", str(tmp_path)]) == 0
        assert (tmp_path / f"{stem}.png").is_file()
    assert frontier.main(["--results", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2


def test_run_all_draws_the_frontier_figures_from_the_flag(analysed, tmp_path):
    """``python -m paper_figs.run_all --frontier FILE --only frontier`` draws the three frontier figures, and only
    those; a missing file is reported, not drawn."""
    from paper_figs import run_all

    _, path = analysed
    assert run_all.main(["--frontier", str(path), "--out", str(tmp_path), "--only", "frontier"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["frontier.png", "frontier_lr.png", "frontier_proxy.png"]
    missing = ["--frontier", str(tmp_path / "none.json"), "--out", str(tmp_path), "--only", "frontier"]
    assert run_all.main(missing) == 2


@pytest.mark.parametrize(
    "estimate, low, high, defined, expected",
    [
        (-0.05, -0.08, -0.02, 1.0, "forgets LESS"),
        (0.05, 0.02, 0.08, 1.0, "forgets MORE"),
        (-0.01, -0.04, 0.02, 1.0, "no clear difference"),
        (-0.05, -0.08, -0.02, 0.6, "forgets LESS, defined in 60% of replicates"),
        (float("nan"), -0.08, -0.02, 0.4, "undefined (a chosen configuration does not reach this level"),
    ],
)
def test_a_front_difference_reads_as_its_interval_says(estimate, low, high, defined, expected):
    """The verdict's words follow the interval's sign; an undefined observed estimate is never read as a finding,
    and a level defined in few replicates says so."""
    from disel.experiments.study.frontier_results import _finding
    from disel.experiments.study.fronts import FrontDifference

    d = FrontDifference("disel", "lora", 0.4, estimate, low, high, defined, estimate, low, high)
    assert _finding(d).startswith(expected)


def test_the_summary_names_each_methods_front_configurations_and_its_second_seeds(analysed):
    """frontier.md lists, per method, the configurations its English-KL front is made of (largest share first)
    and the two that get second seeds."""
    from disel.experiments.study.frontier_results import frontier_summary
    from disel.experiments.study.fronts import front_shares

    results, _ = analysed
    summary = frontier_summary(results)
    shares = front_shares([run.frontier_run("kl", "english") for run in results.runs])
    for method, by_configuration in shares.items():
        first, second = sorted(by_configuration, key=lambda name: -by_configuration[name])[:2]
        line = next(line for line in summary.splitlines() if line.startswith(f"- {method}: "))
        assert line.endswith(f"second seeds: {first}, {second}.") and f"{first} {by_configuration[first]:.0%}" in line
