"""The learning–forgetting fronts (disel.experiments.study.fronts) on synthetic points with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from disel.experiments.study.fronts import (
    FrontierRun,
    FrontSettings,
    compare_fronts,
    front,
    method_fronts,
    path_front,
    r_squared,
)


def test_path_front_is_the_lower_envelope_at_accuracy_at_least_the_level():
    """On the path (0,0) → (.5,3) → (.4,1) → (.6,2), at accuracy ≥ .45 the lowest forgetting is on the segment
    (.4,1) → (.6,2) where it crosses .45: 1 + (.05/.2)·1 = 1.25 (checkpoints there: 3 and 2; other crossings:
    2.7 and 2)."""
    acc, forg = np.array([0.0, 0.5, 0.4, 0.6]), np.array([0.0, 3.0, 1.0, 2.0])
    got = path_front(acc, forg, np.array([0.45, 0.55, 0.0, 0.61]))
    np.testing.assert_allclose(got[:3], [1.25, 1.75, 0.0])
    assert np.isnan(got[3])  # never reached


def test_front_of_lines_is_their_lower_envelope_among_the_paths_reaching_the_level():
    """Paths forgetting = s · accuracy up to accuracy m: the front at L is min{s : m ≥ L} · L."""
    slopes, tops = np.array([2.0, 1.5, 3.0]), np.array([0.6, 0.5, 0.7])
    acc = np.linspace(0, 1, 11)[None, :] * tops[:, None]  # (C, K)
    values, chosen = front(acc, slopes[:, None] * acc, np.array([0.3, 0.55, 0.65, 0.8]))
    np.testing.assert_allclose(values[:3], [1.5 * 0.3, 2.0 * 0.55, 3.0 * 0.65])
    assert chosen.tolist() == [1, 0, 2, -1] and np.isnan(values[3])


def _line_runs(method: str, slopes, tops, problems: int = 100, texts: int = 5) -> list[FrontierRun]:
    """Runs whose paths are forgetting = slope · accuracy; the problems come twice (copies 0..P-1 and P..2P-1),
    so halves made of one copy each see the same accuracies."""
    runs = []
    tokens = np.arange(1, texts + 1, dtype=float)
    for slope, top in zip(slopes, tops):
        solved = np.arange(0, round(top * problems) + 1)  # problems solved at each checkpoint
        correct = np.arange(problems)[None, :] < solved[:, None]  # (K, P)
        accuracy = solved / problems
        runs.append(
            FrontierRun(
                method,
                f"slope={slope}",
                0,
                steps=np.arange(solved.size) * 10,
                correct=np.hstack([correct, correct]),
                text_sums=slope * accuracy[:, None] * tokens[None, :],
                text_tokens=tokens,
            )
        )
    return runs


def test_front_differences_and_best_accuracy_on_known_lines():
    """LoRA's front is 1.5·L up to .5, then 2·L up to .6, 3·L up to .7; DISeL's 1·L up to .5, 1.2·L up to .55.
    The highest level both reach is .55, so the differences at f·.55 are (1 − 1.5)·L below .5 and
    1.2·.55 − 2·.55 = −.44 at .55. Halves with identical data make the cross-fitted estimate exact. At .55 DISeL's
    one path reaching it stops there, so resampled problems often leave it short: the level is then undefined
    in that replicate, which the defined fraction reports."""
    runs = _line_runs("lora", [2.0, 1.5, 3.0], [0.6, 0.5, 0.7]) + _line_runs("disel", [1.0, 1.2], [0.5, 0.55])
    halves = np.arange(200) < 100
    settings = FrontSettings(replicates=200, fractions=(0.5, 0.8, 1.0))
    result = compare_fronts(runs, [("disel", "lora")], np.random.default_rng(0), settings, halves, np.arange(5) < 3)
    best = {b.method: b for b in result.best}
    assert (best["lora"].estimate, best["lora"].configuration, best["lora"].step) == (0.7, "slope=3.0", 700)
    assert best["disel"].estimate == pytest.approx(0.55)
    expected = [(0.275, -0.5 * 0.275), (0.44, -0.5 * 0.44), (0.55, -0.44)]
    for difference, (level, value) in zip(result.differences, expected):
        assert difference.level == pytest.approx(level)
        assert difference.estimate == pytest.approx(value) and difference.naive == pytest.approx(value)
    for difference in result.differences[:2]:
        assert difference.defined_fraction > 0.95 and difference.low <= difference.estimate <= difference.high
    assert 0.0 < result.differences[2].defined_fraction < 0.9


def test_the_highest_level_is_lowered_to_where_the_crossfitted_fronts_are_defined():
    """DISeL's one configuration reaches .6 on problem half A but only .5 on half B, so its cross-fitted best
    accuracy is (.5 + .6) / 2 = .55; at .55 the configuration chosen on A falls short on B and none is chosen on B:
    the cross-fitted front is undefined there. The comparison's top level becomes .5, the highest level at which
    both directions are defined, with a finite estimate; the fractions scale from the base accuracy (0) to it."""
    problems, checkpoints = 100, 7
    reach = {"a": np.linspace(0, 0.6, checkpoints), "b": np.linspace(0, 0.5, checkpoints)}
    correct = np.hstack([np.arange(problems)[None, :] < np.round(reach[h] * problems)[:, None] for h in "ab"])
    tokens = np.arange(1.0, 6.0)
    disel = FrontierRun(
        "disel", "uneven", 0, np.arange(checkpoints) * 10, correct, correct.mean(1)[:, None] * tokens, tokens
    )
    runs = [disel, *_line_runs("lora", [2.0], [0.7])]
    settings = FrontSettings(replicates=50, fractions=(0.5, 1.0))
    halves = np.arange(2 * problems) < problems
    result = compare_fronts(runs, [("disel", "lora")], np.random.default_rng(0), settings, halves, np.arange(5) < 3)
    assert next(b for b in result.best if b.method == "disel").estimate == pytest.approx(0.55)
    low, top = result.differences
    assert top.level == pytest.approx(0.5, abs=0.55 / 200 + 1e-12) and top.level <= 0.5 + 1e-12
    assert low.level == pytest.approx(top.level / 2)
    assert np.isfinite(top.estimate) and np.isfinite(low.estimate)


def test_a_random_split_needs_two_problems_and_known_methods():
    run = _line_runs("lora", [1.0], [0.5])[0]
    with pytest.raises(ValueError, match="pairs"):
        compare_fronts([run], [("disel", "lora")], np.random.default_rng(0))
    with pytest.raises(ValueError, match="problem_half"):
        method_fronts([run], [0.2], np.random.default_rng(0), problem_half=np.ones(200, bool))


def _noise_only_runs(rng: np.random.Generator, configurations: int, problems: int, texts: int) -> list[FrontierRun]:
    """Configurations sharing one true path: accuracy .1 → .7 and forgetting 0 → 3 in equal steps (so at
    accuracy L the true front is (L − .1) / .2); correctness is Bernoulli, each text's forgetting noisy."""
    true_acc, true_forg = np.array([0.1, 0.3, 0.5, 0.7]), np.array([0.0, 1.0, 2.0, 3.0])
    tokens = rng.integers(20, 60, size=texts).astype(float)
    runs = []
    for c in range(configurations):
        correct = rng.random((4, problems)) < true_acc[:, None]
        per_token = true_forg[:, None] + rng.normal(0, 1.0, size=(4, texts)) * (true_forg[:, None] > 0)
        runs.append(FrontierRun("m", f"c{c}", 0, np.arange(4), correct, per_token * tokens, tokens))
    return runs


