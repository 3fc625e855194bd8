"""Task branches (disel.continual, issue 18): exact no-op on adding, frozen earlier branches, reload, groups."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft_fresh_process_load import load_in_fresh_process
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import disel
from disel import DiselConfig, DiselLinear
from disel.tuner.layer import DiselLayer
from tests.tiny_models import tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]
VOCAB = 64


def token_ids(seed: int = 1, batch: int = 2, length: int = 6) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def train_steps(model, steps: int = 3, weight_decay: float = 0.1, lr: float = 1e-2) -> torch.optim.Optimizer:
    """AdamW over disel.param_groups (with weight decay), a few steps on a language-modelling loss."""
    optimizer = torch.optim.AdamW(disel.param_groups(model, lr=lr, weight_decay=weight_decay))
    ids = token_ids(batch=4, length=8)
    model.train()
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), optimizer


def branched_model(config: DiselConfig | None = None):
    """A tiny Llama with a trained DISeL adapter (B ≠ 0), ready for a branch to be added."""
    config = config or DiselConfig(r=4, lora_alpha=8, target_modules=TARGETS, gate_bias_init=-1.0)
    model = get_peft_model(tiny_llama(), config)
    train_steps(model)
    return model


def frozen_buffers(model) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if ".disel_frozen." in n}


def logits(model, ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(token_ids() if ids is None else ids).logits


def test_adding_a_branch_changes_no_output_bit():
    """Adding a branch is an exact no-op (its B = 0, and each earlier branch is the same disel_update call)."""
    model = branched_model()
    before = logits(model)
    with model.disable_adapter():
        assert not torch.equal(logits(model), before)  # the trained adapter changes the output
    disel.add_task_branch(model, r=2)
    assert torch.equal(logits(model), before)
    train_steps(model)
    second = logits(model)
    assert not torch.equal(second, before)  # the new branch trained
    model.add_task_branch(r=3, lora_alpha=6.0)  # the tuner method, reached through PeftModel
    assert torch.equal(logits(model), second)
    assert disel.task_branch_ranks(model)["model.layers.0.self_attn.q_proj"] == [4, 2, 3]


def test_adding_a_branch_to_disel_linear_changes_no_output_bit():
    """DiselLinear: the same exactness; its trainable parameters are the new branch's only."""
    torch.manual_seed(0)
    layer = DiselLinear(torch.nn.Linear(6, 5), r=3, lora_alpha=6, init_weights=False)
    x = torch.randn(7, 6)
    before = layer(x).detach()
    disel.add_task_branch(layer, r=2)
    assert torch.equal(layer(x).detach(), before)
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"disel_A.weight", "disel_B.weight", "disel_gate.weight", "disel_gate.bias"}
    assert layer.disel_B.weight.abs().sum() == 0 and layer.gates(x).shape == (7, 5)
    assert disel.task_branch_ranks(layer) == {"": [3, 2]}


def test_training_moves_only_the_new_branch():
    """After AdamW steps with weight decay, the earlier branch is bit-identical and the new one has moved;
    PEFT's set_adapter and requires_grad_(True) cannot make a frozen branch trainable."""
    model = branched_model()
    disel.add_task_branch(model)
    frozen = frozen_buffers(model)
    assert len(frozen) == 4 * 2 * len(TARGETS)  # A, B, W_g, b_g per layer, 2 layers
    new = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.requires_grad_(True)  # buffers have no requires_grad to switch on
    model.get_base_model().requires_grad_(False)
    model.set_adapter("default")  # PEFT re-enables requires_grad on the adapter's (trainable) modules
    _, optimizer = train_steps(model, weight_decay=0.5)
    for name, value in frozen_buffers(model).items():
        assert torch.equal(value, frozen[name]), name
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, new[n])]
    assert moved and all(".disel_" in n for n in moved)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(b) for b in model.buffers()}


def test_param_groups_and_disel_trainer_hold_only_the_new_branch(tmp_path):
    """disel.param_groups and DiselTrainer's optimizer hold exactly the new branch's A, B (decay) and gate."""
    from transformers import TrainingArguments

    model = branched_model()
    disel.add_task_branch(model, r=2)
    expected = {}
    for layer in (m for m in model.modules() if isinstance(m, DiselLayer)):
        expected[id(layer.disel_A["default"].weight)] = "decay"
        expected[id(layer.disel_B["default"].weight)] = "decay"
        expected[id(layer.disel_gate["default"].weight)] = "gate"
        expected[id(layer.disel_gate["default"].bias)] = "gate"
    groups = disel.param_groups(model, lr=1e-3, weight_decay=0.1)
    assert {id(p): g["name"] for g in groups for p in g["params"]} == expected
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, report_to=[], use_cpu=True)
    trainer = disel.DiselTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    assert {id(p): g["name"] for g in optimizer.param_groups for p in g["params"]} == expected


