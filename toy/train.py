"""Simulations of the toy (THEORY.md §2, Figure 1): full FT, LoRA and DISeL trained on mixture samples.

All three methods are the same layer, :class:`disel.DiselLinear` around the frozen ``W0``, trained by one
loop (:func:`train_method`); they differ only in rank and in whether the gate trains:

=========  ==================  =============================================================
method     rank                gate
=========  ==================  =============================================================
``full``   ``min(m, d)``       frozen fully open: ``W_g = 0``, ``b_g = +40`` ⇒ σ = 1.0 exactly
``lora``   ``config.rank``     frozen fully open (as ``full``): the layer computes ``s · B A x``
``disel``  ``config.rank``     trained, with its own learning rate ``gate_lr``
=========  ==================  =============================================================

A rank-``min(m, d)`` product ``B A`` can be any matrix, so ``full`` is the unconstrained fixed correction
``M x`` of eq. 12; ``lora`` is the rank-constrained one. Both can at best reach the fixed optimum
(eq. 16/18: ``¼ tr(Δ S Δᵀ)`` on each population in Figure 1); DISeL can reach the Bayes loss (eq. 25).

Training minimises the plain squared error ``mean_batch ‖W0 x + f(x) − y‖²`` on fresh minibatches of the
mixture (online: every step draws new pairs, so there is no overfitting and the stream is the population),
in float64 (the comparisons with the closed forms are at the percent level and float32 noise is not what
Figure 1 is about). Evaluation reports the *excess* MSE per population, ``E_k ‖f(x) − label · Δ x‖²``, on
fresh samples (:func:`toy.correction_mse`, with standard errors), which is what the closed forms give.

The DISeL recipe, and why (measured on the Figure 1 setting; "ratio" = DISeL mixture MSE / Bayes):
    The default :class:`ToyTrainConfig` starts the gates half open (``b_g = 0``) and holds the gate
    learning rate at 0 for the first 50 steps. Over 12 problem seeds × 2 training seeds every run ends
    within 1.02× of the Bayes loss (max ratio 1.017), and LoRA / full FT within 0.7 % / 1.1 % of
    ``¼ tr(ΔSΔᵀ)`` on each population.

    With the paper's initialisation (``b_g = −3``, gates nearly closed) and the gate training from step
    0, runs get stuck: 3 of 12 (ratios 3.4, 3.5, 8.9) at this recipe's learning rates, 6 of 10 at twice
    them (batch 256). The stuck gate keys on its own component's input direction instead of on the discriminant
    ``w``: its row has cosine ≈ −0.94 with its own ``A`` row (``b_i (a_iᵀx) σ(−k a_iᵀx + β)``, a local
    optimum it does not leave; ``tests/test_toy_train.py`` pins one such seed). Why: ``B = 0`` at
    initialisation, and while ``B A`` is small the error on a fine-tuning input is still ≈ −Δx, so the
    gate gradient of component i, ∝ ``E[(b_iᵀΔx)(a_iᵀx) g(1−g) x]``, points along ``a_i`` and ``Δᵀb_i`` as
    much as along ``w``. It is tiny (∝ ``B`` and ``g(1−g)``), but Adam normalises each coordinate's step,
    so every gate weight moves at the full gate learning rate in those directions (measured: the gate
    rows' norm off e₁ grows from 0.6 to 2.3 within 20 steps). A closed gate makes this phase long: the
    effective update is ``σ(−3) B A ≈ 0.05 B A``, so the error stays near −Δx until ``B A`` ≈ 10 Δ
    (against ``B A`` ≈ Δ with half-open gates).

    Both changes shorten or remove that phase. With ``b_g = 0`` the adapter phase settles at
    ``B A ≈ Δ`` (the fixed optimum Δ/2 divided by the gate's ½), which is exactly the factor of the
    Bayes solution (eq. 31), so the gates then only have to learn *when*. The delay keeps the gate
    still until ``B`` carries the task: 0 of 24 runs stuck at ``b_g = 0`` with it (and 1 of 24 without
    it at twice the learning rates). A long delay with closed gates is harmful instead: ``B A`` grows to
    compensate (‖B A‖ ≈ 5 ‖Δ‖ after 200 steps at lr 1e-2) and the gate trades that scale back slowly
    (ratios up to 3.5 after 2000 steps with a 200-step delay at lr 1e-2). The paper's ``b_g = −3``
    protects an LLM's behaviour at the start; here ``B = 0`` already makes the initial layer exactly ``W0``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from disel import DiselLinear
from disel.optim import param_groups

from .closed_form import PopulationMSE, bayes_mse, correction_mse, fixed_mse, fixed_optimum
from .problem import MixtureProblem

__all__ = [
    "METHODS",
    "Method",
    "OPEN_GATE_BIAS",
    "ToyTrainConfig",
    "ToyRunResult",
    "Figure1Result",
    "build_layer",
    "train_method",
    "run_figure1",
    "mean_gate",
]

Method = Literal["full", "lora", "disel"]
METHODS: tuple[str, ...] = get_args(Method)

# Gate bias of a frozen-open gate. σ(b) rounds to exactly 1.0 in float64 (and float32) once
# e^{−b} < 2^{−53}, i.e. b > 36.8; 40 leaves a margin, so the "open" layer is exactly s · B A x
# (checked in build_layer). The brief's +30 gives σ = 1 − 9e-14, close but not exact.
OPEN_GATE_BIAS = 40.0

LrSchedule = Literal["cosine", "constant"]


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ToyTrainConfig:
    """One training recipe for the toy; the defaults reproduce Figure 1 in a few seconds on one core.

    Fields:
        steps: optimizer steps (each on a fresh minibatch). 2500 lets DISeL's gates converge to within
            ~2 % of the Bayes loss; LoRA and full FT converge much earlier.
        batch_size: pairs per step, drawn from the mixture (eq. 2). 1024 rather than 256: the noise of
            the last steps moves a fixed method's M along Δ, which shifts error between P_ft and P_pt to
            first order (measured spread of the per-population deviation: ±1 % at 256, ±0.2 % at 1024).
        lr: Adam learning rate of ``A`` and ``B`` (5e-3; 1e-2 converges too but leaves ±2 % per population).
        gate_lr: Adam learning rate of the gate ``(W_g, b_g)`` (DISeL only). 5 × ``lr``, the paper's
            published ratio (1e-3 against 2e-4). The gate has to travel far: the Bayes gate row is
            ``w = Σ⁻¹(μ_ft − μ_pt)``, ‖w‖ = 4 in Figure 1, from a Kaiming row of norm ≈ 0.6.
        gate_delay_steps: the gate's learning rate is 0 for this many first steps (DISeL only), until
            ``B A`` carries the task update; see the module docstring for the failure it prevents.
        rank: LoRA/DISeL rank r (``full`` uses ``min(m, d)``). Figure 1 uses r = rank Δ = 2.
        gate_bias_init: initial gate bias ``b_g``. 0 (gates half open), not the paper's −3: see the
            module docstring (with −3 and no delay some seeds get stuck; with −3 and a delay the
            adapter over-grows while the gates are closed).
        gate_weight_init: ``"kaiming"`` (paper) or ``"zero"`` initial gate weight ``W_g``.
        lr_schedule: ``"cosine"`` decays every learning rate to 0 over ``steps`` (the last steps average
            out minibatch noise, so the trained fixed methods land on the optimum, not near it);
            ``"constant"`` keeps it.
        stratified: draw each minibatch with exactly ``round(p_ft · batch_size)`` fine-tuning pairs (the
            rest pre-training) instead of a Binomial count. Same population loss in expectation; it
            removes the label-proportion noise, which moves a fixed method's optimum along Δ and so
            shifts error between P_ft and P_pt to first order (measured: ±1.5 % per population with
            i.i.d. labels at batch 256) while the mixture loss only moves to second order.
        seed: seeds the layer's initialisation, the training stream and the evaluation samples.
        eval_samples: fresh inputs drawn from *each* population for the reported MSE (200 000: standard
            errors about 0.25 % of the fixed methods' MSE and 1.3 % of DISeL's, whose loss is dominated
            by the rare inputs near the decision boundary).
    """

    steps: int = 2500
    batch_size: int = 1024
    lr: float = 5e-3
    gate_lr: float = 2.5e-2
    gate_delay_steps: int = 50
    rank: int = 2
    gate_bias_init: float = 0.0
    gate_weight_init: Literal["kaiming", "zero"] = "kaiming"
    lr_schedule: LrSchedule = "cosine"
    stratified: bool = True
    seed: int = 0
    eval_samples: int = 200_000

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "rank", "eval_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        if self.eval_samples < 2:
            raise ValueError(f"eval_samples must be >= 2 (for a standard error), got {self.eval_samples!r}")
        for name in ("lr", "gate_lr"):
            value = getattr(self, name)
            if not _is_real(value) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {name}={value!r}")
        if (
            not isinstance(self.gate_delay_steps, int)
            or isinstance(self.gate_delay_steps, bool)
            or not (0 <= self.gate_delay_steps < self.steps)
        ):
            raise ValueError(
                f"gate_delay_steps must be an integer in [0, steps) = [0, {self.steps}), "
                f"got gate_delay_steps={self.gate_delay_steps!r}"
            )
        if not _is_real(self.gate_bias_init) or not math.isfinite(self.gate_bias_init):
            raise ValueError(f"gate_bias_init must be a finite number, got gate_bias_init={self.gate_bias_init!r}")
        if self.gate_weight_init not in ("kaiming", "zero"):
            raise ValueError(f"gate_weight_init must be 'kaiming' or 'zero', got {self.gate_weight_init!r}")
        if self.lr_schedule not in get_args(LrSchedule):
            raise ValueError(f"lr_schedule must be one of {get_args(LrSchedule)}, got {self.lr_schedule!r}")
        if not isinstance(self.stratified, bool):
            raise ValueError(f"stratified must be a bool, got stratified={self.stratified!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got seed={self.seed!r}")


@dataclasses.dataclass(frozen=True)
class ToyRunResult:
    """One trained method.

    Fields:
        method: ``"full"``, ``"lora"`` or ``"disel"``.
        rank: the layer's rank r (``min(m, d)`` for ``full``).
        layer: the trained float64 :class:`disel.DiselLinear` (base = ``W0``).
        loss_curve: (steps,) training loss ``mean_batch ‖W0 x + f(x) − y‖²`` of each step's minibatch
            (includes the noise floor ``noise_std² · m`` if the problem is noisy).
        mse: excess MSE per population on fresh samples, with standard errors (``mse.stderr``).
        exact_mse: for the fixed methods, the exact population MSE of the learned matrix
            ``M = s B A`` (:func:`toy.fixed_mse`, no sampling error); None for DISeL.
        seconds: wall time of training (evaluation excluded).
    """

    method: str
    rank: int
    layer: DiselLinear
    loss_curve: np.ndarray
    mse: PopulationMSE
    exact_mse: PopulationMSE | None
    seconds: float

    def correction_matrix(self) -> np.ndarray:
        """The learned fixed correction ``M = s B A`` (m, d); meaningful for ``full`` and ``lora``."""
        with torch.no_grad():
            return (self.layer.scaling * self.layer.disel_B.weight @ self.layer.disel_A.weight).numpy().copy()


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    # np.array(...) copies: problem arrays are read-only, which torch.from_numpy warns about.
    return torch.from_numpy(np.array(array, dtype=np.float64))


def _seed_sequence(seed: int, purpose: int) -> np.random.Generator:
    """Independent NumPy streams per purpose (1: training data, 2: evaluation) from one seed."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose]))


