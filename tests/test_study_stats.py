"""Matched-accuracy interpolation and bootstrap (disel.experiments.study.stats) on synthetic paths."""

import numpy as np
import pytest

from disel.experiments.study.stats import (
    RunPath,
    choose_levels,
    exact_match_interval,
    interpolate_first_crossing,
    matched_differences,
)


def test_interpolation_is_linear_between_checkpoints():
    """On a monotone path the value at a level is the straight line between the bracketing checkpoints."""
    em = np.array([0.0, 0.2, 0.4, 0.6])
    ret = np.array([1.0, 2.0, 3.0, 4.0])
    out = interpolate_first_crossing(em, ret, np.array([0.3, 0.2, 0.55, 0.6]))
    np.testing.assert_allclose(out, [2.5, 2.0, 3.75, 4.0])


def test_interpolation_takes_the_first_crossing_of_a_non_monotone_path():
    """em dips from 0.5 to 0.3 and recovers: level 0.4 is read on the first rise (0 → 0.5), not the second."""
    em = np.array([0.0, 0.5, 0.3, 0.6])
    ret = np.array([1.0, 2.0, 5.0, 9.0])
    (value,) = interpolate_first_crossing(em, ret, np.array([0.4]))
    assert value == pytest.approx(1.0 + 0.8 * 1.0)


def test_interpolation_is_nan_where_a_level_is_not_crossed():
    """Levels above the path's maximum or below its start are undefined; equality at the start counts."""
    em = np.array([0.2, 0.4, 0.5])
    ret = np.array([1.0, 2.0, 3.0])
    out = interpolate_first_crossing(em, ret, np.array([0.1, 0.2, 0.51]))
    assert np.isnan(out[0]) and out[1] == 1.0 and np.isnan(out[2])


def test_interpolation_broadcasts_over_leading_dimensions():
    """(B, K) exact-match rows give (B, L) values, each row as if interpolated alone."""
    rng = np.random.default_rng(0)
    em = np.sort(rng.uniform(size=(5, 6)), axis=1)
    ret = rng.normal(size=6)
    levels = np.array([0.3, 0.5])
    batched = interpolate_first_crossing(em, ret, levels)
    for row in range(5):
        np.testing.assert_array_equal(batched[row], interpolate_first_crossing(em[row], ret, levels))


def _linear_run(rng, problems, offset, steps=8, top=0.8):
    """True path em(t) = top·t, retention = 2·em(t) + 1 + offset; problem p is solved from the checkpoint
    where em(t) passes its difficulty u_p ~ U(0, 1) (so correctness is monotone, like a learned problem)."""
    t = np.linspace(0, 1, steps)
    em_true = top * t
    difficulty = rng.uniform(size=problems)
    correct = difficulty[None, :] < em_true[:, None]  # (K, P)
    return RunPath(steps=np.arange(steps) * 10, correct=correct, retention=2 * em_true + 1 + offset)


def _synthetic_arms(problems, seed, seeds=2):
    rng = np.random.default_rng(seed)
    disel = [_linear_run(rng, problems, offset=-0.3) for _ in range(seeds)]
    lora = [_linear_run(rng, problems, offset=0.0) for _ in range(seeds)]
    return disel, lora


def test_matched_difference_recovers_a_constant_offset_and_interval_covers_it():
    """Two linear paths whose retention differs by -0.3 at every accuracy: the estimate is near -0.3 and
    the 95% interval covers it at every level."""
    disel, lora = _synthetic_arms(problems=400, seed=1)
    levels = choose_levels([*disel, *lora])
    assert levels.size == 3
    results = matched_differences(disel, lora, levels, np.random.default_rng(2), replicates=1000)
    for r in results:
        assert r.low <= -0.3 <= r.high, r
        assert abs(r.difference + 0.3) < 0.15
        assert r.defined_fraction > 0.9


def test_matched_interval_shrinks_with_more_problems():
    """The interval is a sampling interval over problems: ten times the problems makes it narrower."""

    def width(problems):
        disel, lora = _synthetic_arms(problems=problems, seed=3)
        levels = np.array([0.3, 0.5])
        results = matched_differences(disel, lora, levels, np.random.default_rng(4), replicates=500)
        return np.mean([r.high - r.low for r in results])

    assert width(2000) < 0.6 * width(200)


def test_matched_difference_is_reproducible_with_the_same_generator_seed():
    """Seeded np.random.Generator → identical intervals."""
    disel, lora = _synthetic_arms(problems=100, seed=5)
    a = matched_differences(disel, lora, [0.4], np.random.default_rng(9), replicates=200)
    b = matched_differences(disel, lora, [0.4], np.random.default_rng(9), replicates=200)
    assert a == b


def test_choose_levels_is_empty_when_one_arm_never_reaches_the_other():
    """A run that never rises above the other's start leaves no common exact-match range."""
    low = RunPath(steps=[0, 1], correct=[[0, 0, 0, 0], [1, 0, 0, 0]], retention=[0.0, 1.0])
    high = RunPath(steps=[0, 1], correct=[[1, 1, 0, 0], [1, 1, 1, 0]], retention=[0.0, 1.0])
    assert choose_levels([low, high]).size == 0
    np.testing.assert_allclose(choose_levels([high], fractions=[0.5]), [0.625])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="steps must be strictly increasing"):
        RunPath(steps=[0, 0], correct=[[0], [1]], retention=[0.0, 1.0])
    with pytest.raises(ValueError, match="correct must hold booleans"):
        RunPath(steps=[0], correct=[[2]], retention=[0.0])
    a = RunPath(steps=[0], correct=[[0, 1]], retention=[0.0])
    b = RunPath(steps=[0], correct=[[0, 1, 1]], retention=[0.0])
    with pytest.raises(ValueError, match="same test problems"):
        matched_differences([a], [b], [0.5], np.random.default_rng(0))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        matched_differences([a], [a], [0.5], 0)


def test_exact_match_interval_covers_the_true_rate_and_has_binomial_width():
    """Bootstrap interval of a Bernoulli(0.3) sample: covers 0.3, width ≈ 2·1.96·sqrt(p(1-p)/n)."""
    rng = np.random.default_rng(0)
    correct = rng.uniform(size=400) < 0.3
    estimate, low, high = exact_match_interval(correct, np.random.default_rng(1), replicates=4000)
    assert estimate == correct.mean()
    assert low <= 0.3 <= high
    expected = 2 * 1.96 * np.sqrt(0.3 * 0.7 / 400)
    assert abs((high - low) - expected) < 0.2 * expected


def test_exact_match_interval_over_seeds_is_wider_when_seeds_disagree():
    """(S, P): seeds resampled too, so two seeds with very different accuracy widen the interval."""
    rng = np.random.default_rng(0)
    same = np.stack([rng.uniform(size=300) < 0.5 for _ in range(2)])
    apart = np.stack([rng.uniform(size=300) < 0.2, rng.uniform(size=300) < 0.8])
    _, lo1, hi1 = exact_match_interval(same, np.random.default_rng(1), replicates=2000)
    _, lo2, hi2 = exact_match_interval(apart, np.random.default_rng(1), replicates=2000)
    assert hi2 - lo2 > 2 * (hi1 - lo1)
