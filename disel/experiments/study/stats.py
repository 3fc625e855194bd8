"""Matched-accuracy comparison of two fine-tuning methods, with bootstrap intervals (NumPy only).

Each training run saves checkpoints; each checkpoint has a per-problem correctness vector on the same
held-out test problems and a retention metric (perplexity or KL on text never trained on). The run's
checkpoints trace a path in (exact match, retention) space. Two methods are compared *at equal accuracy*:
each path is interpolated at exact-match levels that every run reaches, and the retention values there
are subtracted (DISeL minus LoRA). For perplexity and KL lower is better, so a negative difference means
DISeL keeps more of the base model.

**Non-monotone paths.** Exact match can dip during training. A path is read at its *first crossing* of
a level: the first checkpoint ``k`` with ``em[k] ≥ L``, interpolated linearly against checkpoint
``k - 1`` (where ``em[k-1] < L``). That is the retention paid to get to that accuracy for the first
time, which is what a practitioner stopping at that accuracy would get; later dips and recoveries
are ignored. A level the path never reaches, or one below its starting accuracy (a path that starts
above ``L`` never crosses it; equality at the start counts), gives NaN.

**Bootstrap.** One replicate resamples the test problems with replacement (the same indices for every
run: all runs are scored on the same problems, so the comparison is paired) and, separately within
each arm, the training seeds with replacement; it recomputes every checkpoint's exact match from the
correctness arrays, re-interpolates at the *fixed* levels and averages over the drawn seeds. The
retention values themselves are held fixed (their own sampling noise from the finite text is not
resampled). With two seeds the seed resampling is crude (three possible draws) and understates the
between-seed spread; it is still better than ignoring it. A replicate in which some drawn run does not
reach a level is undefined at that level; intervals are percentiles of the defined replicates, and the
fraction defined is reported with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MatchedDifference",
    "RunPath",
    "choose_levels",
    "exact_match_interval",
    "interpolate_first_crossing",
    "matched_differences",
]


@dataclass(frozen=True)
class RunPath:
    """One training run's checkpoints.

    Attributes:
        steps: (K,) training step of each checkpoint, increasing (step 0 = the base model, if saved).
        correct: (K, P) per-problem correctness (bool or 0/1) of each checkpoint on the P test problems.
        retention: (K,) retention metric of each checkpoint (e.g. English KL to the base model).
    """

    steps: np.ndarray
    correct: np.ndarray
    retention: np.ndarray

    def __post_init__(self) -> None:
        steps = np.asarray(self.steps)
        correct = np.asarray(self.correct)
        retention = np.asarray(self.retention, dtype=np.float64)
        if correct.ndim != 2 or correct.shape[0] < 1 or correct.shape[1] < 1:
            raise ValueError(f"correct must be a (checkpoints, problems) array, got shape {correct.shape}")
        if correct.dtype != np.bool_ and not np.isin(correct, (0, 1)).all():
            raise ValueError("correct must hold booleans or 0/1 values")
        k = correct.shape[0]
        if steps.shape != (k,) or retention.shape != (k,):
            raise ValueError(
                f"steps and retention must have shape ({k},) (one per checkpoint row of correct), "
                f"got steps {steps.shape}, retention {retention.shape}"
            )
        if k > 1 and not np.all(np.diff(steps) > 0):
            raise ValueError(f"steps must be strictly increasing, got {steps.tolist()}")
        for name, value in (("steps", steps), ("correct", correct.astype(bool)), ("retention", retention)):
            object.__setattr__(self, name, value)

    @property
    def exact_match(self) -> np.ndarray:
        """(K,) fraction of problems correct at each checkpoint."""
        return self.correct.mean(axis=1)

    @property
    def num_problems(self) -> int:
        return self.correct.shape[1]


def interpolate_first_crossing(exact_match: np.ndarray, retention: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Retention where a path first reaches each exact-match level (linear between checkpoints).

    Shapes: ``exact_match`` (..., K), ``retention`` (K,) or (..., K), ``levels`` (L,) → (..., L).
    NaN where the path never reaches a level or starts above it (see the module docstring).
    """
    em = np.asarray(exact_match, dtype=np.float64)
    ret = np.broadcast_to(np.asarray(retention, dtype=np.float64), em.shape)
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1:
        raise ValueError(f"levels must be one-dimensional, got shape {levels.shape}")
    reached = em[..., None, :] >= levels[:, None]  # (..., L, K)
    first = reached.argmax(axis=-1)  # (..., L): first index with em >= level (0 if none)
    ever = reached.any(axis=-1)  # (..., L)
    prev = np.maximum(first - 1, 0)  # (..., L)
    em_lists = np.broadcast_to(em[..., None, :], reached.shape)  # (..., L, K)
    ret_lists = np.broadcast_to(ret[..., None, :], reached.shape)
    # (..., L) each: exact match and retention at the first checkpoint reaching the level and at the one before
    em_hi, ret_hi = (np.take_along_axis(lists, first[..., None], -1)[..., 0] for lists in (em_lists, ret_lists))
    em_lo, ret_lo = (np.take_along_axis(lists, prev[..., None], -1)[..., 0] for lists in (em_lists, ret_lists))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (levels - em_lo) / (em_hi - em_lo)  # in (0, 1] where first > 0 (em_lo < level <= em_hi)
        value = np.where(first > 0, ret_lo + t * (ret_hi - ret_lo), ret_hi)
    at_start_exactly = (first == 0) & (em_hi == levels)
    defined = ever & ((first > 0) | at_start_exactly)
    return np.where(defined, value, np.nan)


