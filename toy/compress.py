"""Rank selection and partial merge on the Gaussian-mixture toy (issue 11, THEORY.md §2).

Two experiments on ``MixtureProblem.figure1`` (d = m = 10, rank Δ = 2), both through the library's
:mod:`disel.components` calls:

* :func:`planted_compression`: the Bayes DISeL layer (eq. 31–33, rank Δ components, every gate π(x))
  plus ``extra_zero_b`` components with random ``a_i``, random gates and ``b_i = 0``, plus
  ``extra_constant`` components with random ``a_i, b_i`` and constant gates (``W_g`` row 0), whose fixed
  map is subtracted from ``W0`` so that the layer still computes ``W0 x + π(x) Δ x``. ``prune`` with
  threshold 0 must remove exactly the zero-B components and ``merge_static`` fold exactly the
  constant-gate ones, leaving the Bayes layer on ``W0`` with the output unchanged to float precision.
* :func:`trained_rank_recovery`: DISeL trained with ``r > rank Δ``. Training spreads the update over
  all components (their gates all learn π(x)), so no component is negligible until
  ``align_components`` re-expresses each group of correlated gates in its SVD basis; ``prune`` then
  keeps ``rank Δ`` components, and the excess MSE is compared with the Bayes loss (eq. 25).

:func:`compression_evidence` runs both and returns JSON-ready numbers; :func:`write_compression_results`
writes them (atomically) and :func:`plot_compression` draws the small figure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

import disel
from disel import DiselLinear

from .closed_form import bayes_mse, correction_mse, disel_bayes_parameters
from .problem import MixtureProblem
from .train import ToyTrainConfig, train_method

__all__ = [
    "compression_evidence",
    "planted_compression",
    "plot_compression",
    "run",
    "trained_rank_recovery",
    "write_compression_results",
]


def _inputs(problem: MixtureProblem, n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.array(problem.sample(n, seed).x, dtype=np.float64))  # (n, d), the mixture


def _correction(layer: DiselLinear, problem: MixtureProblem):
    """``f(x) = layer(x) − W0 x`` as a NumPy function (the base weight may hold folded components)."""
    W0 = torch.from_numpy(np.array(problem.W0, dtype=np.float64))

    def f(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
            return (layer(xt) - xt @ W0.T).numpy()

    return f


def _planted_layer(problem: MixtureProblem, zero_b: list[int], constant: list[int], seed: int):
    """The planted Bayes layer (rank Δ) followed by components ``zero_b`` (B = 0, random gates) and ``constant``
    (W_g = 0: constant gates), their fixed map taken out of ``W0`` so the layer still computes W0 x + π(x) Δ x.
    Returns ``(layer, base, bayes parameters)``."""
    k = problem.rank_delta
    extra_zero_b, extra_constant = len(zero_b), len(constant)
    r = k + extra_zero_b + extra_constant
    rng = np.random.default_rng(seed + 1)
    bayes = disel_bayes_parameters(problem, k)
    A = np.concatenate([bayes.lora_A, rng.normal(size=(r - k, problem.d))])  # (r, d)
    B = np.concatenate(
        [bayes.lora_B, np.zeros((problem.m, extra_zero_b)), rng.normal(size=(problem.m, extra_constant))], axis=1
    )
    W = np.concatenate(
        [bayes.gate_weight, rng.normal(size=(extra_zero_b, problem.d)), np.zeros((extra_constant, problem.d))]
    )
    b = np.concatenate([bayes.gate_bias, rng.normal(size=extra_zero_b), rng.normal(size=extra_constant)])
    gate_constant = 1 / (1 + np.exp(-b[constant]))  # σ(b_g,i): the constant gates
    # W0 minus the constant components' fixed map: the whole layer still computes W0 x + π(x) Δ x.
    fixed = (B[:, constant] * gate_constant) @ A[constant]  # (m, d), s = 1
    base = nn.Linear(problem.d, problem.m, bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(torch.from_numpy(np.array(problem.W0) - fixed))
    torch.manual_seed(seed)
    layer = DiselLinear(base, r).double().eval()  # lora_alpha None: s = 1, as disel_bayes_parameters(k) assumed
    layer.set_parameters(
        lora_A=torch.from_numpy(A),
        lora_B=torch.from_numpy(B),
        gate_weight=torch.from_numpy(W),
        gate_bias=torch.from_numpy(b),
    )
    return layer, base, bayes


def planted_compression(
    problem: MixtureProblem | None = None,
    *,
    extra_zero_b: int = 3,
    extra_constant: int = 3,
    samples: int = 20_000,
    eval_samples: int = 100_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The planted Bayes layer plus zero-B and constant-gate components; prune and merge_static on it.

    Returns the component kinds, the sets removed / folded, the max output change of each step on the
    statistics' inputs, the distance of the folded base weight from ``W0``, and the excess MSE before,
    after and of the Bayes correction (closed form).
    """
    problem = MixtureProblem.figure1(seed=seed) if problem is None else problem
    k, r = problem.rank_delta, problem.rank_delta + extra_zero_b + extra_constant
    zero_b, constant = list(range(k, k + extra_zero_b)), list(range(k + extra_zero_b, r))
    layer, base, bayes = _planted_layer(problem, zero_b, constant, seed)

    x = _inputs(problem, samples, seed + 2)
    with torch.no_grad():
        y0 = layer(x)
    mse_before = correction_mse(problem, _correction(layer, problem), n=eval_samples, seed=seed + 3)
    stats = disel.component_statistics(layer, [x])
    pruned = disel.prune(layer, stats, threshold=0.0, batches=[x])
    with torch.no_grad():
        y1 = layer(x)
    stats_after = disel.component_statistics(layer, [x])
    merged = disel.merge_static(layer, stats_after, std_threshold=1e-9, batches=[x])
    with torch.no_grad():
        y2 = layer(x)
    mse_after = correction_mse(problem, _correction(layer, problem), n=eval_samples, seed=seed + 3)
    kept_after_prune = pruned.kept[""]
    removed = sorted(set(range(r)) - set(kept_after_prune))
    folded = [kept_after_prune[i] for i in merged.merged[""]]  # indices in the original numbering
    return {
        "rank_delta": k,
        "rank": r,
        "components": {"bayes": list(range(k)), "zero_b": zero_b, "constant_gate": constant},
        "contribution": stats.layers[0].contribution,
        "gate_std": stats.layers[0].gate_std,
        "pruned": removed,
        "prune_exact": removed == zero_b,
        "folded": folded,
        "merge_exact": folded == constant,
        "remaining_rank": merged.remaining_rank[""],
        "max_abs_output_change_prune": float((y1 - y0).abs().max()),
        "max_abs_output_change_merge": float((y2 - y0).abs().max()),
        "measured_relative_rms_prune": pruned.output_change.relative_rms,
        "measured_relative_rms_merge": merged.output_change.relative_rms,
        "max_abs_base_minus_W0_after_merge": float(np.abs(base.weight.detach().numpy() - np.array(problem.W0)).max()),
        "mse_before": mse_before.mixture,
        "mse_after": mse_after.mixture,
        "mse_stderr": mse_after.stderr.mixture,
        "bayes_mse": bayes_mse(problem).mixture,
    }


