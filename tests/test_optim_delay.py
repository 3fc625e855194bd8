"""Gate delay (``DiselConfig.gate_delay_steps``, :func:`disel.optim.delay_gate_updates`): the gates hold still for
the first N optimizer steps and move after them, while every other trainable parameter moves throughout."""

from __future__ import annotations

import pytest
import torch
from test_optim import LLAMA_TARGETS, _tiny_llama, _TokenDataset, _training_args
from torch import nn

from disel.layers import DiselGate, DiselLinear
from disel.optim import delay_gate_updates, param_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        DiselLinear(nn.Linear(6, 5), 2, lora_alpha=4), nn.Tanh(), DiselLinear(nn.Linear(5, 3), 2, lora_alpha=4)
    )
    for layer in model:
        if isinstance(layer, DiselLinear):
            layer.base.requires_grad_(False)
            nn.init.normal_(layer.disel_B.weight, std=0.1)  # B = 0 at init would leave A's gradient zero
    return model


def _split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    gates = [p for m in model.modules() if isinstance(m, DiselGate) for p in m.parameters()]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not g for g in gates)]
    return gates, others


def test_manual_loop_gates_still_during_delay_then_move():
    model = _model()
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2), lr=1e-2)
    scheduler = delay_gate_updates(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), steps=3)
    gates, others = _split(model)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    for step in range(5):
        gates_before = [g.detach().clone() for g in gates]
        others_before = [p.detach().clone() for p in others]
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        gate_moved = any(not torch.equal(a, g) for a, g in zip(gates_before, gates))
        assert gate_moved == (step >= 3), f"step {step}: gates moved={gate_moved}"
        assert all(not torch.equal(a, p) for a, p in zip(others_before, others)), f"step {step}: A/B held still"
    # Adam's moments of the gates were updated during the delay (warm start after it)
    assert all(optimizer.state[g]["step"] == 5 for g in gates)


def test_delay_keeps_the_schedule_after_it_and_zero_is_no_delay():
    model = _model()
    optimizer = torch.optim.SGD(param_groups(model, lr=1.0), lr=1.0)
    gate_index = [g["name"] for g in optimizer.param_groups].index("gate")
    scheduler = delay_gate_updates(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step), steps=2)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[gate_index]["lr"])
        scheduler.step()
    assert lrs == [0.0, 0.0, 5.0 * 0.25, 5.0 * 0.125]  # the default gate lr ratio is 5
    plain = torch.optim.SGD(param_groups(model, lr=1.0), lr=1.0)
    delay_gate_updates(torch.optim.lr_scheduler.LambdaLR(plain, lambda step: 1.0), steps=0)
    assert plain.param_groups[gate_index]["lr"] == 5.0


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_bad_delay_is_refused(steps):
    optimizer = torch.optim.SGD(param_groups(_model(), lr=1.0), lr=1.0)
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        delay_gate_updates(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), steps)


def test_config_field_validated():
    from disel.tuner import DiselConfig

    assert DiselConfig(r=2, target_modules=["q_proj"]).gate_delay_steps == 0
    with pytest.raises(ValueError, match="gate_delay_steps"):
        DiselConfig(r=2, target_modules=["q_proj"], gate_delay_steps=-2)


def test_disel_trainer_reads_the_delay_from_the_peft_config(tmp_path):
    from peft import get_peft_model
    from transformers import TrainerCallback

    from disel.optim import DiselTrainer
    from disel.tuner import DiselConfig

    model = get_peft_model(
        _tiny_llama(), DiselConfig(r=4, lora_alpha=8, target_modules=list(LLAMA_TARGETS), gate_delay_steps=2)
    )
    gates, _ = _split(model)
    moved = []

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.before = [g.detach().clone() for g in gates]

        def on_step_end(self, args, state, control, **kwargs):
            moved.append(any(not torch.equal(a, g) for a, g in zip(self.before, gates)))

    trainer = DiselTrainer(
        model=model,
        args=_training_args(tmp_path, max_steps=4, warmup_steps=0, lr_scheduler_type="constant"),
        train_dataset=_TokenDataset(),
        callbacks=[Watch()],
    )
    trainer.train()
    assert moved == [False, False, True, True]
