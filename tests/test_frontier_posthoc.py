"""Post-hoc arms (disel.experiments.study.transforms) on tiny Llama adapters: what changes, what does not, and that
the result saves and loads with plain peft calls."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.intruders import reduce_intruder_dimension

from disel import DiselConfig
from disel.experiments.study.transforms import apply_transform
from tiny_models import LLAMA_TARGET_MODULES, tiny_llama

VOCAB = 96


def _base() -> torch.nn.Module:
    return tiny_llama(0, vocab_size=VOCAB, max_position_embeddings=64)


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


def _lora(scale: float = 0.5) -> PeftModel:
    """A rank-4 LoRA on all seven projections whose update is large next to the base weights (std .02), so the
    top singular directions of W + ΔW are the update's own: intruders."""
    model = get_peft_model(_base(), LoraConfig(r=4, lora_alpha=8, target_modules=list(LLAMA_TARGET_MODULES)))
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, scale)
    return model.eval()


def _deltas(model: PeftModel) -> dict[str, torch.Tensor]:
    name = model.active_adapter
    return {n: m.get_delta_weight(name) for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _base_weights(model: PeftModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n and "disel_" not in n}


def test_intruder_reduction_is_peft_reduce_intruder_dimension_in_the_original_adapter():
    """The transform gives the same adapter weights as calling peft's function directly, under the original
    adapter name, with no second adapter left; the base weights are bit-identical."""
    model, direct = _lora(), _lora()
    base = _base_weights(model)
    apply_transform("intruder_reduced", model, mitigation_lambda=0.25)
    reduce_intruder_dimension(direct, mitigation_lambda=0.25, logging_sink=None)
    expected = _deltas(direct)  # its active adapter is now "intruder_reduced"
    got = _deltas(model)
    assert list(model.peft_config) == ["default"] and got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name])
    for name, weight in _base_weights(model).items():
        assert torch.equal(weight, base[name]), name


def _intruders(weight: torch.Tensor, delta: torch.Tensor, top_k: int = 10, epsilon: float = 0.5):
    """Singular triplets of W + ΔW among the top_k whose largest |cosine| with W's left singular vectors is
    below epsilon (the paper's intruder dimensions), as (indices, U, S, Vh)."""
    u, s, vh = torch.linalg.svd(weight + delta, full_matrices=False)
    u_base = torch.linalg.svd(weight, full_matrices=False)[0]
    similarity = (u.T @ u_base).abs().max(dim=1).values[:top_k]
    return torch.where(similarity < epsilon)[0], u, s, vh


def test_mitigation_lambda_is_the_fraction_of_each_intruder_direction_kept():
    """λ = 1 keeps every update (up to float error: peft refits ΔW/s at rank r). For λ < 1, along an intruder
    direction (u_i, v_i) of W + ΔW, the new merged weight has u_iᵀ (W + ΔW') v_i = λ s_i (checked where every
    intruder is among the r = 4 largest directions, so the rank-r refit drops none), and the update shrinks."""
    model = _lora()
    original = _deltas(model)
    weights = {n: m.get_base_layer().weight.detach() for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    norms, checked = [], 0
    for mitigation_lambda in (1.0, 0.5, 0.0):
        deltas = _deltas(apply_transform("intruder_reduced", _lora(), mitigation_lambda=mitigation_lambda))
        norms.append(sum(float(d.detach().norm() ** 2) for d in deltas.values()))
        for name, delta in deltas.items():
            if mitigation_lambda == 1.0:
                torch.testing.assert_close(delta, original[name], rtol=1e-4, atol=1e-5)
                continue
            index, u, s, vh = _intruders(weights[name], original[name].detach())
            if len(index) == 0 or index.max() >= 4:
                continue
            kept = torch.stack([u[:, i] @ (weights[name] + delta.detach()) @ vh[i] for i in index]) / s[index]
            torch.testing.assert_close(kept, torch.full_like(kept, mitigation_lambda), atol=0.01, rtol=0)
            checked += 1
    assert checked >= 4  # the check ran on several layers
    assert norms[0] > norms[1] > norms[2]


def test_intruder_reduced_adapter_saves_and_loads_with_plain_peft(tmp_path):
    model = apply_transform("intruder_reduced", _lora(), mitigation_lambda=0.5)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_base(), tmp_path / "adapter").eval()
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


def _disel() -> PeftModel:
    model = get_peft_model(_base(), DiselConfig(r=4, target_modules=list(LLAMA_TARGET_MODULES)))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "disel_" in name:
                p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "make", "params", "message"),
    [
        ("intruder_reduced", _disel, {"mitigation_lambda": 0.5}, "LoRA adapter"),
        ("intruder_reduced", _lora, {"mitigation_lambda": 1.5}, "mitigation_lambda"),
        ("intruder_reduced", _lora, {"mitigation_lambda": 0.5, "top_k": 0}, "top_k"),
        ("merged", _lora, {}, "transform must be one of"),
    ],
)
def test_bad_transforms_are_refused_naming_the_argument(name, make, params, message):
    with pytest.raises(ValueError, match=message):
        apply_transform(name, make(), **params)


def test_the_transform_works_in_place_and_shares_nothing_with_a_copy():
    """The model passed is changed (λ = 0 removes the intruders); a deep copy made before keeps its update."""
    model = _lora()
    before = copy.deepcopy(model)
    apply_transform("intruder_reduced", model, mitigation_lambda=0.0)
    untouched = _deltas(_lora())
    for name, kept in _deltas(before).items():
        torch.testing.assert_close(kept, untouched[name])
    assert any(not torch.allclose(a, b) for a, b in zip(_deltas(before).values(), _deltas(model).values()))


def test_intruder_layers_are_those_peft_flags_and_the_model_is_unchanged():
    """On a large random update every layer holds intruders (its own directions dominate W + ΔW), as the paper's
    definition computed by hand says; on a zero update none does. The model keeps one adapter, its weights."""
    from disel.experiments.study.transforms import intruder_layers

    model = _lora()
    before = _deltas(model)
    found = intruder_layers(model, threshold_epsilon=0.5)
    expected = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            count = len(_intruders(layer.get_base_layer().weight, before[name])[0])
            if count:
                expected[name] = count
    assert found == expected and len(found) > 10  # most of the 14 projections
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    for name, delta in _deltas(model).items():
        assert torch.equal(delta, before[name]), name
    quiet = _lora(scale=0.0)
    assert intruder_layers(quiet, threshold_epsilon=0.5) == {}
