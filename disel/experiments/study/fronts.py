"""Learning–forgetting fronts of fine-tuning methods, compared without the optimism of a minimum (NumPy only).

**Points and paths.** A *run* is one (method, configuration, seed): e.g. LoRA at learning rate 2e-4, seed 0.
Each of its checkpoints (step 0 = the base model, which every run shares) is a point: accuracy on the P test
problems (from per-problem correctness) and forgetting on the T retention texts (from per-text sums: a
text's summed token KL, or summed NLL for perplexity, and its scored token count, so the token-weighted
mean of any resample of texts can be recomputed). A *configuration's path* is its seed-mean point at each
checkpoint, joined by straight lines in (accuracy, forgetting) space.

**Front.** A method's front at accuracy level ``L`` is the lowest forgetting on any of its configurations'
paths at accuracy at least ``L`` (the Pareto front: a point with more accuracy and less forgetting is
better). On a straight segment the minimum over its part with accuracy ``≥ L`` lies at an end of that part,
so it is the smaller of (i) the forgetting of the checkpoints with accuracy ``≥ L`` and (ii) the forgetting
where a segment crosses ``L``, interpolated linearly. A level no path reaches gives NaN.

**The optimism of a minimum.** The front takes the minimum over configurations of noisy points: a
configuration whose accuracy was lucky on these test problems, or whose forgetting was lucky on these
texts, sets the front. So the plain ("naive") front is biased low, more so for a method with more
configurations. Two remedies are computed:

(a) **Cross-fitted split** (the reported estimate and interval). The test problems and the retention texts
    are split at random into halves A and B. At each level the configuration is chosen on half A (the one
    setting A's front) and scored on half B (its own path's value there, from B's problems and texts);
    then the roles swap and the two scores are averaged (one score where the other's chosen path does not
    reach the level on its scoring half). Chosen and scored on independent data, the estimate is not
    biased by the choice: it estimates the forgetting of the configuration one would pick, which is at
    least the true front (a slightly pessimistic, honest answer). The interval is the textbook one of
    sample splitting, conditional on the choices: the choices made on the observed halves are kept, and
    the percentile bootstrap resamples problems and texts with replacement within each half and seeds
    within each configuration, re-scoring the chosen configurations. (Redoing the choice in every
    replicate was tried and is conservative: in the bootstrap world the configurations differ by their
    observed noise, so the choice adds spread that the real choice among equals does not; on the
    noise-only test it covered 100% instead of 95%.)
(b) **Whole-front bootstrap** (reported beside it, as ``naive``). Every front is rebuilt from the same
    resampled problems, texts and seeds, on all the data. Its interval shows the variability of the naive
    front but is centred on the biased minimum (replicates take a minimum too), so it does not remove the
    bias; the test on noise-only data shows it covering the truth less often than (a).

Why (a): its coverage holds whatever the number of configurations (the noise-only test shows it near the
nominal rate where the naive front is biased and its interval rarely covers the truth); the price is wider
intervals, each choice and score using half of the problems and texts (cross-fitting gives back most of
the scoring half).

**Seeds.** Most configurations have one seed, so seed noise in the choice is not removed by splitting
problems: the study's two extra seeds for each method's two best configurations, run after choosing
them, are clean held-out replicates of exactly that choice.

**Comparisons.** Front differences (method − reference, negative: the method forgets less) are taken at
exact-match levels between the base accuracy and the highest level both methods reach (the smaller of their
cross-fitted best accuracies, lowered where needed to the highest level at which both cross-fitted fronts are
defined on the observed data: a half's chosen configuration may fall short of it on the other half), fixed
before resampling, with the same resampled problems and texts for both
methods (paired). Best accuracy per method: the highest seed-mean checkpoint accuracy, cross-fitted the same
way (chosen on one half, scored on the other).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BestAccuracy",
    "FrontDifference",
    "FrontEstimate",
    "FrontSettings",
    "FrontierComparison",
    "FrontierRun",
    "ProxyFit",
    "compare_fronts",
    "comparison_levels",
    "front",
    "front_shares",
    "method_fronts",
    "observed_front",
    "observed_paths",
    "path_front",
    "r_squared",
]


@dataclass(frozen=True)
class FrontierRun:
    """One (method, configuration, seed) run with one forgetting measure.

    Attributes:
        method, configuration, seed: what was trained (``configuration`` names the hyperparameters, e.g.
            ``"lr=2e-4"``; post-hoc arms name theirs too, e.g. ``"lr=2e-4,lambda=0.5"``).
        steps: (K,) checkpoint steps, increasing; include step 0 (the base model) to start the path there.
        correct: (K, P) per-problem correctness of each checkpoint (bool or 0/1).
        text_sums: (K, T) per retention text, the forgetting summed over its scored tokens (token KL, or NLL
            for perplexity).
        text_tokens: (T,) scored tokens per text (the same texts and tokenizer at every checkpoint).
    """

    method: str
    configuration: str
    seed: int
    steps: np.ndarray
    correct: np.ndarray
    text_sums: np.ndarray
    text_tokens: np.ndarray

    def __post_init__(self) -> None:
        steps, correct = np.asarray(self.steps), np.asarray(self.correct)
        sums, tokens = np.asarray(self.text_sums, dtype=np.float64), np.asarray(self.text_tokens, dtype=np.float64)
        where = f"run {self.method}/{self.configuration}/seed {self.seed}"
        if correct.ndim != 2 or 0 in correct.shape:
            raise ValueError(f"{where}: correct must be a (checkpoints, problems) array, got shape {correct.shape}")
        if correct.dtype != np.bool_ and not np.isin(correct, (0, 1)).all():
            raise ValueError(f"{where}: correct must hold booleans or 0/1 values")
        k = correct.shape[0]
        if steps.shape != (k,) or (k > 1 and not np.all(np.diff(steps) > 0)):
            raise ValueError(f"{where}: steps must be ({k},) strictly increasing, got {steps.tolist()}")
        if tokens.ndim != 1 or tokens.size == 0 or not np.all(tokens > 0):
            raise ValueError(f"{where}: text_tokens must be a non-empty (texts,) array of positive counts")
        if sums.shape != (k, tokens.size) or not np.all(np.isfinite(sums)):
            raise ValueError(f"{where}: text_sums must be finite with shape ({k}, {tokens.size}), got {sums.shape}")
        for name, value in (("steps", steps), ("correct", correct.astype(bool)), ("text_sums", sums)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "text_tokens", tokens)


@dataclass(frozen=True)
class FrontSettings:
    """``replicates`` bootstrap draws; ``confidence`` of the percentile intervals; ``fractions`` of the range
    [base accuracy, highest level both methods reach] where fronts are compared (1.0 = that highest level);
    ``exponentiate``: the measure is ``exp`` of the token mean (perplexity from summed NLL)."""

    replicates: int = 2000
    confidence: float = 0.95
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    exponentiate: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.replicates, bool) or not isinstance(self.replicates, int) or self.replicates < 1:
            raise ValueError(f"replicates must be a positive integer, got {self.replicates!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if len(self.fractions) == 0 or any(not 0 <= f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be a non-empty list of numbers in [0, 1], got {self.fractions!r}")


def path_front(accuracy: np.ndarray, forgetting: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Lowest forgetting on a piecewise-linear path at accuracy ≥ each level (module docstring).

    Shapes: ``accuracy``, ``forgetting`` (..., K); ``levels`` (L,) → (..., L); NaN where never reached.
    """
    acc = np.asarray(accuracy, dtype=np.float64)[..., None, :]  # (..., 1, K)
    forg = np.asarray(forgetting, dtype=np.float64)[..., None, :]  # (..., 1, K)
    level = np.asarray(levels, dtype=np.float64)[:, None]  # (L, 1)
    at_points = np.where(acc >= level, forg, np.inf).min(axis=-1, initial=np.inf)  # (..., L)
    a0, a1, f0, f1 = acc[..., :-1], acc[..., 1:], forg[..., :-1], forg[..., 1:]  # (..., 1, K-1) each
    crosses = (np.minimum(a0, a1) <= level) & (level <= np.maximum(a0, a1)) & (a0 != a1)  # (..., L, K-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = f0 + (level - a0) / (a1 - a0) * (f1 - f0)  # (..., L, K-1)
    on_segments = np.where(crosses, crossing, np.inf).min(axis=-1, initial=np.inf)  # (..., L)
    best = np.minimum(at_points, on_segments)
    return np.where(np.isfinite(best), best, np.nan)