def test_noise_only_the_naive_front_is_biased_and_the_crossfitted_interval_covers_the_truth():
    """Eight configurations with the same true path: the naive front (a minimum over them) sits below the truth
    on average, and its bootstrap interval covers it less often than the cross-fitted interval, whose coverage
    is near the nominal 95% (within 3 binomial standard errors over 200 seeded data sets)."""
    rng = np.random.default_rng(12345)
    level, truth = 0.4, 1.5
    settings = FrontSettings(replicates=200)
    naive, covered, naive_covered = [], 0, 0
    datasets = 200
    for _ in range(datasets):
        estimate = method_fronts(_noise_only_runs(rng, 8, 200, 40), [level], rng, settings)["m"][0]
        naive.append(estimate.naive)
        covered += estimate.low <= truth <= estimate.high
        naive_covered += estimate.naive_low <= truth <= estimate.naive_high
    naive = np.array(naive)
    assert naive.mean() - truth < -4 * naive.std() / np.sqrt(datasets)  # biased low
    tolerance = 3 * np.sqrt(0.95 * 0.05 / datasets)
    assert abs(covered / datasets - 0.95) < tolerance
    assert naive_covered < covered


def test_r_squared_and_spearman_of_a_hand_computed_case():
    """x = 1,2,3,4 and y = 1,3,2,4: r = Σdxdy / sqrt(Σdx²Σdy²) = 4/5, so R² = .64, slope .8, intercept .5;
    the ranks are the values, so Spearman's ρ is also .8."""
    fit = r_squared([1, 2, 3, 4], [1, 3, 2, 4])
    assert (fit.r_squared, fit.slope, fit.intercept, fit.spearman, fit.n) == pytest.approx((0.64, 0.8, 0.5, 0.8, 4))
    assert r_squared([1, 2, 3], [5, 7, 9]).r_squared == pytest.approx(1.0)
    with pytest.raises(ValueError, match="vary"):
        r_squared([1, 1, 1], [1, 2, 3])


