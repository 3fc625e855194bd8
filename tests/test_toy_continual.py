"""Property tests of the toy sequence (toy.continual, issue 18): each test states the claim it checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import toy
from toy.continual import (
    ContinualProblem,
    bayes_correction_continual,
    bayes_posteriors,
    fixed_population_mse,
    pairwise_correction,
    pairwise_gap,
    pairwise_gates,
    plant_branches,
    population_mse,
    sequential_fixed_endpoint,
)
from toy.continual_train import run_continual


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    """``Q diag(λ) Qᵀ``, λ in [0.5, 2] (condition number ≤ 4), symmetrised."""
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    sigma = (Q * rng.uniform(0.5, 2.0, size=d)) @ Q.T
    return 0.5 * (sigma + sigma.T)


@st.composite
def continual_problems(draw, max_tasks: int = 3):
    """K tasks with random means (scale ≤ 3), shared random Σ, W0 and rank-r corrections."""
    num_tasks = draw(st.integers(1, max_tasks))
    d = draw(st.integers(1, 5))
    m = draw(st.integers(1, 5))
    rank = draw(st.integers(1, min(d, m)))
    scale = draw(st.floats(0.0, 3.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    W0, sigma, mu_pt = rng.standard_normal((m, d)), _random_spd(rng, d), rng.normal(scale=scale, size=d)
    tasks = tuple(
        toy.MixtureProblem(
            W0=W0,
            delta=rng.standard_normal((m, rank)) @ rng.standard_normal((rank, d)),
            mu_ft=rng.normal(scale=scale, size=d),
            mu_pt=mu_pt,
            sigma=sigma,
        )
        for _ in range(num_tasks)
    )
    return ContinualProblem(tasks), rank


def _inputs(problem: ContinualProblem, n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([problem.sample_population(j, n, rng) for j in range(problem.num_tasks + 1)])


@given(continual_problems(), st.integers(0, 2**16))
def test_posteriors_are_a_distribution_and_two_populations_reduce_to_eq_27(case, seed):
    """π(x) rows are probabilities summing to 1; for K = 1, π_1 = γ_1 = σ(wᵀx + c) of eq. 27–28 exactly."""
    problem, _ = case
    x = _inputs(problem, seed=seed)
    posterior = bayes_posteriors(problem, x)
    np.testing.assert_allclose(posterior.sum(-1), 1.0, rtol=0, atol=1e-12)
    assert np.all(posterior >= 0)
    if problem.num_tasks == 1:
        np.testing.assert_allclose(posterior[:, 1], toy.bayes_posterior(problem.tasks[0], x), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(pairwise_gates(problem, x)[:, 0], posterior[:, 1], rtol=1e-10, atol=1e-13)


@given(continual_problems(), st.integers(0, 2**16))
def test_pairwise_gates_dominate_the_posteriors(case, seed):
    """γ_k = σ(ℓ_k − ℓ_0) ≥ π_k (a softmax with fewer competitors), strictly somewhere when K ≥ 2 and the
    other tasks have any posterior mass: one sigmoid gate per branch over-opens on other tasks' inputs."""
    problem, _ = case
    x = _inputs(problem, seed=seed)
    gates, posterior = pairwise_gates(problem, x), bayes_posteriors(problem, x)
    assert np.all(gates >= posterior[:, 1:] * (1 - 1e-12))
    others = 1.0 - posterior[:, 0:1] - posterior[:, 1:]  # (n, K) mass of the other tasks
    if problem.num_tasks >= 2:
        strict = others > 1e-6
        assert np.all(gates[strict] > posterior[:, 1:][strict])


@given(continual_problems(), st.floats(0.5, 4.0))
@example(case=(ContinualProblem.random(0, num_tasks=3, d=4, m=3, rank=2, mean=2.0), 2), lora_alpha=1.0)
def test_planted_branches_realise_the_pairwise_correction(case, lora_alpha):
    """Eq. 31–33 per task, as frozen + trainable branches of one DiselLinear: the layer's update is
    Σ_k γ_k(x) Δ_k x to float64 precision, and for K = 1 it is the Bayes correction f*(x)."""
    problem, rank = case
    torch.manual_seed(0)
    layer = plant_branches(problem, rank, lora_alpha=lora_alpha * rank)
    x = _inputs(problem, n=16)
    with torch.no_grad():
        update = layer.update(torch.from_numpy(x)).numpy()
    expected = pairwise_correction(problem, x)
    scale = 1.0 + np.abs(expected).max()
    np.testing.assert_allclose(update, expected, rtol=0, atol=1e-10 * scale)
    if problem.num_tasks == 1:
        np.testing.assert_allclose(update, bayes_correction_continual(problem, x), rtol=0, atol=1e-10 * scale)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == rank * (2 * problem.d + problem.m + 1)