def trained_rank_recovery(
    problem: MixtureProblem | None = None,
    *,
    rank: int = 6,
    config: ToyTrainConfig | None = None,
    samples: int = 20_000,
    eval_samples: int = 200_000,
    min_gate_correlation: float = 0.99,
    relative_threshold: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """Train DISeL with ``rank > rank Δ``, align correlated gates, prune below ``relative_threshold`` × the
    largest contribution, and compare the excess MSE (same evaluation samples) with the Bayes loss."""
    problem = MixtureProblem.figure1(seed=seed) if problem is None else problem
    config = ToyTrainConfig(rank=rank, seed=seed) if config is None else dataclasses.replace(config, rank=rank)
    layer = train_method(problem, "disel", config).layer.eval()
    x = _inputs(problem, samples, seed + 2)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mse_trained = correction_mse(problem, _correction(layer, problem), n=eval_samples, seed=seed + 3)
        stats = disel.component_statistics(layer, [x], pairwise=True)
        naive_threshold = relative_threshold * max(stats.layers[0].contribution)
        naive_kept = sum(c > naive_threshold for c in stats.layers[0].contribution)
        aligned = disel.align_components(layer, stats, min_gate_correlation=min_gate_correlation, batches=[x])
        stats_aligned = disel.component_statistics(layer, [x])
        threshold = relative_threshold * max(stats_aligned.layers[0].contribution)
        pruned = disel.prune(layer, stats_aligned, threshold=threshold, batches=[x])
        mse_pruned = correction_mse(problem, _correction(layer, problem), n=eval_samples, seed=seed + 3)
    finally:
        torch.set_num_threads(previous_threads)
    bayes = bayes_mse(problem).mixture
    return {
        "rank": rank,
        "rank_delta": problem.rank_delta,
        "train_config": dataclasses.asdict(config),
        "contribution_trained": stats.layers[0].contribution,
        "gate_correlation_min": float(np.min(stats.layers[0].gate_correlation)),
        "components_above_threshold_without_align": int(naive_kept),
        "groups": aligned.groups[""],
        "align_relative_rms": aligned.output_change.relative_rms,
        "contribution_aligned": stats_aligned.layers[0].contribution,
        "relative_threshold": relative_threshold,
        "rank_after_prune": pruned.rank_after[""],
        "prune_relative_rms": pruned.output_change.relative_rms,
        "parameters_before": pruned.parameters_before,
        "parameters_after": pruned.parameters_after,
        "mse_trained": mse_trained.mixture,
        "mse_pruned": mse_pruned.mixture,
        "mse_stderr": mse_pruned.stderr.mixture,
        "bayes_mse": bayes,
        "ratio_trained_to_bayes": mse_trained.mixture / bayes,
        "ratio_pruned_to_bayes": mse_pruned.mixture / bayes,
    }


def compression_evidence(seed: int = 0, *, train_config: ToyTrainConfig | None = None, rank: int = 6) -> dict[str, Any]:
    """Both experiments on ``MixtureProblem.figure1(seed)``: JSON-ready numbers."""
    problem = MixtureProblem.figure1(seed=seed)
    return {
        "seed": seed,
        "planted": planted_compression(problem, seed=seed),
        "trained": trained_rank_recovery(problem, rank=rank, config=train_config, seed=seed),
    }


def write_compression_results(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``result`` as JSON atomically (temporary file in the same folder, then ``os.replace``)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".compress-", suffix=".json.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plot_compression(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Two panels: the planted layer's per-component contribution and gate std (by kind), and the trained
    layer's contributions before and after aligning its gates (sorted, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planted, trained = result["planted"], result["trained"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    kinds = planted["components"]
    colors = {"bayes": "tab:blue", "zero_b": "tab:gray", "constant_gate": "tab:orange"}
    for kind, indices in kinds.items():
        left.bar(
            indices, [planted["contribution"][i] for i in indices], color=colors[kind], label=kind.replace("_", " ")
        )
        left.plot(indices, [planted["gate_std"][i] for i in indices], "k_", markersize=12)
    left.set_xlabel("component i")
    left.set_ylabel("contribution $c_i$ (bars), gate std (—)")
    left.set_title("planted: prune zero-B, fold constant gates", fontsize=9)
    left.legend(fontsize=7)
    for key, label in (("contribution_trained", "trained"), ("contribution_aligned", "after align")):
        values = sorted(trained[key], reverse=True)
        right.semilogy(range(1, len(values) + 1), np.maximum(values, 1e-12), "o-", label=label)
    right.axvline(trained["rank_delta"] + 0.5, color="gray", linestyle=":")
    right.set_xlabel("component (sorted)")
    right.set_ylabel("contribution $c_i$")
    right.set_title(f"trained r={trained['rank']}: prune keeps {trained['rank_after_prune']}", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".compress-", suffix=os.path.splitext(os.fspath(path))[1], dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=150)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def run(out_dir: str | os.PathLike = "toy/results", seed: int = 0) -> dict[str, Any]:
    """Run :func:`compression_evidence` and write ``compression.json`` and ``compression.png`` to ``out_dir``."""
    result = compression_evidence(seed)
    result["command"] = f"python -m toy.compress {os.fspath(out_dir)}"
    write_compression_results(result, os.path.join(out_dir, "compression.json"))
    plot_compression(result, os.path.join(out_dir, "compression.png"))
    return result


if __name__ == "__main__":
    import sys

    run(*sys.argv[1:2])
