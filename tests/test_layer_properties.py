"""Property tests of the DISeL layer math (THEORY.md §1, eq. DISeL and eq. 9).

Each test's docstring names the claim it checks. Strategies are bounded (small shapes, seeds for
generic random tensors, bounded floats where the values themselves matter); the default hypothesis
profile ("ci", tests/conftest.py) is deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from disel.functional import disel_update, disel_update_reference, gate_values
from disel.layers import DiselGate, DiselLinear

DTYPE = torch.float64

dims = st.integers(min_value=1, max_value=12)
ranks = st.integers(min_value=1, max_value=16)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
scalings = st.floats(min_value=0.125, max_value=8.0, allow_nan=False, allow_infinity=False)
# Leading batch dimensions of x: none at all (a single vector), or up to three of them.
batch_shapes = st.lists(st.integers(min_value=1, max_value=4), min_size=0, max_size=3).map(tuple)


def _random_update_args(seed: int, lead: tuple[int, ...], d: int, m: int, r: int, *, gate_bias: bool = True):
    """Generic float64 tensors (x, A, B, W_g, b_g) from a seed: a random point, not a special one."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    x, lora_A, lora_B, gate_weight = randn(*lead, d), randn(r, d), randn(m, r), randn(r, d)
    bias = randn(r) if gate_bias else None
    return x, lora_A, lora_B, gate_weight, bias


def _disel_linear(d: int, m: int, r: int, seed: int, **kwargs) -> DiselLinear:
    torch.manual_seed(seed)
    return DiselLinear(nn.Linear(d, m, dtype=DTYPE), r, **kwargs)


# --- reductions -------------------------------------------------------------------------------------


@given(seed=seeds, lead=batch_shapes, d=dims, m=dims, r=ranks, scaling=scalings)
def test_all_gates_open_reduces_to_lora(seed, lead, d, m, r, scaling):
    """All gates = 1 (W_g = 0, b_g = +50 so σ(b_g) rounds to 1 in float64) ⇒ the update is LoRA's s · B A x."""
    x, lora_A, lora_B, _, _ = _random_update_args(seed, lead, d, m, r)
    gate_weight = torch.zeros(r, d, dtype=DTYPE)
    gate_bias = torch.full((r,), 50.0, dtype=DTYPE)
    assert torch.equal(gate_values(x, gate_weight, gate_bias), torch.ones(*lead, r, dtype=DTYPE))
    lora = scaling * F.linear(F.linear(x, lora_A), lora_B)  # (..., m)
    for update in (disel_update, disel_update_reference):
        torch.testing.assert_close(update(x, lora_A, lora_B, gate_weight, gate_bias, scaling), lora)