def test_fresh_process_reload_rebuilds_every_branch(tmp_path):
    """save_pretrained + PeftModel.from_pretrained in a fresh process: the same logits, bit for bit, with a
    per-layer rank_pattern on the first branch; the saved keys keep the disel_ prefix and no adapter name."""
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_llama().save_pretrained(base_dir)
    config = DiselConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS,
        gate_bias_init=-1.0,
        rank_pattern={"^model.layers.0.self_attn.q_proj": 2},
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    train_steps(model)
    disel.add_task_branch(model, r=3)
    train_steps(model)
    model.save_pretrained(adapter_dir)
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.disel_frozen.0.A" in saved
    assert saved["base_model.model.model.layers.0.self_attn.q_proj.disel_frozen.0.A"].shape == (2, 32)
    assert not any(".default." in key for key in saved)
    written = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert [b["r"] for b in written["frozen_branches"]] == [4] and written["r"] == 3
    ids = token_ids()
    expected = logits(model, ids)
    out = load_in_fresh_process(adapter_dir, ids, tmp_path / "fresh")
    assert torch.equal(torch.load(out / "peft_model.pt"), expected)


def test_trainable_reload_trains_only_the_newest_branch(tmp_path):
    """PeftModel.from_pretrained(is_trainable=True) of a branched adapter: same outputs, frozen branches as
    buffers (not parameters), and a missing frozen tensor is refused rather than left at zero."""
    model = branched_model()
    disel.add_task_branch(model, r=2)
    train_steps(model)
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter", is_trainable=True)
    assert torch.equal(logits(reloaded), logits(model))
    trainable = [n for n, p in reloaded.named_parameters() if p.requires_grad]
    assert trainable and not any("disel_frozen" in n for n in trainable)
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    saved.pop(next(k for k in saved if k.endswith("disel_frozen.0.B")))
    from safetensors.torch import save_file

    save_file(saved, tmp_path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="disel_frozen"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path / "adapter")


def test_gate_recording_covers_every_branch_and_component_statistics_the_trainable_one():
    """record_gates records each layer's branches as one gate vector, earliest branch first (the frozen part
    equals σ(W_g x + b_g) of the frozen branch); component_statistics measures the trainable branch only."""
    model = branched_model()
    disel.add_task_branch(model, r=2)
    ids = token_ids()
    path = "model.layers.1.mlp.down_proj"
    layer = model.get_base_model().get_submodule(path)
    inputs = []
    handle = layer.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    with disel.record_gates(model) as recorder:
        logits(model, ids)
    handle.remove()
    stats = next(s for key, s in recorder.stats.items() if key == (1, "down_proj"))
    means = torch.tensor(stats.component_means, dtype=torch.float64)
    assert means.shape == (4 + 2,)
    frozen = layer.frozen_branches("default")[0]
    x = inputs[0].reshape(-1, inputs[0].shape[-1])
    expected = disel.gate_values(x, frozen.gate_weight, frozen.gate_bias).double().mean(0)
    torch.testing.assert_close(means[:4], expected, rtol=1e-6, atol=1e-7)
    statistics = disel.component_statistics(model, [ids])
    assert len(statistics.get(path).gate_mean) == 2


@pytest.mark.parametrize(
    "edit",
    [lambda m, s: disel.prune(m, s, threshold=0.0), lambda m, s: disel.merge_static(m, s, std_threshold=1e9)],
    ids=["prune", "merge_static"],
)
def test_edits_refuse_to_empty_a_layer_that_holds_frozen_branches(edit):
    """Regression: removing every trainable component of a branched PEFT layer deleted the adapter there, and the
    frozen task branches with it. The new branch (B = 0) contributes nothing, so threshold 0 prunes every
    component, and every gate is "static" under std_threshold 1e9: both refused before anything changes."""
    model = branched_model()
    disel.add_task_branch(model, r=2)
    ids = token_ids()
    before, ranks = logits(model, ids), disel.task_branch_ranks(model)
    statistics = disel.component_statistics(model, [ids])
    with pytest.raises(ValueError, match="frozen task branches"):
        edit(model, statistics)
    assert disel.task_branch_ranks(model) == ranks
    assert torch.equal(logits(model, ids), before)


def test_branched_adapters_refuse_merge_and_weighted_combination():
    """Merging and add_weighted_adapter refuse an adapter with frozen task branches, naming why."""
    model = branched_model()
    disel.add_task_branch(model)
    with pytest.raises(NotImplementedError, match="depends on the input"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="frozen task branches"):
        model.add_weighted_adapter(["default"], [1.0], "combined")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, r"add_task_branch.*r must be a positive integer"),
        ({"lora_alpha": -1.0}, r"lora_alpha"),
        ({"adapter_name": "other"}, r"adapter_name='other' is not an adapter"),
    ],
)
def test_add_task_branch_refuses_bad_arguments(kwargs, match):
    """Bad arguments raise ValueError naming the argument, with the model unchanged."""
    model = get_peft_model(tiny_llama(), DiselConfig(r=2, target_modules=TARGETS))
    with pytest.raises(ValueError, match=match):
        disel.add_task_branch(model, **kwargs)
    assert model.peft_config["default"].frozen_branches == []


def test_config_refuses_malformed_frozen_branches():
    """DiselConfig.frozen_branches entries need a positive rank and alpha."""
    with pytest.raises(ValueError, match=r"frozen_branches\[0\]\['r'\]"):
        DiselConfig(frozen_branches=[{"r": 0, "lora_alpha": 1.0}])
    with pytest.raises(ValueError, match="frozen_branches"):
        DiselConfig(frozen_branches=[{"rank": 2}])
