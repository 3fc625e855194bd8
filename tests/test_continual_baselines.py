"""O-LoRA (peft multi-adapter LoRA + the orthogonality penalty) and peft's OSF run task after task
(disel.experiments.train.continual_baselines), on tiny random Llamas."""

from __future__ import annotations

import copy

import pytest
import torch

from disel.experiments.train.continual_baselines import (
    OLORA_LAMBDA,
    add_task_adapter,
    load_task_adapters,
    olora_trainer_class,
    orthogonality_loss,
    osf_effective_rank,
    start_osf_task,
)
from tiny_models import LLAMA_TARGET_MODULES, tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _lora(seed: int = 0):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _sgd_step(model, ids, lr: float = 0.5, optimizer=torch.optim.SGD) -> None:
    model.train()
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()


def _two_task_olora():
    """A model after task 0 (one SGD step) with task 1's adapter just added; and task 0's logits."""
    model = add_task_adapter(tiny_llama(), _lora())
    _sgd_step(model, _ids(0))
    before = _logits(model, _ids(1))
    model = add_task_adapter(model, _lora())
    return model, before


def test_adding_a_task_adapter_is_a_no_op_and_freezes_the_earlier_one():
    """Claim: a new adapter (B = 0) leaves the outputs unchanged; both adapters are active; only the new one
    requires gradients, and a training step leaves the old one's weights exactly as they were."""
    model, before = _two_task_olora()
    assert torch.equal(_logits(model, _ids(1)), before)
    assert model.base_model.active_adapters == ["task0", "task1"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".task1." in n for n in trainable)
    old = {n: p.detach().clone() for n, p in model.named_parameters() if ".task0." in n}
    _sgd_step(model, _ids(2))
    assert all(torch.equal(p, old[n]) for n, p in model.named_parameters() if ".task0." in n)
    assert not torch.equal(_logits(model, _ids(1)), before)


