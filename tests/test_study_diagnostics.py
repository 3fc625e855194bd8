"""Gate/A anti-alignment (disel.experiments.study.diagnostics) and the evidence stage's per-domain gate means."""

import math

import pytest
import torch
from torch import nn

import disel
from disel.experiments.eval.gates import GateDomain, analyze_gates, mean_gate
from disel.experiments.study.diagnostics import gate_alignment, row_cosines
from disel.tuner.layer import DiselLayer
from tiny_models import CORPUS, make_tiny_causal_lm, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny_disel(r=4):
    from peft import get_peft_model

    model = tiny_llama(0, vocab_size=50, max_position_embeddings=64, pad_token_id=0)
    return get_peft_model(model, disel.DiselConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS))


def _disel_layers(model):
    return [(path, m) for path, m in model.named_modules() if isinstance(m, DiselLayer)]


def test_row_cosines_of_parallel_opposite_and_zero_rows():
    """cos = 1 for a positive multiple, -1 for a negative one, 0 for a zero gate row."""
    a = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    g = torch.tensor([[2.0, 4.0], [-3.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(row_cosines(g, a), torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))


def test_planted_anti_aligned_rows_give_the_planted_fraction():
    """Every gate row set to +A except 3 rows set to -A (plus noise), two in layer 0 and one in layer 1:
    the fraction is 3 / 56 overall and 2 / 28, 1 / 28 per layer."""
    model = _tiny_disel(r=4)
    planted = {(0, "q_proj"): [0, 2], (1, "down_proj"): [3]}
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for path, module in _disel_layers(model):
            A = module.disel_A["default"].weight
            gate = (
                A.clone() + 0.1 * A.norm(dim=1, keepdim=True) * torch.randn(A.shape, generator=gen) / A.shape[1] ** 0.5
            )
            layer = disel.recording.parse_layer_index(path)
            for i in planted.get((layer, path.split(".")[-1]), []):
                gate[i] = -gate[i]
            module.disel_gate["default"].weight.copy_(gate)
    result = gate_alignment(model)
    assert result.components == 2 * 7 * 4
    assert result.fraction == pytest.approx(3 / 56)
    assert result.by_layer == {0: pytest.approx(2 / 28), 1: pytest.approx(1 / 28)}
    assert result.min_cosine < -0.9


def test_kaiming_init_is_rarely_anti_aligned_and_standalone_layers_are_found():
    """Independent random rows in d dimensions have |cos| ~ 1/sqrt(d): almost never below -0.5 at d = 64.
    DiselLinear (no PEFT) is found by type too."""
    torch.manual_seed(0)
    model = nn.Sequential(disel.DiselLinear(nn.Linear(64, 64), r=8), disel.DiselLinear(nn.Linear(64, 32), r=8))
    result = gate_alignment(model)
    assert result.components == 16 and result.fraction == 0.0
    assert result.by_layer == {}  # Sequential paths "0", "1" carry no layer container


def test_no_disel_adapter_is_an_error():
    with pytest.raises(ValueError, match="no DISeL adapter"):
        gate_alignment(nn.Linear(3, 3))


def _tiny_disel_with_tokenizer(tmp_path, r=4):
    """A tiny DISeL Llama that reads text: the evidence stage's gate means come from eval.gates.analyze_gates."""
    from peft import get_peft_model

    from disel.experiments.models import load_model_for_eval

    loaded = load_model_for_eval(make_tiny_causal_lm(tmp_path / "tiny"), device="cpu")
    config = disel.DiselConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS)
    return get_peft_model(loaded.model, config), loaded.tokenizer


def _mean_gates(model, tokenizer, texts_by_domain, batch_size):
    domains = [GateDomain(name, texts=texts) for name, texts in texts_by_domain.items()]
    result = analyze_gates(model, tokenizer, domains, batch_size=batch_size)
    return {name: mean_gate(summary) for name, summary in result["domains"].items()}


def test_gate_means_equal_sigmoid_of_the_bias_when_gate_weights_are_zero(tmp_path):
    """W_g = 0, b_g = 0.7: every gate is σ(0.7) on every domain."""
    model, tokenizer = _tiny_disel_with_tokenizer(tmp_path)
    with torch.no_grad():
        for _, module in _disel_layers(model):
            module.disel_gate["default"].weight.zero_()
            module.disel_gate["default"].bias.fill_(0.7)
    means = _mean_gates(model, tokenizer, {"math": CORPUS[:2], "english": CORPUS[2:4]}, batch_size=2)
    assert set(means) == {"math", "english"}
    for value in means.values():
        assert value == pytest.approx(1 / (1 + math.exp(-0.7)), rel=1e-6)


def test_gate_means_ignore_padding(tmp_path):
    """A padded batch gives the mean of its sequences scored one at a time (pad tokens are not recorded)."""
    model, tokenizer = _tiny_disel_with_tokenizer(tmp_path)
    with torch.no_grad():
        for _, module in _disel_layers(model):
            module.disel_gate["default"].weight.normal_(0, 1.0)
    texts = {"x": ["a b", CORPUS[0], "x = 1 + 2"]}
    padded = _mean_gates(model, tokenizer, texts, batch_size=3)["x"]
    alone = _mean_gates(model, tokenizer, texts, batch_size=1)["x"]
    assert padded == pytest.approx(alone, rel=1e-6)