def test_a_configurations_path_is_the_mean_of_its_seeds():
    """Two seeds of one configuration: the observed path is their mean accuracy and mean forgetting per
    checkpoint, and the front is read on that mean path."""
    from disel.experiments.study.fronts import observed_front, observed_paths

    tokens = np.array([10.0, 30.0])
    correct = [np.array([[0, 0, 0, 0], [1, 1, 0, 0]]), np.array([[0, 0, 0, 0], [1, 1, 1, 1]])]  # EM 0→.5, 0→1
    sums = [np.array([[0.0, 0.0], [10.0, 30.0]]), np.array([[0.0, 0.0], [30.0, 90.0]])]  # KL 0→1, 0→3
    runs = [FrontierRun("m", "c", s, np.array([0, 10]), correct[s], sums[s], tokens) for s in (0, 1)]
    np.testing.assert_allclose(observed_paths(runs)["m"]["c"], [[0.0, 0.75], [0.0, 2.0]])
    np.testing.assert_allclose(observed_front(runs, [0.375, 0.75])["m"], [1.0, 2.0])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": np.array([0, 0])}, "strictly increasing"),
        ({"correct": np.array([[0, 2], [1, 1]])}, "0/1"),
        ({"text_tokens": np.array([0.0])}, "positive"),
        ({"text_sums": np.array([[0.0], [np.nan]])}, "finite"),
    ],
)
def test_bad_runs_are_refused_naming_the_field(changes, message):
    fields = dict(steps=np.array([0, 1]), correct=np.array([[0, 0], [1, 0]]), text_sums=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=message):
        FrontierRun("m", "c", 0, **{**fields, "text_tokens": np.array([5.0]), **changes})


def test_front_shares_tell_which_configuration_makes_each_part_of_the_front():
    """Forgetting 1·L up to .5 (slope 1) and 3·L up to .7: the first gives the front on [0, .5] and the steeper
    only above, so on a grid over (0, .7] the shares are 5/7 and 2/7 (100 levels: 71 and 29)."""
    from disel.experiments.study.fronts import front_shares

    runs = _line_runs("lora", [1.0, 3.0], [0.5, 0.7]) + _line_runs("disel", [2.0], [0.4])
    shares = front_shares(runs)
    assert shares["lora"] == pytest.approx({"slope=1.0": 0.71, "slope=3.0": 0.29})
    assert shares["disel"] == {"slope=2.0": 1.0}
