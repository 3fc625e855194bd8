"""The inference cache of the stacked ``[A; W_g]`` weight (disel.functional.StackedWeightCache): it is used
only without autograd, and every tracked way of changing a parameter rebuilds it (a stale cache would
silently give the old adapter's outputs)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from peft import get_peft_model

import disel
from disel.functional import (
    StackedWeightCache,
    disel_update_reference,
    stacked_weight_cache_enabled,
)
from tiny_models import tiny_llama


def layer(seed: int = 0) -> disel.DiselLinear:
    torch.manual_seed(seed)
    module = disel.DiselLinear(torch.nn.Linear(8, 6), 3, lora_alpha=6, init_weights=False).eval()
    with torch.no_grad():
        module.disel_gate.weight.normal_()
    return module


def reference(module: disel.DiselLinear, x: torch.Tensor) -> torch.Tensor:
    """The output computed from the parameters as they are now, without any cache."""
    with torch.no_grad():
        return module.base(x) + disel_update_reference(
            x,
            module.disel_A.weight,
            module.disel_B.weight,
            module.disel_gate.weight,
            module.disel_gate.bias,
            module.scaling,
        )


X = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))


def cached_forward(module):
    with torch.no_grad():
        return module(X)


def test_cached_forward_equals_the_uncached_one_and_is_reused():
    """Without autograd the stacked weight is cached (the same tensor object on the next call) and the output
    equals the uncached fused output exactly."""
    module = layer()
    first = cached_forward(module)
    stacked = module._stacked_cache._value[0]
    assert torch.equal(cached_forward(module), first)
    assert module._stacked_cache._value[0] is stacked
    with stacked_weight_cache_enabled(False), torch.no_grad():
        assert torch.equal(module(X), first)
    torch.testing.assert_close(first, reference(module, X))


def _in_place_no_grad(m):
    with torch.no_grad():
        m.disel_gate.weight.add_(0.5)


def _assign_data(m):
    m.disel_A.weight.data = m.disel_A.weight.data * 2


def _new_parameter(m):
    m.disel_gate.bias = torch.nn.Parameter(m.disel_gate.bias.detach() + 1)


def _load_state_dict(m):
    state = {k: v + 0.1 if "disel" in k else v for k, v in m.state_dict().items()}
    m.load_state_dict(state)


def _optimizer_step(m):
    optimizer = torch.optim.SGD(m.parameters(), lr=0.5)
    m(X).square().sum().backward()
    optimizer.step()


def _set_parameters(m):
    m.set_parameters(gate_weight=torch.zeros(3, 8))


def _to_double(m):
    m.double()


@pytest.mark.parametrize(
    "change",
    [_in_place_no_grad, _assign_data, _new_parameter, _load_state_dict, _optimizer_step, _set_parameters, _to_double],
)
def test_every_tracked_parameter_change_rebuilds_the_cache(change):
    """After an in-place write, a .data assignment, a new Parameter, load_state_dict, an optimizer step,
    set_parameters or a dtype cast, the cached forward equals the output from the current parameters."""
    module = layer()
    before = cached_forward(module)
    change(module)
    x = X.to(module.disel_A.weight.dtype)
    with torch.no_grad():
        after = module(x)
    torch.testing.assert_close(after, reference(module, x))
    if change is _to_double:  # same values, new dtype: the cached weight must be the float64 one
        assert after.dtype == module._stacked_cache._value[0].dtype == torch.float64
    else:
        assert not torch.allclose(after, before)


def test_writes_through_param_data_need_clear():
    """In-place writes on ``param.data`` escape PyTorch's version counter (documented): clear() fixes them."""
    module = layer()
    cached_forward(module)
    module.disel_A.weight.data.mul_(3)
    module._stacked_cache.clear()
    torch.testing.assert_close(cached_forward(module), reference(module, X))


def test_training_forward_does_not_use_the_cache():
    """With autograd on, the update differentiates the parameters themselves: the cache stays empty."""
    module = layer().train()
    module(X).sum().backward()
    assert module._stacked_cache._value is None
    assert module.disel_A.weight.grad is not None


def test_copies_and_pickles_start_with_an_empty_cache():
    """deepcopy / torch.save of a layer carry no cached weights (the copy has its own parameters)."""
    module = layer()
    cached_forward(module)
    clone = copy.deepcopy(module)
    assert clone._stacked_cache._value is None
    with torch.no_grad():
        clone.disel_B.weight.mul_(2)
    torch.testing.assert_close(cached_forward(clone), reference(clone, X))
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(cached_forward(loaded), cached_forward(module))
    assert isinstance(pickle.loads(pickle.dumps(StackedWeightCache())), StackedWeightCache)


def test_peft_layers_cache_per_adapter_and_follow_set_adapter():
    """The PEFT layer keeps one cache per adapter; switching adapters and reloading weights give the right output."""
    base = tiny_llama(0, num_hidden_layers=1).train()
    model = get_peft_model(base, disel.DiselConfig(r=2, target_modules=["q_proj", "v_proj"], init_weights=False)).eval()
    model.add_adapter("other", disel.DiselConfig(r=3, target_modules=["q_proj", "v_proj"], init_weights=False))
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(2))

    def logits(cache: bool):
        with stacked_weight_cache_enabled(cache), torch.no_grad():
            return model(ids).logits

    for adapter in ("default", "other", "default"):
        model.set_adapter(adapter)
        assert torch.equal(logits(True), logits(False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "disel_gate.default" in name:
                p.mul_(-1)
    assert torch.equal(logits(True), logits(False))