def test_orthogonality_loss_is_the_sum_of_absolute_entries_of_a_old_a_new_t():
    """Claim: the penalty is Σ_layers |A_old A_newᵀ| summed over entries, computed here layer by layer; planting
    A_new's rows orthogonal to A_old's makes it 0; its gradient reaches only the new adapter."""
    model, _ = _two_task_olora()
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():
        for layer in layers:
            layer.lora_A["task1"].weight.normal_()
    expected = sum((m.lora_A["task0"].weight @ m.lora_A["task1"].weight.T).abs().sum() for m in layers)
    loss = orthogonality_loss(model, "task1", ["task0"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and loss.item() > 0
    loss.backward()
    assert all(m.lora_A["task1"].weight.grad is not None and m.lora_A["task0"].weight.grad is None for m in layers)
    with torch.no_grad():
        for layer in layers:
            basis = torch.eye(layer.lora_A["task0"].weight.shape[1])
            layer.lora_A["task0"].weight.copy_(basis[:4])
            layer.lora_A["task1"].weight.copy_(basis[4:8])
    assert orthogonality_loss(model, "task1", ["task0"]).item() == 0.0
    assert orthogonality_loss(model, "task0", []).item() == 0.0


def test_trainer_loss_adds_lambda_times_the_penalty(tmp_path):
    """Claim: OLoRATrainer.compute_loss = the model's loss + 0.5 · orthogonality_loss(newest, earlier)."""
    from transformers import Trainer, TrainingArguments

    model, _ = _two_task_olora()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = olora_trainer_class()(model=model, args=args)
    ids = _ids(3)
    with torch.no_grad():
        combined = trainer.compute_loss(model, {"input_ids": ids, "labels": ids})
        plain = Trainer.compute_loss(trainer, model, {"input_ids": ids, "labels": ids})
        penalty = orthogonality_loss(model, "task1", ["task0"])
    assert penalty.item() > 0
    assert combined.item() == pytest.approx(plain.item() + OLORA_LAMBDA * penalty.item(), rel=1e-6)


def test_olora_model_saves_and_reloads_with_plain_peft_calls(tmp_path):
    """Claim: ``save_pretrained`` + ``PeftModel.from_pretrained``/``load_adapter`` give back both branches, active,
    with the same outputs."""
    model, _ = _two_task_olora()
    _sgd_step(model, _ids(4))
    expected = _logits(model, _ids(5))
    model.save_pretrained(str(tmp_path))
    reloaded = load_task_adapters(tiny_llama(), str(tmp_path), ["task0", "task1"])
    assert reloaded.base_model.active_adapters == ["task0", "task1"]
    torch.testing.assert_close(_logits(reloaded, _ids(5)), expected)


# ------------------------------------------------------------------------------------------ OSF


def _delta_and_subspaces(model):
    """(ΔW, U_high, V_high) of every OSF layer: the adapter's weight change and the top singular directions of the
    weight it was wrapped around (the protected subspace)."""
    from peft.tuners.osf.layer import OSFLayer

    found = []
    for layer in model.modules():
        if isinstance(layer, OSFLayer):
            k = layer.effective_rank["default"]
            u, _, vt = torch.linalg.svd(layer.get_base_layer().weight.detach().double(), full_matrices=False)
            found.append((layer.get_delta_weight("default").detach().double(), u[:, :k], vt[:k]))
    assert found
    return found


def _leak(model) -> float:
    """Largest relative size of the weight change inside the protected subspace, max ‖U_highᵀΔW‖ / ‖ΔW‖ and
    ‖ΔW V_highᵀ‖ / ‖ΔW‖ over layers."""
    leaks = []
    for delta, u_high, v_high in _delta_and_subspaces(model):
        assert delta.norm() > 0
        leaks += [(u_high.T @ delta).norm() / delta.norm(), (delta @ v_high.T).norm() / delta.norm()]
    return max(leaks).item()


def test_osf_progressive_budget():
    """Task k of n preserves k/n of each matrix's smaller dimension; task 0 the single top direction."""
    assert [osf_effective_rank(k, 4) for k in range(4)] == [1, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="task_index"):
        osf_effective_rank(4, 4)


def test_osf_runs_task_after_task_and_protects_its_subspace():
    """Claim (peft's OSF docs): gradients are projected away from the top singular directions, so an SGD step
    changes W only outside them (U_highᵀΔW = 0 and ΔW V_highᵀ = 0 up to OSF's float32 SVD). Between tasks the trained
    weights are folded in (outputs unchanged by the re-wrap) and the next task preserves more rank."""
    base = tiny_llama().double()  # OSF's SVD itself runs in float32, which bounds the exactness at ~1e-6
    ids = _ids(0)
    model = start_osf_task(copy.deepcopy(base), 0, 3, TARGETS)
    _sgd_step(model, ids)
    assert _leak(model) < 1e-4
    after_task0 = _logits(model, ids)
    assert not torch.allclose(after_task0, _logits(base, ids))
    model = start_osf_task(model, 1, 3, TARGETS)
    torch.testing.assert_close(_logits(model, ids), after_task0, rtol=1e-4, atol=1e-4)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.effective_rank["default"] == int(min(q_proj.get_base_layer().weight.shape) / 3)
    _sgd_step(model, _ids(1))
    assert _leak(model) < 1e-4


def test_osf_guide_unload_would_discard_the_task():
    """peft's guide re-wraps ``model.unload()``; that returns the weights without the task's update (so the glue
    uses ``merge_and_unload``)."""
    base = tiny_llama()
    model = start_osf_task(copy.deepcopy(base), 0, 2, TARGETS)
    _sgd_step(model, _ids(0))
    torch.testing.assert_close(_logits(copy.deepcopy(model).unload(), _ids(0)), _logits(base, _ids(0)))


def test_osf_adam_steps_leave_the_projected_span():
    """Adam rescales each coordinate of the projected gradient, so its step is not confined to the complement
    of the protected subspace: the leak is far above float precision (the caveat in the module docstring)."""
    model = start_osf_task(tiny_llama().double(), 1, 2, TARGETS)
    _sgd_step(model, _ids(0), lr=1e-3, optimizer=torch.optim.AdamW)
    assert _leak(model) > 1e-2


def test_targets_cover_every_llama_projection():
    """The study targets all seven decoder projections; OSF wraps each of them."""
    from peft.tuners.osf.layer import OSFLayer

    model = start_osf_task(tiny_llama(), 0, 2, LLAMA_TARGET_MODULES)
    wrapped = [m for m in model.modules() if isinstance(m, OSFLayer)]
    assert len(wrapped) == 7 * 2


def test_olora_trainer_trains_only_the_new_adapter_and_checkpoints_both(tmp_path):
    """One ``Trainer.train`` step of task 1: task 0's weights are unchanged, task 1's moved, and the checkpoint
    holds both adapters (peft's layout: one sub-folder per adapter)."""
    from transformers import TrainingArguments

    from disel.experiments.data.collator import CausalLMCollator

    model, _ = _two_task_olora()
    old = {n: p.detach().clone() for n, p in model.named_parameters() if ".task0." in n or ".task1." in n}
    ids = _ids(6)
    rows = [{"input_ids": row.tolist(), "labels": row.tolist()} for row in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        max_steps=1,
        learning_rate=1e-2,
        per_device_train_batch_size=2,
        save_steps=1,
        save_strategy="steps",
        lr_scheduler_type="constant",
    )
    trainer = olora_trainer_class()(model=model, args=args, train_dataset=rows, data_collator=CausalLMCollator(0))
    trainer.train()
    changed = {n for n, p in model.named_parameters() if n in old and not torch.equal(p, old[n])}
    assert changed and all(".task1." in n for n in changed)
    checkpoint = tmp_path / "checkpoint-1"
    assert (checkpoint / "task0" / "adapter_model.safetensors").is_file()
    assert (checkpoint / "task1" / "adapter_model.safetensors").is_file()