@given(
    seed=seeds,
    lead=batch_shapes,
    d=dims,
    m=dims,
    r=ranks,
    alpha=st.sampled_from([None, 1.0, 16.0]),
    gate_bias_init=st.floats(-10.0, 10.0),
    gate_weight_init=st.sampled_from(["kaiming", "zero"]),
)
def test_zero_B_reproduces_base_layer_exactly(seed, lead, d, m, r, alpha, gate_bias_init, gate_weight_init):
    """B = 0 ⇒ h = W0 x: a freshly initialised DiselLinear (B = 0) equals its base layer bit for bit."""
    layer = _disel_linear(
        d, m, r, seed, lora_alpha=alpha, gate_bias_init=gate_bias_init, gate_weight_init=gate_weight_init
    )
    assert torch.count_nonzero(layer.disel_B.weight) == 0
    x = torch.randn(*lead, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    assert torch.equal(layer(x), layer.base(x))
    with torch.no_grad():  # the no-grad (inference) path too
        assert torch.equal(layer(x), layer.base(x))


@given(seed=seeds, lead=batch_shapes, d=dims, m=dims, r=ranks)
def test_disel_linear_is_base_plus_reference_update(seed, lead, d, m, r):
    """DiselLinear.forward = W0 x + s · B diag(σ(W_g x + b_g)) A x (eq. DISeL), with B ≠ 0."""
    layer = _disel_linear(d, m, r, seed, lora_alpha=2.0 * r, init_weights=False)
    x = torch.randn(*lead, d, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
    expected = layer.base(x) + disel_update_reference(
        x, layer.disel_A.weight, layer.disel_B.weight, layer.disel_gate.weight, layer.disel_gate.bias, 2.0
    )
    torch.testing.assert_close(layer(x), expected)


# --- invariances ------------------------------------------------------------------------------------


@given(seed=seeds, lead=batch_shapes, d=dims, m=dims, r=ranks, scaling=scalings)
def test_permuting_rank_components_with_their_gates_changes_nothing(seed, lead, d, m, r, scaling):
    """Σ_i g_i(x) b_i a_iᵀ x is a sum over components: permuting rows of A, W_g, b_g and columns of B
    by the same permutation leaves the update unchanged."""
    x, lora_A, lora_B, gate_weight, gate_bias = _random_update_args(seed, lead, d, m, r)
    perm = torch.randperm(r, generator=torch.Generator().manual_seed(seed))
    original = disel_update(x, lora_A, lora_B, gate_weight, gate_bias, scaling)
    permuted = disel_update(x, lora_A[perm], lora_B[:, perm], gate_weight[perm], gate_bias[perm], scaling)
    torch.testing.assert_close(permuted, original)
    # And the gate vector is permuted the same way.
    torch.testing.assert_close(
        gate_values(x, gate_weight[perm], gate_bias[perm]), gate_values(x, gate_weight, gate_bias)[..., perm]
    )


@given(seed=seeds, batch=st.integers(2, 9), seq=st.integers(1, 5), d=dims, m=dims, r=ranks, split=st.integers(1, 8))
def test_output_independent_of_batch_split(seed, batch, seq, d, m, r, split):
    """Each token's output depends only on that token: a batch computed whole equals the concatenation
    of its parts (forward and the input gradient)."""
    layer = _disel_linear(d, m, r, seed, init_weights=False)
    x = torch.randn(batch, seq, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE, requires_grad=True)
    split = min(split, batch - 1)
    whole = layer(x)
    parts = torch.cat([layer(x[:split]), layer(x[split:])], dim=0)
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-12)
    (grad_whole,) = torch.autograd.grad(whole.sum(), x)
    (grad_parts,) = torch.autograd.grad(parts.sum(), x)
    torch.testing.assert_close(grad_parts, grad_whole, rtol=1e-12, atol=1e-12)


# --- bounds -----------------------------------------------------------------------------------------

small_floats = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, allow_infinity=False)


