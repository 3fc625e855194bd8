"""QLoRA-style DISeL: adapters on a bitsandbytes 4-bit (NF4) or 8-bit base, on CPU (bitsandbytes >= 0.50
runs its CPU kernels; the install is the ``qlora`` extra, part of ``dev``). The tiny model has no dropout, so
train-mode logits are deterministic."""

from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from peft import get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

import disel  # noqa: E402
from disel.tuner import DiselLinearLayer  # noqa: E402

QUANTIZATIONS = {
    "nf4": (dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32), "Linear4bit"),
    "int8": (dict(load_in_8bit=True), "Linear8bitLt"),
}


@pytest.mark.parametrize("name", sorted(QUANTIZATIONS))
def test_disel_on_a_quantized_base_starts_at_the_base_and_trains(tiny_llama_dir, name):
    kwargs, layer_type = QUANTIZATIONS[name]
    base = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, quantization_config=BitsAndBytesConfig(**kwargs), device_map={"": "cpu"}
    )
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    # Train mode before any no-grad forward: on CPUs with AVX512-BF16, bitsandbytes repacks an eval-mode 4-bit
    # layer's weights for inference at its first no-grad forward, and no gradient flows through it after that.
    base.train()
    ids = torch.randint(3, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base_logits = base(ids).logits

    model = get_peft_model(base, disel.DiselConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapted = [m for m in model.modules() if isinstance(m, DiselLinearLayer)]
    assert len(adapted) == 4  # q_proj and v_proj of both layers
    assert all(type(m.get_base_layer()).__name__ == layer_type for m in adapted)
    assert all(isinstance(m.get_base_layer(), torch.nn.Linear) for m in adapted)  # bnb layers subclass Linear
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base_logits)  # B = 0: exactly the quantized base

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("disel_" in n for n in trainable)
    optimizer = torch.optim.AdamW(disel.param_groups(model, lr=1e-2))
    for _ in range(2):  # B leaves 0 at step 1; A and the gates get gradient from step 2
        loss = model(input_ids=ids, labels=ids).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    current = dict(model.named_parameters())
    unchanged = [n for n, p in trainable.items() if torch.equal(current[n], p)]
    assert unchanged == []
    assert all(torch.equal(current[n], p) for n, p in frozen.items())
