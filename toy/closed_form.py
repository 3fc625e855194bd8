"""Closed forms of the toy (THEORY.md §2), in float64 NumPy/SciPy, one function per quantity.

Each docstring starts with its equation numbers and the symbol ↔ name mapping. Throughout, a problem
``P`` is a :class:`toy.MixtureProblem`; ``p`` = ``P.p_ft``; ``Δ`` = ``P.delta``; ``Σ`` = ``P.sigma``.

MSE convention (read this before comparing with simulations): every MSE returned here is the *excess*
squared error of a correction ``f``, i.e. ``E ||f(x) − label · Δ x||²`` per population, unless
``include_noise=True``, which adds the noise floor ``noise_std² · m`` (the error of the true map on noisy
targets) to each population and to the mixture. The excess is what the paper plots (eq. 19–20, 25); the
total is what ``mean ||W0 x + f(x) − y||²`` on noisy samples estimates.

The paper's mixture is symmetric (p = ½); every formula here carries the general weight ``p``:
``mixture = p · ft + (1 − p) · pt``, and the Bayes posterior includes the prior log-odds.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import numpy as np
from scipy.integrate import quad_vec
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.special import expit, log_expit

from .problem import MixtureProblem, Population

__all__ = [
    "PopulationMSE",
    "BayesLayerParameters",
    "second_moments",
    "fixed_optimum",
    "fixed_mse",
    "bayes_discriminant",
    "bayes_posterior",
    "bayes_correction",
    "bayes_mse",
    "correction_mse",
    "disel_bayes_parameters",
    "plant_bayes_layer",
]

BayesMSEMethod = Literal["quadrature", "monte_carlo"]

# The 1-D Bayes integrals are taken over z = (t − E t) / sd(t) ∈ [−Z, Z]; the standard normal mass
# outside ±40 is below 1e-348, under float64's smallest positive number, so truncating there is exact.
_Z_HALF_WIDTH = 40.0
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


@dataclasses.dataclass(frozen=True)
class PopulationMSE:
    """An MSE on each population and on the mixture.

    Fields:
        ft: MSE on the fine-tuning population P_ft.
        pt: MSE on the pre-training population P_pt.
        mixture: ``p_ft · ft + (1 − p_ft) · pt``, the training loss (eq. 3, 12, 25).
        stderr: Monte Carlo standard errors of the three fields (a ``PopulationMSE`` without stderr),
            or None for an exact value.
    """

    ft: float
    pt: float
    mixture: float
    stderr: PopulationMSE | None = None


@dataclasses.dataclass(frozen=True)
class BayesLayerParameters:
    """DISeL parameters that represent the Bayes correction exactly (eq. 31–33).

    Shapes: ``lora_A`` (r, d), ``lora_B`` (m, r), ``gate_weight`` (r, d), ``gate_bias`` (r,); with
    ``scaling`` s the layer computes ``s · B diag(σ(W_g x + b_g)) A x = π(x) Δ x``.
    """

    lora_A: np.ndarray
    lora_B: np.ndarray
    gate_weight: np.ndarray
    gate_bias: np.ndarray
    scaling: float

    def as_layer_kwargs(self) -> dict:
        """Keyword arguments for ``DiselLinear.set_parameters`` (float64 torch tensors)."""
        import torch  # the closed forms themselves are NumPy-only

        return {
            name: torch.tensor(np.array(getattr(self, name)), dtype=torch.float64)
            for name in ("lora_A", "lora_B", "gate_weight", "gate_bias")
        }


# --------------------------------------------------------------------------------------------------
# Moments and the best fixed correction (eq. 12–20)
# --------------------------------------------------------------------------------------------------


def second_moments(problem: MixtureProblem) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 13: the uncentred second moments ``S_ft = E_ft[x xᵀ]``, ``S_pt = E_pt[x xᵀ]``.

    For Gaussians ``S = Σ + μ μᵀ``. Symbols ↔ names: ``S_ft``, ``S_pt`` returned in that order,
    each (d, d) symmetric positive definite; ``Σ`` = ``problem.sigma``, ``μ`` = ``problem.mu_ft/mu_pt``.
    """
    S_ft = problem.sigma + np.outer(problem.mu_ft, problem.mu_ft)  # (d, d)
    S_pt = problem.sigma + np.outer(problem.mu_pt, problem.mu_pt)  # (d, d)
    return S_ft, S_pt