@given(d=st.integers(1, 8), r=st.integers(1, 8), data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_gates_strictly_inside_unit_interval_for_moderate_preactivations(d, r, data, dtype):
    """g(x) = σ(W_g x + b_g) ∈ (0, 1) strictly whenever |W_g x + b_g| ≤ 15 (eq. 9).

    Float saturation: σ(t) rounds to exactly 1 in float32 once t ≳ 16.6 (1 − σ(t) ≈ e^{-t} < 2^{-24}),
    so strictness is a claim about moderate pre-activations; here |x_j|, |W_g|_ij ≤ 1, d ≤ 8, |b_g| ≤ 7
    bound them by 15.
    """
    x = torch.tensor(data.draw(st.lists(small_floats, min_size=d, max_size=d)), dtype=dtype)
    weight = torch.tensor(
        data.draw(st.lists(st.lists(small_floats, min_size=d, max_size=d), min_size=r, max_size=r)), dtype=dtype
    )
    bias = torch.tensor(data.draw(st.lists(st.floats(-7.0, 7.0), min_size=r, max_size=r)), dtype=dtype)
    g = gate_values(x, weight, bias)
    assert g.shape == (r,)
    assert torch.all(g > 0) and torch.all(g < 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gates_strictly_inside_unit_interval_at_the_bound(dtype, sign):
    """The extreme the bound above allows, every term at its limit (t = ±(8 · 1 · 1 + 7) = ±15), is still
    strictly inside (0, 1) in float32 and float64."""
    x = torch.ones(8, dtype=dtype)
    g = gate_values(x, torch.full((1, 8), sign, dtype=dtype), torch.full((1,), 7.0 * sign, dtype=dtype))
    assert 0.0 < g.item() < 1.0


@given(
    t=st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), dtype=st.sampled_from([torch.float32, torch.float64])
)
@example(t=1e4, dtype=torch.float32).via("saturates to exactly 1")
@example(t=-1e4, dtype=torch.float32).via("saturates to exactly 0")
def test_gates_in_closed_unit_interval_for_any_finite_preactivation(t, dtype):
    """For any finite pre-activation, g ∈ [0, 1] (the open bounds may be reached only by rounding) and
    finite: saturation never produces NaN or values outside the unit interval."""
    g = gate_values(torch.ones(1, dtype=dtype), torch.full((1, 1), t, dtype=dtype), torch.zeros(1, dtype=dtype))
    assert torch.isfinite(g).all() and 0.0 <= g.item() <= 1.0


# --- the fused implementation -----------------------------------------------------------------------


@given(seed=seeds, lead=batch_shapes, d=dims, m=dims, r=ranks, scaling=scalings, gate_bias=st.booleans())
@example(seed=0, lead=(), d=1, m=1, r=1, scaling=1.0, gate_bias=True).via("no batch dims, all sizes 1")
@example(seed=1, lead=(1, 1, 1), d=3, m=2, r=16, scaling=0.125, gate_bias=False).via("r > d, no gate bias")
def test_fused_update_equals_reference_in_values_and_gradients(seed, lead, d, m, r, scaling, gate_bias):
    """disel_update (fused custom autograd) = disel_update_reference: same values and the same gradients
    with respect to x, A, B, W_g and b_g (float64), for any leading batch dims, including none."""
    args = _random_update_args(seed, lead, d, m, r, gate_bias=gate_bias)
    inputs = [t.clone().requires_grad_(True) if t is not None else None for t in args]
    inputs_ref = [t.clone().requires_grad_(True) if t is not None else None for t in args]
    out = disel_update(*inputs, scaling)
    out_ref = disel_update_reference(*inputs_ref, scaling)
    assert out.shape == (*lead, m)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(*lead, m, generator=torch.Generator().manual_seed(seed + 7), dtype=DTYPE)
    wrt = [t for t in inputs if t is not None]
    wrt_ref = [t for t in inputs_ref if t is not None]
    grads = torch.autograd.grad(out, wrt, upstream)
    grads_ref = torch.autograd.grad(out_ref, wrt_ref, upstream)
    for name, grad, grad_ref in zip(["x", "lora_A", "lora_B", "gate_weight", "gate_bias"], grads, grads_ref):
        assert grad.shape == grad_ref.shape, name
        torch.testing.assert_close(
            grad, grad_ref, rtol=1e-10, atol=1e-12, msg=lambda msg, name=name: f"grad of {name}: {msg}"
        )
    with torch.no_grad():  # the no-grad fast path
        torch.testing.assert_close(disel_update(*args, scaling), out_ref.detach(), rtol=1e-12, atol=1e-12)


def test_fused_update_passes_gradcheck():
    """The fused backward is the derivative of its forward (finite differences, float64)."""
    args = [t.requires_grad_(True) for t in _random_update_args(3, (2, 3), 5, 4, 3)]
    assert torch.autograd.gradcheck(lambda *a: disel_update(*a, 0.7), tuple(args))


def test_fused_update_second_derivatives_equal_reference():
    """Double backward (create_graph=True, e.g. a gradient penalty) through the fused update is correct:
    gradgradcheck passes and the penalty's gradients equal the reference's."""
    args = [t.requires_grad_(True) for t in _random_update_args(5, (2, 3), 4, 3, 2)]
    assert torch.autograd.gradgradcheck(lambda *a: disel_update(*a, 0.7), tuple(args))
    frozen_x = [args[0].detach()] + args[1:]  # x not requiring grad, as for a layer's input
    penalties = []
    for update in (disel_update, disel_update_reference):
        grads = torch.autograd.grad(update(*frozen_x, 0.7).square().sum(), frozen_x[1:], create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        penalties.append(torch.autograd.grad(penalty, frozen_x[1:]))
    for fused, reference in zip(*penalties):
        torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-12)


def test_fused_update_gradients_only_for_inputs_that_need_them():
    """Frozen inputs get no gradient and trainable ones do (needs_input_grad is honoured)."""
    x, lora_A, lora_B, gate_weight, gate_bias = _random_update_args(4, (3,), 5, 4, 2)
    lora_B.requires_grad_(True)
    gate_bias.requires_grad_(True)
    disel_update(x, lora_A, lora_B, gate_weight, gate_bias, 1.0).sum().backward()
    assert lora_B.grad is not None and gate_bias.grad is not None
    assert x.grad is None and lora_A.grad is None and gate_weight.grad is None


# --- gradients to the gate --------------------------------------------------------------------------


@given(seed=seeds, lead=st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple), d=dims, m=dims, r=ranks)
def test_gradients_reach_gate_once_B_is_nonzero(seed, lead, d, m, r):
    """∂L/∂W_g and ∂L/∂b_g are ∝ B: exactly zero while B = 0 (at init), nonzero once B ≠ 0."""
    layer = _disel_linear(d, m, r, seed)
    x = torch.randn(*lead, d, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    target = torch.randn(*lead, m, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)

    def gate_grads():
        layer.zero_grad(set_to_none=True)
        F.mse_loss(layer(x), target).backward()
        return layer.disel_gate.weight.grad, layer.disel_gate.bias.grad

    grad_w, grad_b = gate_grads()
    assert torch.count_nonzero(grad_w) == 0 and torch.count_nonzero(grad_b) == 0
    with torch.no_grad():
        layer.disel_B.weight.normal_(generator=torch.Generator().manual_seed(seed + 2))
    grad_w, grad_b = gate_grads()
    assert torch.count_nonzero(grad_b) == r  # every component's gate bias moves
    assert torch.count_nonzero(grad_w.abs().sum(dim=1)) == r  # and every gate row


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["lora_A", "lora_B", "gate_weight", "gate_bias"])
def test_set_parameters_rejects_wrong_shapes_naming_the_argument(argument):
    """set_parameters raises ValueError naming the argument and the expected shape; nothing is copied."""
    layer = DiselLinear(nn.Linear(5, 3), 2)
    expected = {"lora_A": (2, 5), "lora_B": (3, 2), "gate_weight": (2, 5), "gate_bias": (2,)}[argument]
    wrong = torch.zeros(*(n + 1 for n in expected))
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    with pytest.raises(ValueError, match=rf"{argument} must have shape {re_tuple(expected)}"):
        layer.set_parameters(**{argument: wrong})
    for name, p in layer.named_parameters():
        assert torch.equal(p, before[name]), f"{name} changed although set_parameters refused"


