"""How fast could a training step be? This CPU's matmul throughput and a step's FLOP count.

Training tokens/s means little alone; against the machine's matmul throughput it says how much of a
step is overhead. :func:`measure_matmul_throughput` times a float32 matmul of a representative shape
with the threads in use; :func:`training_step_flops` counts the matmul FLOPs of one forward + backward
of a causal LM with adapters; their ratio bounds the step time from below.

**FLOP count of a step** (T = batch × sequence tokens; a matmul of an (T, d) input with a (d, m) weight
costs 2·d·m·T in each of its three products):

* a **frozen** linear layer (the base weights, N = d·m parameters, including the LM head) needs the
  forward product and, when its input carries a gradient, the input-gradient product: 4·N·T. No
  weight gradient. Layers whose input needs no gradient (e.g. the first layer's q/k/v, reading frozen
  embeddings) cost only 2·N·T;
* a **trainable** adapter matrix (n parameters) needs forward, weight gradient and input gradient:
  6·n·T (4·n·T when its input needs no gradient). LoRA: n = r·(d + m). DISeL: the stacked
  ``[A; W_g]`` (2r × d) and ``B`` (m × r): n = r·(2d + m). In DISeL's fused backward the gradient
  ``δ B`` (2·r·m·T) is needed for A's and W_g's gradients even when x needs none;
* **attention** scores and values (H query heads of size h, sequence S): forward 2·2·B·S²·H·h, backward
  twice that, 12·B·S²·H·h per layer (the full S × S products that the kernels compute; causal masking
  does not halve them in eager or SDPA math kernels).

So a step costs ≈ 4·N·T + 6·n·T + attention; with n ≪ N, about 4·N·T: two thirds of full fine-tuning's
6·N·T. :func:`training_step_flops` evaluates this per layer, finding which inputs carry a gradient with
one probe forward pass (two tokens) rather than by parsing module names. Element-wise work (norms,
activations, softmax, the loss, the optimiser) is not counted: it is memory-bound and small in FLOPs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from disel.layers import DiselLinear
from disel.tuner.layer import DiselLayer

__all__ = [
    "MatmulThroughput",
    "StepFlops",
    "measure_matmul_throughput",
    "tokens_per_second_bound",
    "training_step_flops",
]


@dataclass(frozen=True)
class MatmulThroughput:
    """Measured float32 matmul throughput: ``best_gflops`` (fastest repetition, wall time) and
    ``median_gflops``, for ``shape`` = (tokens, d_in, d_out) on ``threads`` threads, over ``repetitions``
    repetitions. ``cpu_gflops`` divides by the median process CPU time instead (summed over threads):
    on a shared machine waiting for a core adds wall time but not CPU time, so with one thread it is
    the throughput the core delivers when it runs, the less noisy estimate of the FLOP limit."""

    best_gflops: float
    median_gflops: float
    cpu_gflops: float
    shape: tuple[int, int, int]
    threads: int
    repetitions: int
    dtype: str = "float32"


def measure_matmul_throughput(
    shape: tuple[int, int, int] = (512, 576, 1536), seconds: float = 1.0, min_repetitions: int = 3
) -> MatmulThroughput:
    """GFLOP/s of ``(tokens, d_in) @ (d_in, d_out)`` in float32 on the CPU with ``torch.get_num_threads()``.

    The default shape is SmolLM2-135M's MLP up-projection (576 → 1536) on 512 tokens (batch 8 × 64).
    Repeats for about ``seconds`` after one warm-up call.
    """
    tokens, d_in, d_out = shape
    if min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (tokens, d_in, d_out), got {shape}")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, d_in, generator=gen)
    w = torch.randn(d_in, d_out, generator=gen)
    out = torch.empty(tokens, d_out)
    torch.mm(x, w, out=out)  # warm-up
    times: list[float] = []
    cpu_times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_repetitions or time.perf_counter() < deadline:
        start, cpu_start = time.perf_counter(), time.process_time()
        torch.mm(x, w, out=out)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    flops = 2.0 * tokens * d_in * d_out
    return MatmulThroughput(
        best_gflops=flops / min(times) / 1e9,
        median_gflops=flops / statistics.median(times) / 1e9,
        cpu_gflops=flops / max(statistics.median(cpu_times), 1e-9) / 1e9,
        shape=(tokens, d_in, d_out),
        threads=torch.get_num_threads(),
        repetitions=len(times),
    )


@dataclass(frozen=True)
class StepFlops:
    """Matmul FLOPs of one training step (forward + backward), split by what they are for.

    ``frozen``: base weights (forward + input gradients); ``adapter``: adapter matrices (forward and
    both gradients); ``attention``: score and value products. ``tokens`` = batch × sequence.
    """

    frozen: int
    adapter: int
    attention: int
    tokens: int
    frozen_params: int
    adapter_params: int

    @property
    def total(self) -> int:
        return self.frozen + self.adapter + self.attention

    @property
    def per_token(self) -> float:
        return self.total / self.tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def tokens_per_second_bound(flops: StepFlops, gflops: float) -> float:
    """Training tokens/s if every FLOP of the step ran at ``gflops`` (the FLOP limit of a step)."""
    return gflops * 1e9 / flops.per_token


def _disel_adapters(module: nn.Module) -> list[tuple[int, int, int]]:
    """(d, m, r) of each active DISeL adapter of a DISeL module."""
    if isinstance(module, DiselLinear):
        return [(module.in_features, module.out_features, module.r)]
    return [
        (module.in_features, module.out_features, module.r[name])
        for name in module.active_adapters
        if name in module.disel_A
    ]


def training_step_flops(model: nn.Module, batch_size: int, seq_len: int) -> StepFlops:
    """Matmul FLOPs of one forward + backward of ``model`` on ``batch_size × seq_len`` tokens (module docstring).

    Works for a Hugging Face causal LM, plain or PEFT-wrapped (LoRA, DISeL). A probe forward on two
    tokens records each linear layer's shape, whether its weight is trainable, and whether its input
    carries a gradient. Attention uses the config's ``num_attention_heads``, ``head_dim`` (or
    hidden / heads) and ``num_hidden_layers``.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    tokens = batch_size * seq_len
    records = _probe_linear_layers(model)

    frozen = adapter = frozen_params = adapter_params = 0
    for kind, module, input_grad in records:
        if kind == "linear":
            n = module.in_features * module.out_features
            if module.weight.requires_grad:
                adapter += (6 if input_grad else 4) * n * tokens
                adapter_params += n
            else:
                frozen += (4 if input_grad else 2) * n * tokens
                frozen_params += n
        else:
            for d, m, r in _disel_adapters(module):
                stacked, b = 2 * r * d, m * r
                # forward (both) + weight grads (both) + δB (always) + input grad through [A; W_g] if needed
                adapter += (2 * (stacked + b) + 2 * (stacked + b) + 2 * b + (2 * stacked if input_grad else 0)) * tokens
                adapter_params += stacked + b

    attention = _attention_flops(model, batch_size, seq_len)
    return StepFlops(frozen, adapter, attention, tokens, frozen_params, adapter_params)


