"""The DISeL update, written once (THEORY.md §1, eq. DISeL and eq. 9).

    h = W0 x + s · B diag(g(x)) A x,        g(x) = σ(W_g x + b_g)

Symbols ↔ arguments: ``A`` = ``lora_A`` (r, d), ``B`` = ``lora_B`` (m, r), ``W_g`` = ``gate_weight``
(r, d), ``b_g`` = ``gate_bias`` (r,), ``s`` = ``scaling``. Every function accepts any number of leading
batch dimensions on ``x`` (``(..., d)``). The standalone layer, the PEFT layer and the toy simulations all
call these functions; nothing else in the package multiplies gates.

Two equivalent implementations of the update are kept:

* :func:`disel_update_reference` follows the equation literally (three separate matmuls). It is the
  reference the tests compare against.
* :func:`disel_update` is the one used in training. The adapter's matmuls are thin (r ≪ d), so they are
  bound by memory traffic: stacking ``[A; W_g]`` reads ``x`` once for both projections, and a custom
  autograd function saves only the ``(..., 2r)`` pre-activations (not the gate, the gated product and
  the projection separately), recomputing the cheap element-wise parts in backward.

At inference (no autograd), re-concatenating ``[A; W_g]`` on every call costs a read and a write of
``2r × d`` per layer and call, a few percent of a small-batch forward; a layer may pass a
:class:`StackedWeightCache` to keep the stacked weight between calls (see there for when it is rebuilt).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "StackedWeightCache",
    "disel_update",
    "disel_update_reference",
    "gate_values",
    "stacked_weight_cache_enabled",
]

_CACHE_ENABLED = [True]


@contextlib.contextmanager
def stacked_weight_cache_enabled(enabled: bool) -> Iterator[None]:
    """Turn every :class:`StackedWeightCache` on or off within the block (benchmarks, debugging)."""
    previous = _CACHE_ENABLED[0]
    _CACHE_ENABLED[0] = bool(enabled)
    try:
        yield
    finally:
        _CACHE_ENABLED[0] = previous


class StackedWeightCache:
    """``[A; W_g]`` (2r, d) and ``[0; b_g]`` (2r,) kept between inference calls of one layer's adapter.

    Used only where no autograd graph is built (training always re-concatenates, so gradients flow to the
    parameters themselves) and not while ``torch.compile`` traces. The cached pair is rebuilt when any of
    ``A``, ``W_g``, ``b_g`` changes identity, storage, shape, stride, dtype, device or version counter:
    optimizer steps, ``load_state_dict``, ``copy_`` and other in-place writes bump the version; ``.to()``,
    ``param.data = ...`` and ``nn.Parameter`` replacement change the storage. The cache keeps the source
    storages alive, so a freed address cannot be reused by new values that would look the same.
    One write escapes version counting in PyTorch: in-place ops on ``param.data`` (e.g.
    ``param.data.copy_(...)``); after such a write call :meth:`clear` (or write under ``torch.no_grad()``
    on the parameter itself, which is tracked). Memory: one extra ``2r × d`` copy per cached adapter.
    """

    __slots__ = ("_key", "_sources", "_value")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._key = None
        self._sources = None
        self._value = None

    @staticmethod
    def _fingerprint(tensors: tuple[Tensor | None, ...]):
        return tuple(
            None if t is None else (id(t), t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, t.device)
            for t in tensors
        )

    def get(self, lora_A: Tensor, gate_weight: Tensor, gate_bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The stacked weight (2r, d) and bias (2r,) or ``None``, from the cache or freshly built."""
        tensors = (lora_A, gate_weight, gate_bias)
        try:
            key = self._fingerprint(tensors)
        except RuntimeError:  # inference tensors have no version counter: do not cache them
            return _stack(lora_A, gate_weight, gate_bias)
        if key != self._key:
            self._value = _stack(lora_A, gate_weight, gate_bias)
            self._sources = tuple(None if t is None else t.untyped_storage() for t in tensors)
            self._key = key
        return self._value

    def __reduce__(self):
        return (StackedWeightCache, ())  # copied or pickled layers have new parameters: start empty