def choose_levels(runs: Sequence[RunPath], fractions: Sequence[float] = (0.25, 0.5, 0.75)) -> np.ndarray:
    """Exact-match levels every run in ``runs`` crosses, at ``fractions`` of the common range.

    The common range is ``[max over runs of the starting exact match, min over runs of the highest
    exact match]``; levels are ``lo + f · (hi - lo)``. Interior fractions (not 0 or 1) leave room for
    the bootstrap, whose resampled paths move a little. Returns an empty array when the range is empty
    (some run never gets above another's start): the arms cannot be compared at equal accuracy.
    """
    if not runs:
        raise ValueError("runs must hold at least one RunPath")
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or fractions.size == 0 or np.any((fractions < 0) | (fractions > 1)):
        raise ValueError(f"fractions must be a non-empty list of numbers in [0, 1], got {fractions.tolist()}")
    lo = max(float(run.exact_match[0]) for run in runs)
    hi = min(float(run.exact_match.max()) for run in runs)
    if hi <= lo:
        return np.empty(0)
    return lo + fractions * (hi - lo)


@dataclass(frozen=True)
class MatchedDifference:
    """Retention of two arms at one exact-match level, and their difference with a bootstrap interval.

    ``disel`` and ``lora`` are the seed-averaged retention values on the observed data; ``difference`` =
    ``disel - lora``; ``low``/``high`` its percentile interval at ``confidence``; ``defined_fraction`` the
    fraction of bootstrap replicates in which every drawn run reached the level (intervals from fewer
    than ~0.9 deserve caution); ``replicates`` the number drawn.
    """

    level: float
    disel: float
    lora: float
    difference: float
    low: float
    high: float
    confidence: float
    defined_fraction: float
    replicates: int


def _check_same_problems(runs: Sequence[RunPath]) -> int:
    sizes = {run.num_problems for run in runs}
    if len(sizes) != 1:
        raise ValueError(f"every run must be scored on the same test problems, got problem counts {sorted(sizes)}")
    return sizes.pop()


def _problem_weights(rng: np.random.Generator, replicates: int, problems: int) -> np.ndarray:
    """(B, P) how often each problem is drawn in each replicate (multinomial counts summing to P)."""
    return rng.multinomial(problems, np.full(problems, 1.0 / problems), size=replicates).astype(np.float64)


def _check_bootstrap_args(rng: np.random.Generator, replicates: int, confidence: float) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"replicates must be a positive integer, got {replicates!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _arm_retention_at(runs: Sequence[RunPath], levels: np.ndarray) -> np.ndarray:
    """Seed-mean retention where each run first reaches each exact-match level: (L,) → (L,).

    NaN at a level some seed does not reach.
    """
    return np.stack([interpolate_first_crossing(r.exact_match, r.retention, levels) for r in runs]).mean(axis=0)