def _mixture_second_moment(problem: MixtureProblem) -> np.ndarray:
    """``S̄ = p S_ft + (1 − p) S_pt`` (d, d), the mixture's second moment E_mix[x xᵀ]."""
    S_ft, S_pt = second_moments(problem)
    return problem.p_ft * S_ft + problem.p_pt * S_pt


def _check_rank(rank, name: str = "rank") -> int:
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"{name} must be a positive integer, got {name}={rank!r}")
    return int(rank)


def fixed_optimum(problem: MixtureProblem, rank: int | None = None) -> np.ndarray:
    """Eq. 15–16 (and 18): the best fixed correction ``f(x) = M x``, optionally of rank ≤ ``rank``.

    With mixture weight p the loss (eq. 12/14) is
    ``L(M) = p tr((M − Δ) S_ft (M − Δ)ᵀ) + (1 − p) tr(M S_pt Mᵀ)``, its gradient
    ``2[p (M − Δ) S_ft + (1 − p) M S_pt]`` vanishes at

        M* = p Δ S_ft S̄⁻¹,     S̄ = p S_ft + (1 − p) S_pt,

    which is eq. 16 (``Δ S_ft (S_ft + S_pt)⁻¹``) at p = ½ and ``Δ/2`` (eq. 18) when ``S_ft = S_pt``.
    ``M*`` is the unconstrained (full fine-tuning) optimum.

    With ``rank`` (LoRA's constraint rank M ≤ r): ``L(M) = ‖(M − M*) L‖_F² + const`` for ``S̄ = L Lᵀ``,
    so the rank-r optimum is a reduced-rank regression: truncate the SVD of ``M* L`` to rank r and
    multiply back by ``L⁻¹`` (Eckart–Young; THEORY.md §2 states it with ``S̄^{1/2}``, any square root
    gives the same matrix). Unique when the r-th and (r+1)-th singular values of ``M* L`` differ.

    Symbols ↔ names: ``M*`` returned (m, d); ``rank`` = r; None means unconstrained.
    """
    if rank is not None:
        rank = _check_rank(rank)
    S_ft, _ = second_moments(problem)
    S_bar = _mixture_second_moment(problem)
    # M* S̄ = p Δ S_ft and S̄ is symmetric, so M*ᵀ = S̄⁻¹ (p S_ft Δᵀ).
    M_star = cho_solve(cho_factor(S_bar), problem.p_ft * S_ft @ problem.delta.T).T  # (m, d)
    if rank is None or rank >= min(problem.m, problem.d):
        return M_star
    L = np.linalg.cholesky(S_bar)  # (d, d) lower, S̄ = L Lᵀ
    U, singular_values, Vt = np.linalg.svd(M_star @ L, full_matrices=False)
    N_r = (U[:, :rank] * singular_values[:rank]) @ Vt[:rank]  # (m, d), the best rank-r M L
    # M_r = N_r L⁻¹  ⇔  Lᵀ M_rᵀ = N_rᵀ
    return solve_triangular(L, N_r.T, lower=True, trans="T").T  # (m, d)


def _check_matrix(problem: MixtureProblem, M) -> np.ndarray:
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (problem.m, problem.d):
        raise ValueError(f"M must have shape (m, d) = {(problem.m, problem.d)}, got {M.shape}")
    return M


def _noise_floor(problem: MixtureProblem, include_noise: bool) -> float:
    return problem.noise_std**2 * problem.m if include_noise else 0.0