def build_layer(problem: MixtureProblem, method: Method, config: ToyTrainConfig) -> DiselLinear:
    """The untrained float64 layer of ``method`` around ``W0`` (see the module docstring's table).

    Initialisation consumes torch's global RNG; :func:`train_method` seeds it inside ``fork_rng``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    base = nn.Linear(problem.d, problem.m, bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(_as_tensor(problem.W0))
    rank = min(problem.m, problem.d) if method == "full" else config.rank
    layer = DiselLinear(
        base,
        rank,
        gate_weight_init=config.gate_weight_init,
        gate_bias_init=config.gate_bias_init,
    )
    if method != "disel":
        with torch.no_grad():
            layer.disel_gate.weight.zero_()
            layer.disel_gate.bias.fill_(OPEN_GATE_BIAS)
        layer.disel_gate.requires_grad_(False)
        # The gates of "full" and "lora" must be exactly 1, or the layer is not LoRA.
        open_gate = torch.sigmoid(layer.disel_gate.bias)
        if not bool(torch.all(open_gate == 1.0)):
            raise AssertionError(f"frozen-open gate is not exactly 1: σ({OPEN_GATE_BIAS}) = {open_gate.tolist()}")
    return layer


def _lr_factor(config: ToyTrainConfig, delay: int) -> Callable[[int], float]:
    """Multiplier of a group's learning rate at step k: 0 before ``delay``, then the schedule."""

    def factor(step: int) -> float:
        if step < delay:
            return 0.0
        if config.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * step / config.steps))

    return factor