def _lowest(per_path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum over paths and which path gives it: (..., C, L) → (..., L) values, (..., L) index (-1: none)."""
    filled = np.where(np.isnan(per_path), np.inf, per_path)
    value = filled.min(axis=-2)
    index = filled.argmin(axis=-2)
    none = ~np.isfinite(value)
    return np.where(none, np.nan, value), np.where(none, -1, index)


def front(accuracy: np.ndarray, forgetting: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A method's front: (..., C, K) paths of its C configurations, (L,) levels → (..., L) lowest forgetting and
    (..., L) the configuration giving it (-1 where no path reaches the level)."""
    return _lowest(path_front(accuracy, forgetting, levels))


def _take_path(per_path: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``per_path[..., index, l]`` for each level: (..., C, L), (..., L) with -1 = none → (..., L)."""
    picked = np.take_along_axis(per_path, np.maximum(index, 0)[..., None, :], axis=-2)[..., 0, :]
    return np.where(index >= 0, picked, np.nan)


# --- Paths under resampling ---------------------------------------------------------------------------------


def _group(runs: Sequence[FrontierRun]) -> dict[str, list[list[FrontierRun]]]:
    """method → its configurations (in first-seen order) → their seeds' runs; checks shared problems and texts."""
    if not runs:
        raise ValueError("runs must hold at least one FrontierRun")
    shapes = {(r.correct.shape[1], r.text_tokens.size) for r in runs}
    if len(shapes) != 1:
        raise ValueError(f"every run must use the same test problems and texts, got (problems, texts) {shapes}")
    grouped: dict[str, dict[str, list[FrontierRun]]] = {}
    for run in runs:
        grouped.setdefault(run.method, {}).setdefault(run.configuration, []).append(run)
    for method, configurations in grouped.items():
        for name, seeds in configurations.items():
            if any(not np.array_equal(s.steps, seeds[0].steps) for s in seeds):
                raise ValueError(f"{method}/{name}: every seed must have the same checkpoint steps")
    return {method: list(configurations.values()) for method, configurations in grouped.items()}


def _run_points(run: FrontierRun, problem_w: np.ndarray, text_w: np.ndarray, exponentiate: bool) -> np.ndarray:
    """(R, 2, K) weighted accuracy and forgetting of each checkpoint, from (R, P) and (R, T) weights."""
    accuracy = problem_w @ run.correct.T.astype(np.float64) / problem_w.sum(axis=1, keepdims=True)  # (R, K)
    forgetting = (text_w @ run.text_sums.T) / (text_w @ run.text_tokens)[:, None]  # (R, K)
    return np.stack([accuracy, np.exp(forgetting) if exponentiate else forgetting], axis=1)


def _method_paths(
    configurations: list[list[FrontierRun]],
    problem_w: np.ndarray,
    text_w: np.ndarray,
    seed_draws: list[np.ndarray],
    exponentiate: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean paths of every configuration: (R, C, K) accuracy and forgetting.

    ``seed_draws[c]`` (R, S_c): the seeds of configuration c averaged in each replicate. Shorter paths are
    padded with their last point, which changes no front (a repeated point adds no new point or crossing).
    """
    longest = max(len(seeds[0].steps) for seeds in configurations)
    paths = []
    for seeds, drawn in zip(configurations, seed_draws):
        points = np.stack([_run_points(run, problem_w, text_w, exponentiate) for run in seeds], axis=1)  # (R,S,2,K)
        mean = np.take_along_axis(points, drawn[:, :, None, None], axis=1).mean(axis=1)  # (R, 2, K)
        paths.append(np.pad(mean, ((0, 0), (0, 0), (0, longest - mean.shape[-1])), mode="edge"))
    stacked = np.stack(paths, axis=1)  # (R, C, 2, K)
    return stacked[:, :, 0], stacked[:, :, 1]


@dataclass(frozen=True)
class _Resamples:
    """Row 0: the data as observed; rows 1..B: bootstrap replicates. Problem and text weights per half (R, P)
    and (R, T) (zero outside the half); ``seeds[method][c]`` (R, S_c) seed draws."""

    problems: dict[str, np.ndarray]  # "a", "b", "all"
    texts: dict[str, np.ndarray]
    seeds: dict[str, list[np.ndarray]]


def _stratified_counts(rng: np.random.Generator, half: np.ndarray, replicates: int) -> dict[str, np.ndarray]:
    """(1 + B, N) weights: row 0 ones; then multinomial counts drawn within each half separately."""
    weights = {}
    for name, members in (("a", half), ("b", ~half)):
        n = int(members.sum())
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)  # (B, n)
        rows = np.zeros((1 + replicates, half.size))
        rows[0, members] = 1.0
        rows[1:, members] = counts
        weights[name] = rows
    weights["all"] = weights["a"] + weights["b"]
    return weights


def _random_half(rng: np.random.Generator, n: int, what: str) -> np.ndarray:
    if n < 2:
        raise ValueError(f"splitting needs at least 2 {what}, got {n}")
    half = np.zeros(n, dtype=bool)
    half[rng.permutation(n)[: n // 2]] = True
    return half


def _checked_half(half: np.ndarray | None, n: int, what: str, rng: np.random.Generator) -> np.ndarray:
    if half is None:
        return _random_half(rng, n, what)
    half = np.asarray(half)
    if half.shape != (n,) or half.dtype != np.bool_ or half.all() or not half.any():
        raise ValueError(f"{what}_half must be a ({n},) boolean mask with both halves non-empty")
    return half


def _resamples(
    grouped: dict[str, list[list[FrontierRun]]],
    settings: FrontSettings,
    rng: np.random.Generator,
    problem_half: np.ndarray | None,
    text_half: np.ndarray | None,
) -> _Resamples:
    first = next(iter(grouped.values()))[0][0]
    problems, texts = first.correct.shape[1], first.text_tokens.size
    p_half = _checked_half(problem_half, problems, "problem", rng)
    t_half = _checked_half(text_half, texts, "text", rng)
    b = settings.replicates
    seeds = {
        method: [
            np.vstack([np.arange(len(s))[None, :], rng.integers(0, len(s), size=(b, len(s)))]) for s in configurations
        ]
        for method, configurations in grouped.items()
    }
    return _Resamples(_stratified_counts(rng, p_half, b), _stratified_counts(rng, t_half, b), seeds)


def observed_paths(runs: Sequence[FrontierRun], exponentiate: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """method → configuration → its seed-mean path as observed, (2, K): accuracy row, forgetting row."""
    result: dict[str, dict[str, np.ndarray]] = {}
    for method, configurations in _group(runs).items():
        first = configurations[0][0]
        problems, texts = np.ones((1, first.correct.shape[1])), np.ones((1, first.text_tokens.size))
        for seeds in configurations:
            draws = [np.arange(len(seeds))[None, :]]
            accuracy, forgetting = _method_paths([seeds], problems, texts, draws, exponentiate)  # (1, 1, K) each
            result.setdefault(method, {})[seeds[0].configuration] = np.stack([accuracy[0, 0], forgetting[0, 0]])
    return result


def observed_front(
    runs: Sequence[FrontierRun], levels: Sequence[float] | np.ndarray, exponentiate: bool = False
) -> dict[str, np.ndarray]:
    """method → its (naive) front at ``levels`` (L,) on the data as observed, for drawing; NaN where unreached."""
    levels = np.asarray(levels, dtype=np.float64)
    fronts = {}
    for method, paths in observed_paths(runs, exponentiate).items():
        longest = max(p.shape[1] for p in paths.values())
        stacked = np.stack([np.pad(p, ((0, 0), (0, longest - p.shape[1])), mode="edge") for p in paths.values()])
        fronts[method] = front(stacked[:, 0], stacked[:, 1], levels)[0]
    return fronts


def front_shares(
    runs: Sequence[FrontierRun], grid: int = 100, exponentiate: bool = False
) -> dict[str, dict[str, float]]:
    """method → configuration → the share of the method's observed accuracy range (from the lowest base accuracy
    to its highest point, ``grid`` equally spaced levels) where that configuration gives its front: which
    configurations its front is made of (the study's second seeds go to each method's two largest)."""
    shares = {}
    for method, paths in observed_paths(runs, exponentiate).items():
        longest = max(p.shape[1] for p in paths.values())
        stacked = np.stack([np.pad(p, ((0, 0), (0, longest - p.shape[1])), mode="edge") for p in paths.values()])
        low, high = stacked[:, 0, 0].min(), stacked[:, 0].max()
        _, index = front(stacked[:, 0], stacked[:, 1], np.linspace(low, high, grid + 1)[1:])
        shares[method] = {name: float(np.mean(index == c)) for c, name in enumerate(paths)}
    return shares


# --- Estimates ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MethodReplicates:
    """One method's paths on half A, half B and all the data, each (R, C, K) accuracy and forgetting."""

    paths: dict[str, tuple[np.ndarray, np.ndarray]]
    configurations: list[str]
    steps: list[np.ndarray]

    def naive_front(self, levels: np.ndarray) -> np.ndarray:
        """(R, L) the front from all the data."""
        return front(*self.paths["all"], levels)[0]

    def crossfit_front(self, levels: np.ndarray) -> np.ndarray:
        """(R, L) chosen on one half of the observed data (row 0), scored on the other, both ways averaged; every
        replicate re-scores the same choices (module docstring, (a))."""
        per_a, per_b = (path_front(*self.paths[h], levels) for h in ("a", "b"))  # (R, C, L)
        chosen_on_a, chosen_on_b = (np.broadcast_to(_lowest(p[:1])[1], p[:, 0].shape) for p in (per_a, per_b))
        return _mean_of_defined(_take_path(per_a, chosen_on_b), _take_path(per_b, chosen_on_a))

    def observed(self) -> _MethodReplicates:
        """The observed data alone (row 0 of every path array)."""
        paths = {h: (accuracy[:1], forgetting[:1]) for h, (accuracy, forgetting) in self.paths.items()}
        return _MethodReplicates(paths, self.configurations, self.steps)

    def naive_best(self) -> np.ndarray:
        """(R,) highest seed-mean checkpoint accuracy, on all the data."""
        return self.paths["all"][0].max(axis=(1, 2))

    def crossfit_best(self) -> np.ndarray:
        """(R,) the highest observed point of one half, its accuracy on the other, both ways averaged."""
        flat = {h: self.paths[h][0].reshape(self.paths[h][0].shape[0], -1) for h in ("a", "b")}  # (R, C·K)
        return (flat["a"][:, flat["b"][0].argmax()] + flat["b"][:, flat["a"][0].argmax()]) / 2


def _mean_of_defined(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise mean of the defined (non-NaN) values of two arrays; NaN where neither is defined."""
    both = np.stack([x, y])
    count = np.isfinite(both).sum(axis=0)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, np.nansum(both, axis=0) / np.maximum(count, 1), np.nan)


def _replicates_of(
    grouped: dict[str, list[list[FrontierRun]]], draws: _Resamples, exponentiate: bool
) -> dict[str, _MethodReplicates]:
    result = {}
    for method, configurations in grouped.items():
        paths = {
            h: _method_paths(configurations, draws.problems[h], draws.texts[h], draws.seeds[method], exponentiate)
            for h in ("a", "b", "all")
        }
        names = [seeds[0].configuration for seeds in configurations]
        result[method] = _MethodReplicates(paths, names, [seeds[0].steps for seeds in configurations])
    return result


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(low, high, defined fraction) of the percentile interval of the finite values of (B,)."""
    finite = values[np.isfinite(values)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha]) if finite.size else (np.nan, np.nan)
    return float(low), float(high), finite.size / values.size


@dataclass(frozen=True)
class FrontEstimate:
    """A method's front at one level: ``estimate`` [``low``, ``high``] (cross-fitted, (a)); ``naive`` [``naive_low``,
    ``naive_high``] (whole-front bootstrap, (b)); ``defined_fraction`` of replicates where (a) is defined."""

    method: str
    level: float
    estimate: float
    low: float
    high: float
    defined_fraction: float
    naive: float
    naive_low: float
    naive_high: float


@dataclass(frozen=True)
class FrontDifference:
    """``method`` − ``reference`` front at one level, as :class:`FrontEstimate` (negative: ``method`` forgets
    less)."""

    method: str
    reference: str
    level: float
    estimate: float
    low: float
    high: float
    defined_fraction: float
    naive: float
    naive_low: float
    naive_high: float


@dataclass(frozen=True)
class BestAccuracy:
    """A method's best accuracy: cross-fitted ``estimate`` [``low``, ``high``]; ``naive`` (the observed maximum)
    and where it is (``configuration``, ``step``)."""

    method: str
    estimate: float
    low: float
    high: float
    naive: float
    configuration: str
    step: int


@dataclass(frozen=True)
class FrontierComparison:
    """Best accuracy per method and front differences per (method, reference) pair, with the settings used."""

    best: list[BestAccuracy]
    differences: list[FrontDifference]
    settings: FrontSettings


def _summary(values: np.ndarray, naive: np.ndarray, confidence: float) -> dict[str, float]:
    """Row 0 observed, rows 1.. replicates, of (R,) cross-fitted and naive values → the estimate fields."""
    low, high, defined = _interval(values[1:], confidence)
    naive_low, naive_high, _ = _interval(naive[1:], confidence)
    return dict(
        estimate=float(values[0]),
        low=low,
        high=high,
        defined_fraction=defined,
        naive=float(naive[0]),
        naive_low=naive_low,
        naive_high=naive_high,
    )


def _best_accuracy(method: str, reps: _MethodReplicates, confidence: float) -> BestAccuracy:
    best = reps.crossfit_best()
    low, high, _ = _interval(best[1:], confidence)
    observed = reps.paths["all"][0][0]  # (C, K)
    c, k = np.unravel_index(observed.argmax(), observed.shape)
    step = int(reps.steps[c][min(k, reps.steps[c].size - 1)])
    return BestAccuracy(method, float(best[0]), low, high, float(observed[c, k]), reps.configurations[c], step)


def comparison_levels(base_accuracy: float, best: Sequence[float], fractions: Sequence[float]) -> np.ndarray:
    """Levels ``lo + f · (hi − lo)``: ``lo`` the base accuracy, ``hi`` the smallest of the methods' best
    accuracies (the highest level all of them reach); empty when ``hi ≤ lo``."""
    hi = min(best)
    if not np.isfinite(hi) or hi <= base_accuracy:
        return np.empty(0)
    return base_accuracy + np.asarray(fractions, dtype=np.float64) * (hi - base_accuracy)


def _defined_top(pair: Sequence[_MethodReplicates], base_accuracy: float, top: float, grid: int = 200) -> float:
    """The highest level ≤ ``top`` at which every method of ``pair`` has a defined cross-fitted front on the
    observed data. ``top`` (the smaller cross-fitted best accuracy) averages two directions, so it can exceed
    what the configuration chosen on one half reaches on the other: there the cross-fitted front is undefined
    and the comparison's highest level is lowered (on a grid of ``grid`` steps above the base accuracy) to the
    highest one it is defined at. Only definedness chooses the level, not the difference measured there."""
    levels = np.linspace(top, base_accuracy, grid + 1)
    defined = np.all([np.isfinite(reps.observed().crossfit_front(levels)[0]) for reps in pair], axis=0)
    return float(levels[defined.argmax()]) if defined.any() else base_accuracy


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def method_fronts(
    runs: Sequence[FrontierRun],
    levels: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    settings: FrontSettings = FrontSettings(),
    problem_half: np.ndarray | None = None,
    text_half: np.ndarray | None = None,
) -> dict[str, list[FrontEstimate]]:
    """Each method's front at fixed ``levels``, cross-fitted with its interval and naive beside it.

    ``problem_half`` / ``text_half``: (P,) / (T,) boolean masks of half A (default: random halves from ``rng``).
    """
    _check_rng(rng)
    grouped = _group(runs)
    levels = np.asarray(levels, dtype=np.float64)
    reps = _replicates_of(grouped, _resamples(grouped, settings, rng, problem_half, text_half), settings.exponentiate)
    result = {}
    for method, rep in reps.items():
        crossfit, naive = rep.crossfit_front(levels), rep.naive_front(levels)  # (R, L)
        result[method] = [
            FrontEstimate(method, float(level), **_summary(crossfit[:, j], naive[:, j], settings.confidence))
            for j, level in enumerate(levels)
        ]
    return result


def compare_fronts(
    runs: Sequence[FrontierRun],
    pairs: Sequence[tuple[str, str]],
    rng: np.random.Generator,
    settings: FrontSettings = FrontSettings(),
    problem_half: np.ndarray | None = None,
    text_half: np.ndarray | None = None,
) -> FrontierComparison:
    """Best accuracy of every method, and ``method − reference`` fronts for each pair at ``settings.fractions``
    of [base accuracy, highest level both reach] (module docstring). Pairs without a common range get none."""
    _check_rng(rng)
    grouped = _group(runs)
    for pair in pairs:
        missing = [m for m in pair if m not in grouped]
        if missing:
            raise ValueError(f"pairs: {missing} are not methods of the runs (methods: {sorted(grouped)})")
    reps = _replicates_of(grouped, _resamples(grouped, settings, rng, problem_half, text_half), settings.exponentiate)
    best = {method: _best_accuracy(method, rep, settings.confidence) for method, rep in reps.items()}
    base_accuracy = float(min(rep.paths["all"][0][0, :, 0].min() for rep in reps.values()))
    differences = []
    for method, reference in pairs:
        ours, theirs = reps[method], reps[reference]
        top = _defined_top((ours, theirs), base_accuracy, min(best[method].estimate, best[reference].estimate))
        levels = comparison_levels(base_accuracy, [top], settings.fractions)
        crossfit = ours.crossfit_front(levels) - theirs.crossfit_front(levels)  # (R, L)
        naive = ours.naive_front(levels) - theirs.naive_front(levels)
        for j, level in enumerate(levels):
            summary = _summary(crossfit[:, j], naive[:, j], settings.confidence)
            differences.append(FrontDifference(method, reference, float(level), **summary))
    return FrontierComparison(list(best.values()), differences, settings)


# --- Is task-input KL a cheap proxy? ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyFit:
    """Least-squares line ``y ≈ intercept + slope · x`` over ``n`` points: ``r_squared`` (its R², the share of
    y's variance the line explains) and ``spearman`` (rank correlation: does x order the points as y does)."""

    r_squared: float
    slope: float
    intercept: float
    spearman: float
    n: int


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = values.argsort(kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(1, values.size + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def r_squared(task_kl: Sequence[float] | np.ndarray, english_kl: Sequence[float] | np.ndarray) -> ProxyFit:
    """How well a linear function of task-input KL predicts English (or code) KL over every point.

    ``task_kl``, ``english_kl``: (N,) values of the same N points (every checkpoint of every run). R² = r² of
    the least-squares line. Raises ``ValueError`` for different lengths, fewer than 3 points, non-finite
    values or a constant input.
    """
    x, y = np.asarray(task_kl, dtype=np.float64), np.asarray(english_kl, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"task_kl and english_kl must be 1-d of one length, got shapes {x.shape} and {y.shape}")
    if x.size < 3 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"r_squared needs at least 3 points of finite values, got {x.size}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("task_kl and english_kl must each vary across points (a constant has no fit)")
    dx, dy = x - x.mean(), y - y.mean()
    slope = float(dx @ dy / (dx @ dx))
    r = float(dx @ dy / np.sqrt((dx @ dx) * (dy @ dy)))
    rx, ry = _ranks(x) - (x.size + 1) / 2, _ranks(y) - (y.size + 1) / 2
    spearman = float(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)))
    return ProxyFit(r * r, slope, float(y.mean() - slope * x.mean()), spearman, int(x.size))