def fixed_mse(problem: MixtureProblem, M, *, include_noise: bool = False) -> PopulationMSE:
    """Eq. 12, 19–20: per-population MSE of the fixed correction ``f(x) = M x``.

        MSE_ft(M) = E_ft ‖(M − Δ) x‖² = tr((M − Δ) S_ft (M − Δ)ᵀ)
        MSE_pt(M) = E_pt ‖M x‖²       = tr(M S_pt Mᵀ)
        mixture   = p MSE_ft + (1 − p) MSE_pt = L(M)  (eq. 12/14)

    At ``M = Δ/2`` with ``S_ft = S_pt = S`` both equal ``¼ tr(Δ S Δᵀ)`` (eq. 19–20).
    Excess MSE by default; ``include_noise=True`` adds ``noise_std² · m`` to each (module docstring).

    Symbols ↔ names: ``M`` = ``M`` (m, d), any matrix (e.g. :func:`fixed_optimum` or a trained one).
    """
    M = _check_matrix(problem, M)
    S_ft, S_pt = second_moments(problem)
    residual = M - problem.delta  # (m, d)
    ft = float(np.sum((residual @ S_ft) * residual))
    pt = float(np.sum((M @ S_pt) * M))
    floor = _noise_floor(problem, include_noise)
    return _population_mse(problem, ft + floor, pt + floor)


def _population_mse(problem: MixtureProblem, ft: float, pt: float, stderr=None) -> PopulationMSE:
    return PopulationMSE(ft=ft, pt=pt, mixture=problem.p_ft * ft + problem.p_pt * pt, stderr=stderr)


# --------------------------------------------------------------------------------------------------
# The Bayes-optimal input-dependent correction (eq. 22–30)
# --------------------------------------------------------------------------------------------------


def bayes_discriminant(problem: MixtureProblem) -> tuple[np.ndarray, float]:
    """Eq. 27–28: the affine log-odds ``log[p φ_ft(x) / ((1 − p) φ_pt(x))] = wᵀ x + c``.

        w = Σ⁻¹ (μ_ft − μ_pt),
        c = −½ (μ_ftᵀ Σ⁻¹ μ_ft − μ_ptᵀ Σ⁻¹ μ_pt) + log(p / (1 − p)).

    The prior log-odds term vanishes for the paper's symmetric mixture. Symbols ↔ names: ``w`` (d,),
    ``c`` float, returned as ``(w, c)``; they are the planted gate's weight row and bias (eq. 31).
    """
    factor = cho_factor(problem.sigma)
    sigma_inv_mu_ft = cho_solve(factor, problem.mu_ft)  # (d,)
    sigma_inv_mu_pt = cho_solve(factor, problem.mu_pt)  # (d,)
    w = sigma_inv_mu_ft - sigma_inv_mu_pt  # (d,)
    c = -0.5 * (problem.mu_ft @ sigma_inv_mu_ft - problem.mu_pt @ sigma_inv_mu_pt)
    c += np.log(problem.p_ft) - np.log(problem.p_pt)
    return w, float(c)