def _probe_linear_layers(model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """``(kind, module, input requires grad)`` of each linear layer a two-token training-mode forward runs.

    ``kind`` is ``"disel"`` for a DISeL layer (its adapters counted apart) and ``"linear"`` for any other
    ``nn.Linear``, including a DISeL layer's base but not its internal adapter matrices.
    """
    records: list[tuple[str, nn.Module, bool]] = []
    disel_modules = [m for m in model.modules() if isinstance(m, (DiselLinear, DiselLayer))]
    bases = {id(m.base if isinstance(m, DiselLinear) else m.get_base_layer()) for m in disel_modules}
    # a DISeL module's adapter matrices, counted with the module; its frozen base counts as a frozen linear
    adapter_matrices = {id(sub) for m in disel_modules for sub in m.modules() if sub is not m} - bases

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if args and isinstance(args[0], torch.Tensor):
            kind = "disel" if isinstance(module, (DiselLinear, DiselLayer)) else "linear"
            records.append((kind, module, args[0].requires_grad))

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if isinstance(module, (DiselLinear, DiselLayer))
        or (isinstance(module, nn.Linear) and id(module) not in adapter_matrices)
    ]
    device = next(model.parameters()).device
    was_training = model.training
    try:
        model.train()
        with torch.enable_grad():
            model(input_ids=torch.ones(1, 2, dtype=torch.long, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return records


def _attention_flops(model: nn.Module, batch_size: int, seq_len: int) -> int:
    """Forward + backward FLOPs of the attention score and value matmuls, from ``model.config``."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    layers = getattr(config, "num_hidden_layers", None)
    if heads is None or layers is None:
        raise ValueError("model.config must give num_attention_heads and num_hidden_layers for the attention FLOPs")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 12 * batch_size * seq_len * seq_len * heads * head_dim * layers