def test_set_parameters_refuses_a_transposed_matrix():
    """A transposed lora_A (d, r) is a shape error, not silently broadcast or reshaped."""
    layer = DiselLinear(nn.Linear(5, 3), 2)
    with pytest.raises(ValueError, match="lora_A"):
        layer.set_parameters(lora_A=torch.zeros(5, 2))


def test_set_parameters_copies_values():
    """Planted values are what the layer then uses."""
    layer = DiselLinear(nn.Linear(4, 3, dtype=DTYPE), 2)
    values = _random_update_args(0, (), 4, 3, 2)[1:]
    layer.set_parameters(lora_A=values[0], lora_B=values[1], gate_weight=values[2], gate_bias=values[3])
    assert torch.equal(layer.disel_A.weight, values[0]) and torch.equal(layer.disel_B.weight, values[1])
    assert torch.equal(layer.disel_gate.weight, values[2]) and torch.equal(layer.disel_gate.bias, values[3])


@pytest.mark.parametrize("r", [0, -1, 2.0, True, None])
def test_disel_linear_rejects_bad_rank(r):
    """r must be a positive int; the error names r."""
    with pytest.raises(ValueError, match="r must be a positive integer"):
        DiselLinear(nn.Linear(4, 3), r)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_disel_linear_rejects_bad_dropout(dropout):
    """dropout must lie in [0, 1); the error names dropout."""
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        DiselLinear(nn.Linear(4, 3), 2, dropout=dropout)


@pytest.mark.parametrize("base", [nn.Conv1d(4, 3, 1), nn.Identity(), nn.Bilinear(2, 2, 2)])
def test_disel_linear_rejects_non_linear_base(base):
    """DiselLinear wraps an nn.Linear only; the error names base and the type given."""
    with pytest.raises(TypeError, match=rf"base={type(base).__name__}"):
        DiselLinear(base, 2)


def test_disel_linear_rejects_unknown_gate_weight_init():
    """gate_weight_init must be "kaiming" or "zero"; the error names it."""
    with pytest.raises(ValueError, match="gate_weight_init"):
        DiselLinear(nn.Linear(4, 3), 2, gate_weight_init="xavier")


def test_disel_linear_freezes_base_and_uses_gate_type():
    """The base W0 is frozen; the adapter parameters train; the gate is a DiselGate (found by type)."""
    layer = DiselLinear(nn.Linear(4, 3), 2)
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert all(p.requires_grad for n, p in layer.named_parameters() if n.startswith("disel_"))
    assert isinstance(layer.disel_gate, DiselGate)
    assert layer.active_gates() == [("default", layer.disel_gate)]
    assert math.isclose(torch.sigmoid(layer.disel_gate.bias).max().item(), 1 / (1 + math.exp(3.0)), rel_tol=1e-6)


def re_tuple(shape: tuple[int, ...]) -> str:
    """A regex matching ``str(shape)`` literally (parentheses escaped)."""
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")