def train_method(
    problem: MixtureProblem,
    method: Method,
    config: ToyTrainConfig = ToyTrainConfig(),
    *,
    on_step: Callable[[], Any] | None = None,
) -> ToyRunResult:
    """Train one method on fresh mixture samples and evaluate it (THEORY.md §2, Figure 1).

    Args:
        problem: the toy problem (:class:`toy.MixtureProblem`).
        method: ``"full"``, ``"lora"`` or ``"disel"``.
        config: the recipe; ``config.seed`` makes the run deterministic (the global torch RNG state of
            the caller is left untouched).
        on_step: called once after each optimizer step (e.g. a tqdm bar's ``update``).

    Returns:
        A :class:`ToyRunResult` with the trained layer, the loss curve and the per-population MSE.
    """
    if not isinstance(problem, MixtureProblem):
        raise TypeError(f"problem must be a toy.MixtureProblem, got {type(problem).__name__}")
    if not isinstance(config, ToyTrainConfig):
        raise TypeError(f"config must be a ToyTrainConfig, got {type(config).__name__}")
    with _single_thread():
        return _train(problem, method, config, on_step)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the caller's setting.

    The toy's matmuls are (1024 × 10)-sized: a second thread only adds synchronisation, and on a busy
    machine it is ruinous (measured: 2.5 s with one thread, 51 s with two, for the default DISeL run).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(
    problem: MixtureProblem, method: Method, config: ToyTrainConfig, on_step: Callable[[], Any] | None
) -> ToyRunResult:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        layer = build_layer(problem, method, config)

    # A and B at lr; the gate (found by type in param_groups) at gate_lr, held at 0 for the delay.
    groups = param_groups(layer, lr=config.lr, gate_lr=config.gate_lr)
    optimizer = torch.optim.Adam(groups)
    factors = [_lr_factor(config, config.gate_delay_steps if g["name"] == "gate" else 0) for g in groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)

    data_rng = _seed_sequence(config.seed, 1)
    losses = np.empty(config.steps)
    start = time.perf_counter()
    for step in range(config.steps):
        x, y = _minibatch(problem, config, data_rng)  # (batch, d), (batch, m)
        loss = (layer(x) - y).square().sum(dim=-1).mean()  # mean over the batch of ‖·‖² over outputs
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses[step] = loss.item()
        if on_step is not None:
            on_step()
    seconds = time.perf_counter() - start

    layer.eval()
    mse = correction_mse(problem, _numpy_correction(layer), n=config.eval_samples, seed=_seed_sequence(config.seed, 2))
    result = ToyRunResult(
        method=method, rank=layer.r, layer=layer, loss_curve=losses, mse=mse, exact_mse=None, seconds=seconds
    )
    if method != "disel":
        result = dataclasses.replace(result, exact_mse=fixed_mse(problem, result.correction_matrix()))
    return result