def _stack(lora_A: Tensor, gate_weight: Tensor, gate_bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``[A; W_g]`` (2r, d) and ``[0; b_g]`` (2r,) (``None`` without a gate bias)."""
    r = lora_A.shape[0]
    stacked = torch.cat([lora_A, gate_weight], dim=0)  # (2r, d)
    bias = None if gate_bias is None else torch.cat([gate_bias.new_zeros(r), gate_bias])  # (2r,)
    return stacked, bias


def gate_values(x: Tensor, gate_weight: Tensor, gate_bias: Tensor | None) -> Tensor:
    """Gate vector ``g(x) = σ(W_g x + b_g)`` (eq. 9), each entry in (0, 1).

    Shapes: ``x`` (..., d), ``gate_weight`` (r, d), ``gate_bias`` (r,) → (..., r).
    """
    return torch.sigmoid(F.linear(x, gate_weight, gate_bias))  # (..., r)


def disel_update_reference(
    x: Tensor,
    lora_A: Tensor,
    lora_B: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor | None,
    scaling: float,
) -> Tensor:
    """``s · B diag(σ(W_g x + b_g)) A x`` computed literally (reference implementation).

    Shapes: ``x`` (..., d), ``lora_A`` (r, d), ``lora_B`` (m, r), ``gate_weight`` (r, d),
    ``gate_bias`` (r,) → (..., m).
    """
    ax = F.linear(x, lora_A)  # (..., r)
    g = gate_values(x, gate_weight, gate_bias)  # (..., r)
    return F.linear(ax * g, lora_B) * scaling  # (..., m)


def _stacked_preactivations(
    x: Tensor, lora_A: Tensor, gate_weight: Tensor, gate_bias: Tensor | None, cache: StackedWeightCache | None = None
) -> Tensor:
    """``u = [A x, W_g x + b_g]`` in one matmul over ``[A; W_g]``: (..., d) → (..., 2r).

    The stacked weight is rebuilt on every call unless a ``cache`` is given (inference only, see
    :class:`StackedWeightCache`).
    """
    if cache is not None and _CACHE_ENABLED[0] and not torch.compiler.is_compiling():
        stacked, bias = cache.get(lora_A, gate_weight, gate_bias)  # (2r, d), (2r,)
    else:
        stacked, bias = _stack(lora_A, gate_weight, gate_bias)  # (2r, d), (2r,)
    return F.linear(x, stacked, bias)  # (..., 2r)


def _disel_update_no_grad(x, lora_A, lora_B, gate_weight, gate_bias, scaling: float, cache=None) -> Tensor:
    """The fused forward without autograd bookkeeping (inference, or nothing requires grad)."""
    r = lora_A.shape[0]
    ax, pre_gate = _stacked_preactivations(x, lora_A, gate_weight, gate_bias, cache).split(r, dim=-1)  # (..., r) each
    z = torch.sigmoid(pre_gate).mul_(ax).mul_(scaling)  # (..., r): s · (A x) ⊙ g
    return F.linear(z, lora_B)  # (..., m)


class _FusedDiselUpdate(torch.autograd.Function):
    """Fused forward/backward of the DISeL branch; see :func:`disel_update`.

    Saves ``x`` and the stacked pre-activations ``u = [A x, W_g x + b_g]`` (..., 2r) (the parameters are
    saved by reference; ``[A; W_g]`` is re-concatenated in backward rather than kept alive between forward
    and backward). Backward, with ``g = σ(u_g)``, ``z = s · (A x) ⊙ g`` and upstream gradient ``δ`` (..., m):

        ∂B   = δᵀ z                ∂z = δ B
        ∂(Ax) = s · ∂z ⊙ g         ∂(W_g x + b_g) = ∂(Ax) ⊙ (A x) ⊙ (1 − g)
        ∂u = [∂(Ax), ∂(W_g x + b_g)]     ∂[A; W_g] = ∂uᵀ x     ∂x = ∂u [A; W_g]
        ∂b_g = ∂(W_g x + b_g) summed over tokens
    """

    @staticmethod
    def forward(ctx, x, lora_A, lora_B, gate_weight, gate_bias, scaling):  # noqa: D102
        r = lora_A.shape[0]
        u = _stacked_preactivations(x, lora_A, gate_weight, gate_bias)  # (..., 2r)
        ax, pre_gate = u.split(r, dim=-1)  # (..., r) each
        z = torch.sigmoid(pre_gate).mul_(ax).mul_(scaling)  # (..., r)
        ctx.save_for_backward(x, u, lora_A, lora_B, gate_weight, gate_bias)
        ctx.scaling = scaling
        ctx.has_gate_bias = gate_bias is not None
        # Under autocast the matmuls above ran in a lower precision than the parameters; backward runs
        # outside autocast, so it casts to the dtype forward computed in and casts gradients back.
        ctx.param_dtype = lora_A.dtype
        ctx.input_dtype = x.dtype
        return F.linear(z, lora_B)  # (..., m)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x, u, lora_A, lora_B, gate_weight, gate_bias = ctx.saved_tensors
        s = ctx.scaling
        if torch.is_grad_enabled():
            # create_graph=True (double backward, e.g. a gradient penalty): u was saved without history,
            # so differentiate the reference, whose graph connects to x and the parameters.
            return _reference_backward(ctx, grad_out, x, lora_A, lora_B, gate_weight, gate_bias)
        r = lora_B.shape[1]
        dt = u.dtype
        grad_out, x, lora_B = grad_out.to(dt), x.to(dt), lora_B.to(dt)
        ax, pre_gate = u.split(r, dim=-1)  # (..., r)
        g = torch.sigmoid(pre_gate)  # (..., r)
        g_scaled = g * s  # (..., r)
        grad_z = F.linear(grad_out, lora_B.t())  # (..., r): δ B
        # Out-of-place, then one concatenation: writing into split views with out= is cheaper in eager
        # mode but torch.compile cannot trace out= into non-contiguous tensors (a graph break per layer).
        grad_ax = grad_z * g_scaled  # (..., r)
        grad_pre = grad_ax * ax * (1 - g)  # (..., r)
        grad_u = torch.cat([grad_ax, grad_pre], dim=-1)  # (..., 2r)

        grad_x = grad_A = grad_B = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            stacked = torch.cat([lora_A, gate_weight], dim=0).to(dt)  # (2r, d)
            grad_x = F.linear(grad_u, stacked.t()).to(ctx.input_dtype)  # (..., d)
        if ctx.needs_input_grad[2]:
            z = ax * g_scaled  # (..., r)
            grad_B = (grad_out.reshape(-1, grad_out.shape[-1]).t() @ z.reshape(-1, r)).to(ctx.param_dtype)  # (m, r)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_stacked = grad_u.reshape(-1, 2 * r).t() @ x.reshape(-1, x.shape[-1])  # (2r, d)
            grad_A, grad_W = grad_stacked.to(ctx.param_dtype).split(r, dim=0)  # (r, d) each
        if ctx.has_gate_bias and ctx.needs_input_grad[4]:
            grad_b = grad_pre.reshape(-1, r).sum(0).to(ctx.param_dtype)  # (r,)
        return grad_x, grad_A, grad_B, grad_W, grad_b, None


def _reference_backward(ctx, grad_out, x, lora_A, lora_B, gate_weight, gate_bias):
    """Gradients of :func:`disel_update_reference` with a graph (for double backward)."""
    # The saved inputs unpack with their own history, so these gradients connect to the outer graph.
    inputs = (x, lora_A, lora_B, gate_weight, gate_bias)
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        out = disel_update_reference(*inputs, ctx.scaling)  # (..., m)
        grads = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_out, create_graph=True)
    result = [None] * 6
    for i, grad in zip(wanted, grads):
        result[i] = grad
    return tuple(result)


def disel_update(
    x: Tensor,
    lora_A: Tensor,
    lora_B: Tensor,
    gate_weight: Tensor,
    gate_bias: Tensor | None,
    scaling: float,
    cache: StackedWeightCache | None = None,
) -> Tensor:
    """``s · B diag(σ(W_g x + b_g)) A x`` (eq. DISeL), the fused implementation used for training.

    Shapes: ``x`` (..., d), ``lora_A`` (r, d), ``lora_B`` (m, r), ``gate_weight`` (r, d),
    ``gate_bias`` (r,) → (..., m). Numerically equal to :func:`disel_update_reference` (tested), in
    values and gradients. When no argument requires grad (or grad mode is off) it skips the autograd
    function and saves nothing, and reuses ``[A; W_g]`` from ``cache`` if one is given.
    """
    tensors = (x, lora_A, lora_B, gate_weight, gate_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _FusedDiselUpdate.apply(x, lora_A, lora_B, gate_weight, gate_bias, float(scaling))
    return _disel_update_no_grad(x, lora_A, lora_B, gate_weight, gate_bias, float(scaling), cache)
