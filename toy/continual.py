"""The toy continued (issue 18): a sequence of K tasks, each a Gaussian population with its own correction.

THEORY.md §2 with K fine-tuning populations instead of one. Population 0 is the pre-training one; task
k = 1..K adds population k:

    x ~ N(μ_0, Σ),  y = W0 x                (pre-training)
    x ~ N(μ_k, Σ),  y = (W0 + Δ_k) x        (task k)

Task k is learnt from the two-population mixture of THEORY.md §2 (``tasks[k-1]``, a
:class:`toy.MixtureProblem` with P_ft = task k, P_pt = pre-training, p = ½): its data, and replay of the
pre-training population, which keeps the gate informed of where not to act. After the last task the model
is judged on every population, each equally likely (weight 1/(K+1)).

What is exact, and what is not (derived here; THEORY.md states the K = 1 case):

* **Bayes predictor** (eq. 5, 24 with K+1 populations): ``f*(x) = Σ_k π_k(x) Δ_k x`` with the posterior
  ``π_k(x) = softmax_k(ℓ(x))``, ``ℓ_j(x) = μ_jᵀ Σ⁻¹ x − ½ μ_jᵀ Σ⁻¹ μ_j`` (equal priors; eq. 26–28 per pair).
  No input-dependent correction does better; for any f, ``L(f) = L(f*) + E‖f − f*‖²`` on the mixture.
* **One sigmoid gate per branch** can equal ``π_k`` only when the log-odds of k against *all* others is
  affine in x. ``log π_k / (1 − π_k) = ℓ_k − log Σ_{j≠k} e^{ℓ_j}`` is affine only for K = 1 (two
  populations), where the planted branch is THEORY.md eq. 31–33 and is exact. For K ≥ 2 it is not: a
  softmax over K+1 populations is no sum of sigmoids of affine maps.
* **What branch k learns from its task** is the *pairwise* posterior ``γ_k(x) = σ(ℓ_k − ℓ_0)`` (eq. 27–28
  for task k against pre-training), and planted branches realise ``f_γ(x) = Σ_k γ_k(x) Δ_k x`` exactly.
  Since ``γ_k ≥ π_k`` (dropping populations from a softmax's denominator), a branch opens *more* than the
  Bayes posterior on other tasks' inputs. The cost is ``E‖f_γ − f*‖²``, computed by
  :func:`pairwise_gap` (Monte Carlo, with its standard error); it vanishes as the task means separate.
* **Sequential LoRA** trained to convergence on task k ends at the fixed optimum of task k's mixture
  (eq. 16; unique minimiser of a strictly convex quadratic, whatever it started from), so after the last
  task it has forgotten every earlier one: :func:`sequential_fixed_endpoint`, exact per population.

Symbols ↔ names: ``W0`` = ``W0`` (m, d), ``Δ_k`` = ``deltas[k-1]`` (m, d), ``μ_j`` = ``means[j]`` (d,),
``Σ`` = ``sigma`` (d, d), ``π`` = :func:`bayes_posteriors` (..., K+1), ``γ`` = :func:`pairwise_gates` (..., K).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.special import expit, softmax

from .closed_form import disel_bayes_parameters, fixed_optimum
from .problem import MixtureProblem

__all__ = [
    "ContinualProblem",
    "PopulationTable",
    "bayes_correction_continual",
    "bayes_posteriors",
    "fixed_population_mse",
    "log_likelihoods",
    "pairwise_correction",
    "pairwise_gap",
    "pairwise_gates",
    "plant_branches",
    "population_mse",
    "sequential_fixed_endpoint",
]


@dataclasses.dataclass(frozen=True, eq=False)
class ContinualProblem:
    """K tasks sharing ``W0``, the pre-training population ``N(μ_0, Σ)`` and ``Σ`` (module docstring).

    ``tasks[k-1]`` is task k's training mixture (:class:`toy.MixtureProblem`, p_ft = ½); each is validated
    by MixtureProblem and they must share ``W0``, ``mu_pt`` and ``sigma``.
    """

    tasks: tuple[MixtureProblem, ...]

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks)
        if not tasks or not all(isinstance(t, MixtureProblem) for t in tasks):
            raise TypeError("tasks must be a non-empty sequence of toy.MixtureProblem")
        first = tasks[0]
        for k, task in enumerate(tasks[1:], start=2):
            for name in ("W0", "mu_pt", "sigma"):
                if not np.array_equal(getattr(task, name), getattr(first, name)):
                    raise ValueError(f"tasks must share {name}: task {k} differs from task 1")
        object.__setattr__(self, "tasks", tasks)

    @classmethod
    def random(
        cls, seed: int = 0, num_tasks: int = 3, d: int = 10, m: int = 10, rank: int = 2, mean: float = 4.0
    ) -> ContinualProblem:
        """``W0`` and ``Δ_k = U_k V_k`` i.i.d. N(0, 1) (as Figure 1), Σ = I, ``μ_0 = 0``, ``μ_k = mean · e_k``.

        Task means on orthogonal axes, ``mean`` from the pre-training mean and ``mean·√2`` from each other.
        Every other task then lies on the pre-training side of branch k's discriminant ``mean·x_k − mean²/2``,
        so the pairwise gates stay nearly shut off their task. (Put all K+1 means at equal distances instead and
        task j sits on that discriminant's boundary: ``E_j γ_k = ½``, and pairwise branches fail.)
        Requires ``num_tasks ≤ d``.
        """
        if not 1 <= num_tasks <= d:
            raise ValueError(f"num_tasks must be in [1, d] = [1, {d}] (one axis per task), got num_tasks={num_tasks}")
        rng = np.random.default_rng(seed)
        W0 = rng.standard_normal((m, d))
        tasks = []
        for k in range(num_tasks):
            delta = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, d))
            mu = np.zeros(d)
            mu[k] = mean
            tasks.append(MixtureProblem(W0=W0, delta=delta, mu_ft=mu, mu_pt=np.zeros(d), sigma=np.eye(d)))
        return cls(tuple(tasks))

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def d(self) -> int:
        return self.tasks[0].d

    @property
    def m(self) -> int:
        return self.tasks[0].m

    @property
    def means(self) -> np.ndarray:
        """``μ_0, …, μ_K`` (K+1, d), pre-training first."""
        return np.stack([self.tasks[0].mu_pt] + [t.mu_ft for t in self.tasks])

    @property
    def deltas(self) -> np.ndarray:
        """``Δ_1, …, Δ_K`` (K, m, d)."""
        return np.stack([t.delta for t in self.tasks])

    @property
    def population_deltas(self) -> np.ndarray:
        """The correction each population needs, ``0, Δ_1, …, Δ_K`` (K+1, m, d)."""
        return np.concatenate([np.zeros((1, self.m, self.d)), self.deltas])

    def sample_population(self, j: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` inputs from population j (0 = pre-training): (n, d)."""
        mixture = self.tasks[max(j, 1) - 1]
        return mixture.sample(n, rng, population="ft" if j > 0 else "pt").x


@dataclasses.dataclass(frozen=True)
class PopulationTable:
    """A Monte Carlo (or exact, ``stderr`` None) value per population (K+1,), pre-training first."""

    values: np.ndarray
    stderr: np.ndarray | None = None

    @property
    def mean(self) -> float:
        """The average over populations, each weighted 1/(K+1) (the final evaluation's mixture)."""
        return float(np.mean(self.values))

    def to_dict(self) -> dict:
        return {
            "per_population": self.values.tolist(),
            "stderr": None if self.stderr is None else self.stderr.tolist(),
            "mean": self.mean,
        }


def log_likelihoods(problem: ContinualProblem, x) -> np.ndarray:
    """Eq. 26–28 per population: ``ℓ_j(x) = μ_jᵀ Σ⁻¹ x − ½ μ_jᵀ Σ⁻¹ μ_j`` (up to a constant shared by all j).

    Symbols ↔ names: ``x`` (..., d) → ``ℓ`` (..., K+1), pre-training first; equal priors.
    """
    x = np.asarray(x, dtype=np.float64)
    means = problem.means  # (K+1, d)
    sigma_inv_means = cho_solve(cho_factor(problem.tasks[0].sigma), means.T).T  # (K+1, d)
    offsets = -0.5 * np.sum(means * sigma_inv_means, axis=-1)  # (K+1,)
    return x @ sigma_inv_means.T + offsets  # (..., K+1)


def bayes_posteriors(problem: ContinualProblem, x) -> np.ndarray:
    """Eq. 5, 24 with K+1 populations: ``π_j(x) = softmax_j(ℓ(x))``, (..., d) → (..., K+1), rows sum to 1."""
    return softmax(log_likelihoods(problem, x), axis=-1)


def pairwise_gates(problem: ContinualProblem, x) -> np.ndarray:
    """Eq. 27–28 for each task against pre-training: ``γ_k(x) = σ(ℓ_k − ℓ_0)``, (..., d) → (..., K).

    The posterior of task k's own two-population mixture (:func:`toy.bayes_posterior` of ``tasks[k-1]``),
    what branch k's sigmoid gate represents exactly (eq. 31). ``γ_k ≥ π_k``, with equality iff K = 1.
    """
    ell = log_likelihoods(problem, x)  # (..., K+1)
    return expit(ell[..., 1:] - ell[..., :1])  # (..., K)


def bayes_correction_continual(problem: ContinualProblem, x) -> np.ndarray:
    """Eq. 24 with K+1 populations: ``f*(x) = Σ_k π_k(x) Δ_k x``, (..., d) → (..., m)."""
    x = np.asarray(x, dtype=np.float64)
    posterior = bayes_posteriors(problem, x)[..., 1:]  # (..., K)
    return np.einsum("...k,kmd,...d->...m", posterior, problem.deltas, x)


def pairwise_correction(problem: ContinualProblem, x) -> np.ndarray:
    """``f_γ(x) = Σ_k γ_k(x) Δ_k x`` (eq. 31–33 per branch), what planted branches compute: (..., m)."""
    x = np.asarray(x, dtype=np.float64)
    return np.einsum("...k,kmd,...d->...m", pairwise_gates(problem, x), problem.deltas, x)


def _per_population(problem: ContinualProblem, per_sample, n: int, seed) -> PopulationTable:
    """Monte Carlo mean and standard error (``std/√n``) of ``per_sample(j, x)`` (n,) over n inputs per population."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (for a standard error), got n={n!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    values, errors = [], []
    for j in range(problem.num_tasks + 1):
        losses = per_sample(j, problem.sample_population(j, n, rng))  # (n,)
        values.append(losses.mean())
        errors.append(losses.std(ddof=1) / np.sqrt(n))
    return PopulationTable(np.array(values), np.array(errors))


def population_mse(
    problem: ContinualProblem, correction: Callable[[np.ndarray], np.ndarray], n: int = 50_000, seed=0
) -> PopulationTable:
    """Eq. 3, 21 per population, Monte Carlo: ``E_j ‖f(x) − Δ_j x‖²`` (Δ_0 = 0) with standard errors ``std/√n``.

    ``correction`` maps (n, d) → (n, m) float64; ``n`` inputs are drawn from each population.
    """
    deltas = problem.population_deltas  # (K+1, m, d)

    def squared_error(j: int, x: np.ndarray) -> np.ndarray:
        f_x = np.asarray(correction(x), dtype=np.float64)  # (n, m)
        if f_x.shape != (x.shape[0], problem.m):
            raise ValueError(f"correction must map (n, d) to (n, m) = {(x.shape[0], problem.m)}, got {f_x.shape}")
        return np.sum((f_x - x @ deltas[j].T) ** 2, axis=-1)  # (n,)

    return _per_population(problem, squared_error, n, seed)


def fixed_population_mse(problem: ContinualProblem, M) -> PopulationTable:
    """Eq. 12, 19–20 per population, exact: ``E_j ‖(M − Δ_j) x‖² = tr((M − Δ_j) S_j (M − Δ_j)ᵀ)``,
    ``S_j = Σ + μ_j μ_jᵀ``. Symbols ↔ names: ``M`` (m, d) a fixed correction ``f(x) = M x``."""
    M = np.asarray(M, dtype=np.float64)
    sigma = problem.tasks[0].sigma
    values = []
    for mu, delta in zip(problem.means, problem.population_deltas):
        error = M - delta  # (m, d)
        values.append(np.trace(error @ (sigma + np.outer(mu, mu)) @ error.T))
    return PopulationTable(np.array(values))


def sequential_fixed_endpoint(problem: ContinualProblem, rank: int | None = None) -> np.ndarray:
    """Eq. 16 for the last task: ``M_K = Δ_K S_K (S_K + S_0)⁻¹`` (rank-constrained with ``rank``), where a
    fixed correction (sequential LoRA, full FT) trained to convergence task after task ends. (m, d)."""
    return fixed_optimum(problem.tasks[-1], rank)


def pairwise_gap(problem: ContinualProblem, n: int = 50_000, seed=0) -> PopulationTable:
    """``E_j ‖f_γ(x) − f*(x)‖²`` per population: the excess of pairwise-gated branches over Bayes, Monte Carlo.

    Its mean over populations is exactly how much the planted branches (:func:`plant_branches`) lose to the
    Bayes predictor on the final mixture (each population 1/(K+1)), by the squared-loss identity
    ``L(f) = L(f*) + E‖f − f*‖²``, which holds for the mixture (f* is its conditional mean), not per
    population. 0 for K = 1.
    """

    def gap(j: int, x: np.ndarray) -> np.ndarray:
        difference = pairwise_correction(problem, x) - bayes_correction_continual(problem, x)  # (n, m)
        return np.sum(difference**2, axis=-1)  # (n,)

    return _per_population(problem, gap, n, seed)


def plant_branches(problem: ContinualProblem, rank: int, lora_alpha: float | None = None):
    """Eq. 31–33 once per task, as branches of one float64 ``disel.DiselLinear``: ``W0 x + f_γ(x)``.

    Branch k holds :func:`toy.disel_bayes_parameters` of ``tasks[k-1]``; branches 1..K−1 are frozen
    (``add_task_branch``), branch K is the trainable one. Consumes torch's global RNG (then overwritten).
    """
    import torch
    from torch import nn

    from disel import DiselLinear

    base = nn.Linear(problem.d, problem.m, bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(torch.tensor(np.array(problem.tasks[0].W0)))
    layer = DiselLinear(base, rank, lora_alpha=lora_alpha)
    for k, task in enumerate(problem.tasks):
        if k > 0:
            layer.add_task_branch()
        layer.set_parameters(**disel_bayes_parameters(task, rank, scaling=layer.scaling).as_layer_kwargs())
    return layer