def _minibatch(
    problem: MixtureProblem, config: ToyTrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training minibatch ``(x (batch, d), y (batch, m))`` from the mixture (eq. 2), see ``stratified``."""
    if not config.stratified:
        x, y, _ = problem.sample(config.batch_size, rng)
    else:
        n_ft = round(problem.p_ft * config.batch_size)
        parts = [
            problem.sample(n_ft, rng, population="ft"),
            problem.sample(config.batch_size - n_ft, rng, population="pt"),
        ]
        x = np.concatenate([part.x for part in parts])
        y = np.concatenate([part.y for part in parts])
    return torch.from_numpy(x), torch.from_numpy(y)


def _numpy_correction(layer: DiselLinear) -> Callable[[np.ndarray], np.ndarray]:
    """The layer's correction ``f(x) = update(x)`` as a NumPy function (n, d) → (n, m)."""

    def correction(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return layer.update(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()

    return correction


def mean_gate(layer: DiselLinear, x: np.ndarray) -> np.ndarray:
    """The learned gate averaged over the r components, ``(1/r) Σ_i g_i(x)``: (n, d) → (n,).

    At the Bayes solution (eq. 31–33) every gate equals the posterior π(x), so this is the quantity to
    set against :func:`toy.bayes_posterior`.
    """
    with torch.no_grad():
        return layer.gates(torch.from_numpy(np.asarray(x, dtype=np.float64))).mean(dim=-1).numpy()


# --------------------------------------------------------------------------------------------------
# Figure 1: the three methods next to the closed forms
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Figure1Result:
    """Figure 1's numbers: the trained methods and the closed-form references on one problem.

    Fields:
        problem: the toy problem.
        config: the training recipe (``config.seed`` also seeded the problem when built by
            :func:`run_figure1`).
        runs: method → :class:`ToyRunResult`, in the order ``full``, ``lora``, ``disel``.
        fixed: closed-form MSE of the best fixed correction ``M*`` (eq. 16/18–20; ``¼ tr(ΔSΔᵀ)`` on each
            population when ``S_ft = S_pt``).
        bayes: closed-form MSE of the Bayes correction ``π(x) Δ x`` (eq. 25, quadrature).
    """

    problem: MixtureProblem
    config: ToyTrainConfig
    runs: Mapping[str, ToyRunResult]
    fixed: PopulationMSE
    bayes: PopulationMSE

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready numbers (what ``python -m toy figure1`` writes and the figure reads)."""

        def mse_dict(mse: PopulationMSE | None) -> dict[str, float] | None:
            if mse is None:
                return None
            return {"ft": mse.ft, "pt": mse.pt, "mixture": mse.mixture}

        problem = self.problem
        return {
            "problem": {
                "d": problem.d,
                "m": problem.m,
                "rank_delta": problem.rank_delta,
                "mu_ft": problem.mu_ft.tolist(),
                "mu_pt": problem.mu_pt.tolist(),
                "p_ft": problem.p_ft,
                "noise_std": problem.noise_std,
            },
            "config": dataclasses.asdict(self.config),
            "closed_form": {"fixed_optimum": mse_dict(self.fixed), "bayes": mse_dict(self.bayes)},
            "methods": {
                method: {
                    "rank": run.rank,
                    "mse": mse_dict(run.mse),
                    "mse_stderr": mse_dict(run.mse.stderr),
                    "exact_mse": mse_dict(run.exact_mse),
                    "final_train_loss": float(run.loss_curve[-1]),
                    "train_seconds": run.seconds,
                }
                for method, run in self.runs.items()
            },
        }

    def table(self) -> str:
        """A plain-text table: method, MSE on P_ft, MSE on P_pt, mixture, and the closed forms."""
        return format_figure1_table(self.to_dict())


_LABELS = {"full": "Full FT", "lora": "LoRA", "disel": "DISeL"}


def format_figure1_table(numbers: Mapping[str, Any]) -> str:
    """Format :meth:`Figure1Result.to_dict` numbers (or the JSON written from them) as a table."""
    rows = [("method", "MSE_ft", "MSE_pt", "mixture")]
    for method, entry in numbers["methods"].items():
        mse = entry["mse"]
        rows.append((_LABELS.get(method, method), f"{mse['ft']:.4g}", f"{mse['pt']:.4g}", f"{mse['mixture']:.4g}"))
    references = numbers["closed_form"]
    for label, key in (("fixed optimum (closed form)", "fixed_optimum"), ("Bayes (closed form)", "bayes")):
        mse = references[key]
        rows.append((label, f"{mse['ft']:.4g}", f"{mse['pt']:.4g}", f"{mse['mixture']:.4g}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(numbers["methods"]) + 2, "-" * len(lines[0]))
    return "\n".join(lines)


def run_figure1(
    config: ToyTrainConfig = ToyTrainConfig(),
    problem: MixtureProblem | None = None,
    *,
    methods: tuple[str, ...] = METHODS,
    on_step: Callable[[], Any] | None = None,
) -> Figure1Result:
    """Train full FT, LoRA and DISeL on one problem and compute the closed-form references (Figure 1).

    Args:
        config: the recipe, shared by all methods.
        problem: default ``MixtureProblem.figure1(seed=config.seed, rank=config.rank)`` (d = m = 10,
            rank Δ = r = 2, μ = ±2 e₁, Σ = I), so one seed fixes the whole figure.
        methods: which methods to train, in plotting order.
        on_step: called after every optimizer step of every method (a progress bar's ``update``).
    """
    if problem is None:
        problem = MixtureProblem.figure1(seed=config.seed, rank=config.rank)
    runs = {method: train_method(problem, method, config, on_step=on_step) for method in methods}
    return Figure1Result(
        problem=problem,
        config=config,
        runs=runs,
        fixed=fixed_mse(problem, fixed_optimum(problem)),
        bayes=bayes_mse(problem),
    )
