"""The Gaussian-mixture regression of THEORY.md §2 (eq. 2, 10, 11, 26): one frozen problem description.

A training pair is drawn from a two-population mixture:

    with prob. p_ft:      x ~ N(μ_ft, Σ),  y = (W0 + Δ) x + ε     (fine-tuning population, label 1)
    with prob. 1 − p_ft:  x ~ N(μ_pt, Σ),  y = W0 x + ε           (pre-training population, label 0)

with ε ~ N(0, noise_std² I_m) independent of x. The paper uses p_ft = ½ and no noise.

Symbols ↔ fields: ``W0`` = ``W0`` (m, d), ``Δ`` = ``delta`` (m, d), ``μ_ft`` = ``mu_ft`` (d,),
``μ_pt`` = ``mu_pt`` (d,), ``Σ`` = ``sigma`` (d, d), mixture weight of P_ft = ``p_ft``,
noise standard deviation = ``noise_std``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import numpy as np

__all__ = ["MixtureProblem", "MixtureSample", "Population"]

Population = Literal["ft", "pt"]
POPULATIONS: tuple[str, ...] = ("ft", "pt")

# Relative tolerance for "Σ is symmetric" and for the numerical rank of Δ.
_SYMMETRY_RTOL = 1e-10


class MixtureSample(NamedTuple):
    """A sample from :meth:`MixtureProblem.sample`; unpacks as ``x, y, label = problem.sample(n)``.

    Shapes: ``x`` (n, d), ``y`` (n, m), ``label`` (n,) boolean, ``True`` (= 1) for the fine-tuning
    population. Boolean so that ``x[label]`` selects the fine-tuning rows (an integer array would index
    rows 0 and 1 instead).
    """

    x: np.ndarray
    y: np.ndarray
    label: np.ndarray


def _readonly_float64(name: str, value, ndim: int) -> np.ndarray:
    """A read-only float64 copy of ``value`` with ``ndim`` dimensions, all entries finite."""
    try:
        array = np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a real array, got {type(value).__name__}: {error}") from None
    if array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must contain only finite values")
    array.flags.writeable = False
    return array


def _as_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@dataclasses.dataclass(frozen=True, eq=False)
class MixtureProblem:
    """The toy regression of THEORY.md §2 (eq. 2, 10, 11, 26), validated and immutable.

    Fields (arrays are stored as read-only float64 copies):
        W0: pre-trained map ``W0`` (m, d).
        delta: task update ``Δ`` (m, d); the fine-tuning population needs ``W0 + Δ``.
        mu_ft: mean ``μ_ft`` (d,) of the fine-tuning population P_ft.
        mu_pt: mean ``μ_pt`` (d,) of the pre-training population P_pt.
        sigma: covariance ``Σ`` (d, d) shared by both populations (symmetric positive definite).
        p_ft: mixture weight of P_ft, in (0, 1); the paper's mixture is symmetric (½).
        noise_std: standard deviation of the isotropic output noise ε (≥ 0). Noise adds the constant
            ``noise_std² · m`` to every squared-error loss and changes no optimum.

    Use ``dataclasses.replace(problem, p_ft=0.3)`` for a variant; it is validated again.
    Equality is identity (arrays do not define a truth value for ``==``).
    """

    W0: np.ndarray
    delta: np.ndarray
    mu_ft: np.ndarray
    mu_pt: np.ndarray
    sigma: np.ndarray
    p_ft: float = 0.5
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        W0 = _readonly_float64("W0", self.W0, 2)
        m, d = W0.shape
        delta = _readonly_float64("delta", self.delta, 2)
        if delta.shape != (m, d):
            raise ValueError(f"delta must have the shape of W0, (m, d) = {(m, d)}, got {delta.shape}")
        mu_ft = _readonly_float64("mu_ft", self.mu_ft, 1)
        mu_pt = _readonly_float64("mu_pt", self.mu_pt, 1)
        for name, mu in (("mu_ft", mu_ft), ("mu_pt", mu_pt)):
            if mu.shape != (d,):
                raise ValueError(f"{name} must have shape (d,) = ({d},) to match W0's columns, got {mu.shape}")
        sigma = _readonly_float64("sigma", self.sigma, 2)
        if sigma.shape != (d, d):
            raise ValueError(f"sigma must have shape (d, d) = {(d, d)}, got {sigma.shape}")
        scale = max(float(np.max(np.abs(sigma))), np.finfo(np.float64).tiny)
        if np.max(np.abs(sigma - sigma.T)) > _SYMMETRY_RTOL * scale:
            raise ValueError("sigma must be symmetric (a covariance matrix)")
        try:
            np.linalg.cholesky(sigma)
        except np.linalg.LinAlgError:
            raise ValueError("sigma must be positive definite (its Cholesky factorisation failed)") from None
        p_ft = self._checked_scalar("p_ft", self.p_ft)
        if not 0.0 < p_ft < 1.0:
            raise ValueError(f"p_ft must be strictly between 0 and 1, got p_ft={p_ft!r}")
        noise_std = self._checked_scalar("noise_std", self.noise_std)
        if noise_std < 0.0:
            raise ValueError(f"noise_std must be >= 0, got noise_std={noise_std!r}")
        for name, value in (
            ("W0", W0), ("delta", delta), ("mu_ft", mu_ft), ("mu_pt", mu_pt), ("sigma", sigma),
            ("p_ft", p_ft), ("noise_std", noise_std),
        ):  # fmt: skip
            object.__setattr__(self, name, value)

    @staticmethod
    def _checked_scalar(name: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {name}={value!r}")
        return value

    @classmethod
    def figure1(
        cls,
        seed: int | np.random.Generator | None = 0,
        d: int = 10,
        m: int = 10,
        rank: int = 2,
        mean: float = 2.0,
        *,
        sigma: np.ndarray | None = None,
        p_ft: float = 0.5,
        noise_std: float = 0.0,
    ) -> MixtureProblem:
        """The Figure 1 setting (THEORY.md §2, Appendix I.4), with the project's documented defaults.

        ``W0`` has i.i.d. N(0, 1) entries; ``Δ = U V`` with ``U`` (m, rank) and ``V`` (rank, d) i.i.d.
        N(0, 1), unscaled, as THEORY.md states (so rank Δ = ``rank`` almost surely and each entry of Δ has
        variance ``rank``). The populations differ only in the sign of the first mean coordinate:
        ``μ_ft = +mean·e₁``, ``μ_pt = −mean·e₁``; shared covariance ``sigma`` (default ``I_d``), hence
        ``S_ft = S_pt`` and the best fixed correction is ``Δ/2`` (eq. 18).

        The paper's dimensions, rank and mean were lost; d = m = 10, rank 2, mean 2 are the project's
        choice. Draw order (W0, then U, then V) is fixed so a seed always gives the same problem.
        """
        for name, value in (("d", d), ("m", m), ("rank", rank)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        if rank > min(d, m):
            raise ValueError(f"rank must be <= min(d, m) = {min(d, m)} for Δ to have that rank, got rank={rank}")
        rng = _as_generator(seed)
        W0 = rng.standard_normal((m, d))
        delta = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, d))
        e1 = np.zeros(d)
        e1[0] = 1.0
        mean = cls._checked_scalar("mean", mean)
        return cls(
            W0=W0,
            delta=delta,
            mu_ft=mean * e1,
            mu_pt=-mean * e1,
            sigma=np.eye(d) if sigma is None else sigma,
            p_ft=p_ft,
            noise_std=noise_std,
        )

    @property
    def d(self) -> int:
        """Input dimension (``in_features``)."""
        return self.W0.shape[1]

    @property
    def m(self) -> int:
        """Output dimension (``out_features``)."""
        return self.W0.shape[0]

    @property
    def p_pt(self) -> float:
        """Mixture weight of the pre-training population, ``1 − p_ft``."""
        return 1.0 - self.p_ft

    @functools.cached_property
    def rank_delta(self) -> int:
        """Numerical rank of ``Δ`` (``numpy.linalg.matrix_rank``'s default tolerance)."""
        return int(np.linalg.matrix_rank(self.delta))

    @functools.cached_property
    def sigma_cholesky(self) -> np.ndarray:
        """Lower-triangular ``L`` with ``Σ = L Lᵀ`` (d, d), read-only."""
        factor = np.linalg.cholesky(self.sigma)
        factor.flags.writeable = False
        return factor

    def mean(self, population: Population) -> np.ndarray:
        """``μ_ft`` or ``μ_pt`` (d,) by population name ``"ft"`` / ``"pt"``."""
        if population not in POPULATIONS:
            raise ValueError(f"population must be one of {POPULATIONS}, got {population!r}")
        return self.mu_ft if population == "ft" else self.mu_pt

    def sample(
        self,
        n: int,
        seed: int | np.random.Generator | None = None,
        *,
        population: Population | None = None,
    ) -> MixtureSample:
        """Draw ``n`` pairs from the mixture (eq. 2, 10, 11), or from one population.

        Args:
            n: number of pairs.
            seed: an int seed, a ``numpy.random.Generator`` (advanced in place), or None (fresh entropy).
            population: None draws each label from the mixture weight ``p_ft``; ``"ft"`` or ``"pt"``
                draws every pair from that population (for per-population evaluation).

        Returns:
            ``MixtureSample(x (n, d), y (n, m), label (n,) bool)``, label True (= 1) for P_ft, and
            ``y = W0 x + label · Δ x + ε``.
        """
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got n={n!r}")
        if population is not None and population not in POPULATIONS:
            raise ValueError(f"population must be None or one of {POPULATIONS}, got {population!r}")
        rng = _as_generator(seed)
        if population is None:
            label = rng.random(n) < self.p_ft  # (n,)
        else:
            label = np.full(n, population == "ft")  # (n,)
        means = np.where(label[:, None], self.mu_ft, self.mu_pt)  # (n, d)
        x = means + rng.standard_normal((n, self.d)) @ self.sigma_cholesky.T  # (n, d)
        y = x @ self.W0.T + label[:, None] * (x @ self.delta.T)  # (n, m)
        if self.noise_std > 0.0:
            y = y + self.noise_std * rng.standard_normal((n, self.m))
        return MixtureSample(x=x, y=y, label=label)
