"""Per-layer ranks, component statistics, pruning, partial (static) merge and "cat" composition (issue 11,
issue 10 item 4). Each test's docstring names the claim it checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import disel
from disel.tuner import DiselConfig, DiselLayer

VOCAB = 96
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def token_ids(seed: int = 1, batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def disel_layers(model) -> dict[str, DiselLayer]:
    return {n: m for n, m in model.base_model.model.named_modules() if isinstance(m, DiselLayer)}


def random_adapter(seed: int = 0, **config) -> PeftModel:
    """A DISeL model whose every parameter is random (B ≠ 0, gates open somewhere), in eval mode."""
    model = get_peft_model(tiny_llama(), DiselConfig(**{"r": 4, "target_modules": TARGETS, **config}))
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "disel_" in name:
                p.normal_(0, 0.3)
    return model.eval()


# ------------------------------------------------------------------------------------------ rank_pattern


def test_rank_and_alpha_pattern_match_like_lora():
    """rank_pattern / alpha_pattern resolve per module exactly as peft.LoraConfig's do (same keys, same ranks)."""
    from peft import LoraConfig

    patterns = {"rank_pattern": {"q_proj": 2, "^model.layers.1.mlp.down_proj": 7}, "alpha_pattern": {"v_proj": 3.0}}
    dmodel = get_peft_model(tiny_llama(), DiselConfig(r=4, lora_alpha=16, target_modules=TARGETS, **patterns))
    lmodel = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS, **patterns))
    lora = {n: m for n, m in lmodel.base_model.model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    layers = disel_layers(dmodel)
    assert set(layers) == set(lora)
    for name, layer in layers.items():
        assert layer.r["default"] == lora[name].r["default"], name
        assert layer.scaling["default"] == pytest.approx(lora[name].scaling["default"]), name
        assert layer.disel_A["default"].weight.shape[0] == layer.r["default"]
    assert layers["model.layers.1.mlp.down_proj"].r["default"] == 7
    assert layers["model.layers.0.self_attn.v_proj"].scaling["default"] == pytest.approx(3.0 / 4)


@pytest.mark.parametrize(
    "patterns, message",
    [
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
        ({"rank_pattern": {"q_proj": 2.5}}, "rank_pattern"),
        ({"alpha_pattern": {"q_proj": float("nan")}}, "alpha_pattern"),
        ({"alpha_pattern": {"q_proj": -1}}, "alpha_pattern"),
        ({"rank_pattern": ["q_proj"]}, "rank_pattern"),
    ],
)
def test_bad_patterns_are_refused_naming_the_field(patterns, message):
    """A rank or alpha pattern that is not a positive number per key is refused, naming the field."""
    with pytest.raises(ValueError, match=message):
        DiselConfig(r=4, **patterns)


def _fresh_process_logits(tmp_path: Path, adapter_dir: Path) -> torch.Tensor:
    """Load ``adapter_dir`` with PeftModel.from_pretrained in a new Python process; return its logits."""
    ids = token_ids()
    torch.save(ids, tmp_path / "ids.pt")
    out = tmp_path / "fresh"
    out.mkdir()
    script = Path(__file__).with_name("peft_fresh_process_load.py")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(script), str(adapter_dir), str(tmp_path / "ids.pt"), str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "peft_model.pt")


def test_rank_pattern_round_trips_in_a_fresh_process(tmp_path):
    """An adapter with per-layer ranks saves with plain save_pretrained and reloads with plain
    PeftModel.from_pretrained in a fresh process: same ranks (else the weights would not load) and same logits."""
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_llama().save_pretrained(base_dir)
    model = random_adapter(rank_pattern={"q_proj": 2, "^model.layers.1.mlp.down_proj": 6}, alpha_pattern={"k_proj": 2})
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(adapter_dir)
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == {"q_proj": 2, "^model.layers.1.mlp.down_proj": 6}
    with torch.no_grad():
        expected = model(token_ids()).logits
    assert torch.equal(_fresh_process_logits(tmp_path, adapter_dir), expected)