def _arm_bootstrap_replicates(
    runs: Sequence[RunPath], weights: np.ndarray, problems: int, levels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of :func:`_arm_retention_at`: problems reweighted by ``weights`` (B, P), seeds
    redrawn with replacement per replicate → (B, L)."""
    exact_match = [weights @ r.correct.T.astype(np.float64) / problems for r in runs]  # S × (B, K)
    # (S, B, L): each run's retention where its replicate paths first reach each level
    per_run = np.stack([interpolate_first_crossing(em, r.retention, levels) for em, r in zip(exact_match, runs)])
    drawn = rng.integers(0, len(runs), size=(weights.shape[0], len(runs)))  # (B, S): seeds drawn per replicate
    picked = np.take_along_axis(per_run.transpose(1, 0, 2), drawn[..., None], axis=1)  # (B, S, L)
    return picked.mean(axis=1)  # (B, L)


def matched_differences(
    disel_runs: Sequence[RunPath],
    lora_runs: Sequence[RunPath],
    levels: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    replicates: int = 2000,
    confidence: float = 0.95,
) -> list[MatchedDifference]:
    """DISeL-minus-LoRA retention at each exact-match level, with a bootstrap interval (module docstring).

    ``disel_runs`` / ``lora_runs``: one :class:`RunPath` per training seed, all on the same test problems
    and with the same retention metric. Returns one :class:`MatchedDifference` per level.
    """
    _check_bootstrap_args(rng, replicates, confidence)
    if not disel_runs or not lora_runs:
        raise ValueError("disel_runs and lora_runs must each hold at least one RunPath")
    levels = np.asarray(levels, dtype=np.float64)
    problems = _check_same_problems([*disel_runs, *lora_runs])

    observed_disel = _arm_retention_at(disel_runs, levels)  # (L,)
    observed_lora = _arm_retention_at(lora_runs, levels)  # (L,)
    weights = _problem_weights(rng, replicates, problems)  # (B, P)
    disel_replicates = _arm_bootstrap_replicates(disel_runs, weights, problems, levels, rng)  # (B, L)
    diffs = disel_replicates - _arm_bootstrap_replicates(lora_runs, weights, problems, levels, rng)  # (B, L)
    alpha = (1 - confidence) / 2
    results = []
    for j, level in enumerate(levels):
        column = diffs[:, j]
        finite = column[np.isfinite(column)]
        low, high = np.quantile(finite, [alpha, 1 - alpha]) if finite.size else (np.nan, np.nan)
        results.append(
            MatchedDifference(
                level=float(level),
                disel=float(observed_disel[j]),
                lora=float(observed_lora[j]),
                difference=float(observed_disel[j] - observed_lora[j]),
                low=float(low),
                high=float(high),
                confidence=confidence,
                defined_fraction=finite.size / replicates,
                replicates=replicates,
            )
        )
    return results


def exact_match_interval(
    correct: np.ndarray, rng: np.random.Generator, replicates: int = 2000, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(estimate, low, high): exact match with a percentile bootstrap interval.

    ``correct``: (P,) one run's per-problem correctness, or (S, P) one checkpoint of S seeds on the same
    problems; then problems are resampled jointly and seeds independently, and the estimate is the
    mean over seeds.
    """
    _check_bootstrap_args(rng, replicates, confidence)
    correct = np.asarray(correct, dtype=np.float64)
    if correct.ndim == 1:
        correct = correct[None, :]
    if correct.ndim != 2 or correct.shape[1] < 1:
        raise ValueError(f"correct must have shape (problems,) or (seeds, problems), got {correct.shape}")
    seeds, problems = correct.shape
    per_seed = _problem_weights(rng, replicates, problems) @ correct.T / problems  # (B, S)
    drawn = rng.integers(0, seeds, size=(replicates, seeds))  # (B, S)
    boot = np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1)  # (B,)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return float(correct.mean()), float(low), float(high)