def _check_inputs(problem: MixtureProblem, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 1 or x.shape[-1] != problem.d:
        raise ValueError(f"x must have shape (..., d) with d = {problem.d}, got {x.shape}")
    return x


def bayes_posterior(problem: MixtureProblem, x) -> np.ndarray:
    """Eq. 5, 24, 27–28: ``π(x) = P(fine-tuning population | x) = σ(wᵀ x + c)``.

    Symbols ↔ names: ``π`` returned (...,) in (0, 1); ``x`` (..., d); ``w, c`` from
    :func:`bayes_discriminant` (so the prior weight p enters through c).
    """
    x = _check_inputs(problem, x)
    w, c = bayes_discriminant(problem)
    return expit(x @ w + c)  # (...,)


def bayes_correction(problem: MixtureProblem, x) -> np.ndarray:
    """Eq. 24, 30: the Bayes-optimal correction ``f*(x) = π(x) Δ x`` (no input-dependent f does better).

    Symbols ↔ names: ``f*(x)`` returned (..., m); ``x`` (..., d); ``π`` = :func:`bayes_posterior`.
    """
    x = _check_inputs(problem, x)
    return bayes_posterior(problem, x)[..., None] * (x @ problem.delta.T)  # (..., m)


def _bayes_population_mse_quadrature(problem: MixtureProblem, population: Population) -> float:
    """``E_k[h(t) ‖Δ x‖²]`` with ``h = (1 − π)²`` (k = ft) or ``π²`` (k = pt), as a 1-D integral.

    Under population k, ``t = wᵀx + c ~ N(m_t, v)`` with ``m_t = wᵀμ_k + c``, ``v = wᵀΣw``. Writing
    ``t = m_t + √v z`` and ``u = Σ w / √v``, x given z is Gaussian with mean ``μ_k + z u`` and
    covariance ``Σ − u uᵀ``, so with ``h_j = E[h z^j]`` (z standard normal)

        E_k[h ‖Δx‖²] = h_0 (tr(ΔΣΔᵀ) − ‖Δu‖² + ‖Δμ_k‖²) + 2 h_1 (Δμ_k)·(Δu) + h_2 ‖Δu‖².
    """
    w, c = bayes_discriminant(problem)
    mu = problem.mean(population)
    delta, sigma = problem.delta, problem.sigma
    sign = -1.0 if population == "ft" else 1.0  # h(t) = σ(sign · t)²: (1 − π)² = σ(−t)², π² = σ(t)²
    delta_mu = delta @ mu  # (m,)
    trace_delta_sigma = float(np.sum((delta @ sigma) * delta))  # tr(Δ Σ Δᵀ)
    mean_t = float(w @ mu + c)
    sigma_w = sigma @ w  # (d,)
    variance_t = float(w @ sigma_w)
    if variance_t <= np.finfo(np.float64).tiny:
        # μ_ft = μ_pt: π(x) = p for every x, so h is the constant σ(sign · c)².
        h = expit(sign * mean_t) ** 2
        return float(h * (trace_delta_sigma + delta_mu @ delta_mu))
    sd_t = np.sqrt(variance_t)
    delta_u = delta @ (sigma_w / sd_t)  # (m,)

    def moments(z: float) -> np.ndarray:
        # h(t(z)) φ(z) · [1, z, z²], in log space so that σ(·)² far in the tail does not underflow early.
        log_weight = 2.0 * log_expit(sign * (mean_t + sd_t * z)) - 0.5 * z * z - _LOG_SQRT_2PI
        return np.exp(log_weight) * np.array([1.0, z, z * z])

    # Gauss–Hermite (hermegauss) was the first choice but loses accuracy once the gate's transition
    # (width 1/√v in z) is sharp: measured relative error 2e-3 at √v = 10 and 100% at √v = 40 with
    # 200 nodes, and hermegauss overflows near 400 nodes. Adaptive Gauss–Kronrod with breakpoints at
    # the transition z₀ = −m_t/√v and at the Gaussian's centre is at machine precision on that range.
    z0 = -mean_t / sd_t
    breakpoints = sorted(p for p in {0.0, z0} if -_Z_HALF_WIDTH < p < _Z_HALF_WIDTH)
    h0, h1, h2 = quad_vec(
        moments,
        -_Z_HALF_WIDTH,
        _Z_HALF_WIDTH,
        points=breakpoints or None,
        epsabs=1e-300,  # relative accuracy even when the integral is astronomically small
        epsrel=1e-12,
        limit=2000,
    )[0]
    delta_u_sq = float(delta_u @ delta_u)
    return float(
        h0 * (trace_delta_sigma - delta_u_sq + delta_mu @ delta_mu) + 2.0 * h1 * (delta_mu @ delta_u) + h2 * delta_u_sq
    )


def correction_mse(
    problem: MixtureProblem,
    correction: Callable[[np.ndarray], np.ndarray],
    n: int = 100_000,
    seed: int | np.random.Generator | None = 0,
    *,
    include_noise: bool = False,
) -> PopulationMSE:
    """Eq. 3, 21 (per population): Monte Carlo MSE of any correction ``f`` with standard errors.

        MSE_ft = E_ft ‖f(x) − Δ x‖²,   MSE_pt = E_pt ‖f(x)‖²,   mixture = p MSE_ft + (1 − p) MSE_pt

    ``n`` inputs are drawn from *each* population (stratified), so the standard errors are
    ``std / √n`` per population and ``√(p² se_ft² + (1 − p)² se_pt²)`` for the mixture. Targets are
    noise-free; ``include_noise=True`` adds the exact noise floor ``noise_std² · m`` (not a sampled one).

    Symbols ↔ names: ``f`` = ``correction``, a function (n, d) → (n, m) on float64 arrays (e.g. a
    trained layer's ``update`` wrapped to NumPy).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (for a standard error), got n={n!r}")
    rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
    means, errors = [], []
    for population in ("ft", "pt"):
        x = problem.sample(n, rng, population=population).x  # (n, d)
        f_x = np.asarray(correction(x), dtype=np.float64)
        if f_x.shape != (n, problem.m):
            raise ValueError(f"correction must map (n, d) to (n, m) = {(n, problem.m)}, got {f_x.shape}")
        target = x @ problem.delta.T if population == "ft" else 0.0  # (n, m): label · Δ x
        losses = np.sum((f_x - target) ** 2, axis=-1)  # (n,)
        means.append(float(losses.mean()))
        errors.append(float(losses.std(ddof=1) / np.sqrt(n)))
    floor = _noise_floor(problem, include_noise)
    se_mixture = float(np.hypot(problem.p_ft * errors[0], problem.p_pt * errors[1]))
    stderr = PopulationMSE(ft=errors[0], pt=errors[1], mixture=se_mixture)
    return _population_mse(problem, means[0] + floor, means[1] + floor, stderr=stderr)


def bayes_mse(
    problem: MixtureProblem,
    method: BayesMSEMethod = "quadrature",
    n: int = 100_000,
    seed: int | np.random.Generator | None = 0,
    *,
    include_noise: bool = False,
) -> PopulationMSE:
    """Eq. 25: per-population MSE of the Bayes correction ``f*(x) = π(x) Δ x``.

        MSE_ft = E_ft[(1 − π)² ‖Δx‖²],   MSE_pt = E_pt[π² ‖Δx‖²],
        mixture = p MSE_ft + (1 − p) MSE_pt = E_mix[π (1 − π) ‖Δx‖²]   (eq. 25)

    ``method="quadrature"`` (exact to ~1e-12 relative): π depends on x only through the scalar
    ``t = wᵀx + c``, Gaussian under each population, and x given t is Gaussian, so each expectation is
    a 1-D integral over t (see ``_bayes_population_mse_quadrature``); ``n`` and ``seed`` are unused.
    ``μ_ft = μ_pt`` (π ≡ p) is handled exactly. ``method="monte_carlo"``: :func:`correction_mse` with
    ``n`` draws per population, an independent check that carries standard errors in ``.stderr``.

    Excess MSE by default; ``include_noise=True`` adds ``noise_std² · m`` (module docstring).
    Symbols ↔ names: ``π`` = :func:`bayes_posterior`, ``Δ`` = ``problem.delta``.
    """
    if method == "quadrature":
        floor = _noise_floor(problem, include_noise)
        ft = _bayes_population_mse_quadrature(problem, "ft") + floor
        pt = _bayes_population_mse_quadrature(problem, "pt") + floor
        return _population_mse(problem, ft, pt)
    if method == "monte_carlo":
        return correction_mse(
            problem, lambda x: bayes_correction(problem, x), n=n, seed=seed, include_noise=include_noise
        )
    raise ValueError(f"method must be 'quadrature' or 'monte_carlo', got method={method!r}")


# --------------------------------------------------------------------------------------------------
# DISeL represents the Bayes correction (eq. 31–33)
# --------------------------------------------------------------------------------------------------


def disel_bayes_parameters(problem: MixtureProblem, rank: int, scaling: float = 1.0) -> BayesLayerParameters:
    """Eq. 31–33: DISeL parameters with ``s · B diag(g(x)) A x = π(x) Δ x`` for every x.

        Δ = B A (inner dimension r),   W_g = 1_r wᵀ,   b_g = c 1_r   ⇒   g(x) = π(x) 1_r.

    The factorisation is the balanced SVD split ``B = U_r √S_r``, ``A = √S_r V_rᵀ / s`` (the LoRA
    scaling s is divided out of A), padded with zero rows/columns when r > min(m, d). It is exact when
    r ≥ rank Δ; a smaller r raises ``ValueError`` (the layer cannot represent Δ).

    Symbols ↔ names: ``A`` = ``lora_A`` (r, d), ``B`` = ``lora_B`` (m, r), ``W_g`` = ``gate_weight``
    (r, d), ``b_g`` = ``gate_bias`` (r,), ``s`` = ``scaling`` (``DiselLinear.scaling``: lora_alpha / r,
    or 1), ``w, c`` = :func:`bayes_discriminant`.
    """
    rank = _check_rank(rank)
    scaling = float(scaling)
    if not np.isfinite(scaling) or scaling == 0.0:
        raise ValueError(f"scaling must be finite and non-zero, got scaling={scaling!r}")
    if rank < problem.rank_delta:
        raise ValueError(
            f"rank={rank} is below the numerical rank of delta ({problem.rank_delta}): "
            "no rank-r factorisation Δ = B A exists, so DISeL cannot represent π(x) Δ x exactly"
        )
    U, singular_values, Vt = np.linalg.svd(problem.delta, full_matrices=False)
    k = min(rank, singular_values.size)
    root = np.sqrt(singular_values[:k])  # (k,)
    lora_B = np.zeros((problem.m, rank))
    lora_A = np.zeros((rank, problem.d))
    lora_B[:, :k] = U[:, :k] * root  # (m, k)
    lora_A[:k] = root[:, None] * Vt[:k] / scaling  # (k, d)
    w, c = bayes_discriminant(problem)
    gate_weight = np.tile(w, (rank, 1))  # (r, d), every row wᵀ
    gate_bias = np.full(rank, c)  # (r,)
    return BayesLayerParameters(
        lora_A=lora_A, lora_B=lora_B, gate_weight=gate_weight, gate_bias=gate_bias, scaling=scaling
    )


def plant_bayes_layer(problem: MixtureProblem, rank: int, lora_alpha: float | None = None):
    """Eq. 31–33 in a real layer: a float64 ``disel.DiselLinear`` computing ``W0 x + π(x) Δ x``.

    The base is ``nn.Linear(d, m, bias=False)`` holding ``W0``; ``lora_alpha`` sets the layer's scaling
    (``lora_alpha / rank``, or 1 for None), which :func:`disel_bayes_parameters` divides out of A.
    Consumes torch's global RNG for the layer's initialisation (then overwritten).
    """
    import torch
    from torch import nn

    from disel import DiselLinear

    rank = _check_rank(rank)
    base = nn.Linear(problem.d, problem.m, bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(torch.tensor(np.array(problem.W0), dtype=torch.float64))
    layer = DiselLinear(base, rank, lora_alpha=lora_alpha)
    parameters = disel_bayes_parameters(problem, rank, scaling=layer.scaling)
    layer.set_parameters(**parameters.as_layer_kwargs())
    return layer