def test_bayes_correction_is_the_conditional_mean():
    """Orthogonality of f*: on the final mixture, E[(f − f*)ᵀ(f* − Δ_j x)] = 0 for f = f_γ, so the mixture
    excess of the planted branches over Bayes equals E‖f_γ − f*‖² (pairwise_gap); checked within 4 standard
    errors of the sample mean of the cross term (n = 40 000 per population)."""
    problem = ContinualProblem.random(1, num_tasks=3, d=6, m=4, rank=2, mean=2.5)
    rng = np.random.default_rng(5)
    cross = []
    for j, delta in enumerate(problem.population_deltas):
        x = problem.sample_population(j, 40_000, rng)
        f_star = bayes_correction_continual(problem, x)
        cross.append(np.sum((pairwise_correction(problem, x) - f_star) * (f_star - x @ delta.T), axis=-1))
    cross = np.concatenate(cross)
    assert abs(cross.mean()) < 4 * cross.std(ddof=1) / np.sqrt(cross.size)
    excess = (
        population_mse(problem, lambda x: pairwise_correction(problem, x), 20_000, 3).mean
        - population_mse(problem, lambda x: bayes_correction_continual(problem, x), 20_000, 3).mean
    )
    gap = pairwise_gap(problem, 20_000, 3)
    assert gap.mean > 0
    assert abs(excess - gap.mean) < 4 * np.sqrt(np.sum(gap.stderr**2)) / len(gap.values) + 0.1 * gap.mean


@given(continual_problems(), st.integers(0, 2**16))
def test_fixed_population_mse_matches_monte_carlo(case, seed):
    """Eq. 12, 19–20 per population: tr((M − Δ_j) S_j (M − Δ_j)ᵀ) against a Monte Carlo mean, within 5
    standard errors (n = 20 000 per population), for M = the sequential endpoint (eq. 16, last task)."""
    problem, _ = case
    M = sequential_fixed_endpoint(problem)
    exact = fixed_population_mse(problem, M)
    sampled = population_mse(problem, lambda x: x @ M.T, 20_000, seed)
    assert np.all(np.abs(sampled.values - exact.values) <= 5 * sampled.stderr + 1e-12)


def test_adding_a_task_branch_to_the_toy_layer_changes_nothing():
    """B = 0 for the new branch: the planted layer's output is bit-identical after add_task_branch."""
    problem = ContinualProblem.random(0, num_tasks=2, d=5, m=4, rank=2)
    torch.manual_seed(0)
    layer = plant_branches(problem, 2)
    x = torch.from_numpy(_inputs(problem, n=8))
    before = layer(x).detach()
    layer.add_task_branch()
    assert torch.equal(layer(x).detach(), before)


@pytest.fixture(scope="module")
def trained():
    """Two tasks (d = m = 6, rank 2, task means 4 from pre-training), the recipes at 2000 steps per task."""
    problem = ContinualProblem.random(0, num_tasks=2, d=6, m=6, rank=2, mean=4.0)
    config = dataclasses.replace(toy.CONTINUAL_RECIPE, steps=2000, eval_samples=20_000)
    return run_continual(problem, config)


def test_trained_lora_forgets_to_the_sequential_endpoint(trained):
    """Sequential LoRA after the last task sits at the fixed optimum of that task (eq. 16), whatever it
    learnt before: each population's MSE within 10% (training-length bias) of the exact endpoint."""
    final = trained.runs["lora"].mse_after_task[-1].values
    np.testing.assert_allclose(final, trained.sequential_fixed.values, rtol=0.10)


def test_trained_branches_keep_earlier_tasks_and_gate_like_the_pairwise_posteriors(trained):
    """DISeL with a branch per task: after the last task its mean MSE is below a quarter of sequential LoRA's,
    each population's within 2× (+ 4 standard errors) of the planted pairwise branches, the mixture not below
    Bayes beyond sampling error; each branch's mean gate is at least 0.8 on its own task and within 0.2 of the
    pairwise posterior E_j γ_k on every population (the trained gates are not fully sharp: see the README)."""
    disel_final = trained.runs["disel_branches"].mse_after_task[-1]
    lora_final = trained.runs["lora"].mse_after_task[-1]
    assert disel_final.mean < 0.25 * lora_final.mean
    assert np.all(disel_final.values <= 2.0 * trained.pairwise.values + 4 * disel_final.stderr)
    # Bayes bounds the mixture (not each population): no trained layer beats it beyond sampling error.
    tolerance = 4 * np.sqrt(np.sum(disel_final.stderr**2) + np.sum(trained.bayes.stderr**2)) / len(disel_final.values)
    assert disel_final.mean >= trained.bayes.mean - tolerance
    gates = trained.runs["disel_branches"].gate_means  # (K, K+1)
    assert all(gates[k, k + 1] >= 0.8 for k in range(len(gates)))
    np.testing.assert_allclose(gates, trained.pairwise_gate_means, atol=0.2)


def test_continual_command_writes_numbers_the_figure_draws(tmp_path, capsys):
    """`python -m toy continual` (a short run) writes toy_continual.json; toy_continual draws it (2 panels)."""
    import json

    from paper_figs.toy_continual import main as figure_main
    from toy.__main__ import main as toy_main

    assert toy_main(["continual", "--steps", "20", "--tasks", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    numbers = json.loads((tmp_path / "toy_continual.json").read_text())
    assert len(numbers["runs"]["disel_branches"]["mse_after_task"]) == 2
    assert len(numbers["runs"]["disel_branches"]["gate_means"]) == 2
    assert "sequential LoRA" in capsys.readouterr().out
    assert figure_main(["--from-json", str(tmp_path / "toy_continual.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "toy_continual.png").stat().st_size > 0
