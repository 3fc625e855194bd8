"""Tests of disel.optim: the parameter groups (two learning rates, no decay on gates) and DiselTrainer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import tiny_models
from disel.layers import DiselGate, DiselLinear
from disel.optim import DEFAULT_GATE_LR_RATIO, param_groups

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Toy(nn.Module):
    """Embedding (frozen) → DiselLinear → LayerNorm → trainable head, plus a gate hidden under an odd name."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.embed.requires_grad_(False)
        self.adapted = DiselLinear(nn.Linear(6, 6), 2)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)
        self.oddly_named = DiselGate(6, 2)  # a gate whose name does not say "gate"
        self.disel_gate_lookalike = nn.Linear(6, 2)  # a name that says "gate" on a non-gate

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(self.norm(self.adapted(h))) + self.oddly_named(h).sum(-1, keepdim=True)


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def _by_name(groups) -> dict[str, dict]:
    return {group["name"]: group for group in groups}


def test_groups_split_gates_decay_and_no_decay():
    """Gates (found by type) → "gate" at 5 × lr without decay; ≥ 2-D → "decay"; 1-D and norm params →
    "no_decay"; frozen parameters nowhere; every trainable parameter exactly once."""
    model = _Toy()
    groups = _by_name(param_groups(model, lr=1e-3, weight_decay=0.1))
    assert set(groups) == {"decay", "no_decay", "gate"}
    gate_params = [
        model.adapted.disel_gate.weight,
        model.adapted.disel_gate.bias,
        model.oddly_named.weight,
        model.oddly_named.bias,
    ]
    assert _ids(groups["gate"]["params"]) == _ids(gate_params)
    assert groups["gate"]["lr"] == pytest.approx(1e-3 * DEFAULT_GATE_LR_RATIO) and groups["gate"]["weight_decay"] == 0.0
    assert _ids(groups["decay"]["params"]) == _ids(
        [
            model.adapted.disel_A.weight,
            model.adapted.disel_B.weight,
            model.head.weight,
            model.disel_gate_lookalike.weight,
        ]
    )
    assert groups["decay"]["weight_decay"] == 0.1 and groups["decay"]["lr"] == 1e-3
    assert _ids(groups["no_decay"]["params"]) == _ids(
        [model.norm.weight, model.norm.bias, model.head.bias, model.disel_gate_lookalike.bias]
    )
    assert groups["no_decay"]["weight_decay"] == 0.0
    listed = [p for group in groups.values() for p in group["params"]]
    assert len(listed) == len(_ids(listed)), "a parameter appears twice"
    assert _ids(listed) == _ids(p for p in model.parameters() if p.requires_grad)


def test_norm_module_weights_get_no_decay_even_if_2d():
    """Parameters of normalisation modules never decay, whatever their shape (GroupNorm / LayerNorm
    over a 2-D normalized_shape has a 2-D weight)."""
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm((2, 3)))
    groups = _by_name(param_groups(model, lr=1e-3, weight_decay=0.1))
    assert _ids(groups["no_decay"]["params"]) >= _ids(model[1].parameters())
    assert _ids(groups["decay"]["params"]) == {id(model[0].weight)}


def test_tied_parameters_listed_once():
    """A parameter shared by two modules appears once (torch optimizers refuse duplicates)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    groups = param_groups(model, lr=1e-3)
    listed = [p for group in groups for p in group["params"]]
    assert len(listed) == len(_ids(listed)) == 3


def test_empty_groups_dropped_and_adamw_accepts_groups():
    """Only non-empty groups are returned; torch AdamW takes them (the "name" key included) and steps."""
    model = DiselLinear(nn.Linear(4, 4, bias=False), 2, init_weights=False)
    groups = param_groups(model, lr=1e-2)
    assert [group["name"] for group in groups] == ["decay", "gate"]
    optimizer = torch.optim.AdamW(groups)
    before = model.disel_gate.weight.detach().clone()
    model(torch.randn(3, 4)).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model.disel_gate.weight)
    assert [group["name"] for group in optimizer.param_groups] == ["decay", "gate"]


def test_explicit_gate_lr_and_ratio():
    """gate_lr sets the gate learning rate directly; gate_lr_ratio multiplies lr."""
    model = DiselLinear(nn.Linear(4, 4), 2)
    assert _by_name(param_groups(model, lr=2e-4, gate_lr=1e-3))["gate"]["lr"] == 1e-3
    assert _by_name(param_groups(model, lr=2e-4, gate_lr_ratio=2.5))["gate"]["lr"] == pytest.approx(5e-4)


def test_gate_lr_ratio_read_from_peft_config_by_duck_typing():
    """A model with ``peft_config`` entries carrying gate_lr_ratio sets the default ratio; an explicit
    ratio wins; configs without the attribute (e.g. LoRA) leave the default 5."""
    model = DiselLinear(nn.Linear(4, 4), 2)
    model.peft_config = {"default": SimpleNamespace(gate_lr_ratio=10.0), "lora": SimpleNamespace(r=8)}
    assert _by_name(param_groups(model, lr=1e-4))["gate"]["lr"] == pytest.approx(1e-3)
    assert _by_name(param_groups(model, lr=1e-4, gate_lr_ratio=3.0))["gate"]["lr"] == pytest.approx(3e-4)
    model.peft_config = {"lora": SimpleNamespace(r=8)}
    assert _by_name(param_groups(model, lr=1e-4))["gate"]["lr"] == pytest.approx(1e-4 * DEFAULT_GATE_LR_RATIO)


def test_disagreeing_peft_configs_need_an_explicit_gate_lr():
    """Two adapters with different gate_lr_ratio cannot share one optimizer silently."""
    model = DiselLinear(nn.Linear(4, 4), 2)
    model.peft_config = {"a": SimpleNamespace(gate_lr_ratio=2.0), "b": SimpleNamespace(gate_lr_ratio=3.0)}
    with pytest.raises(ValueError, match="different gate_lr_ratio"):
        param_groups(model, lr=1e-4)
    assert _by_name(param_groups(model, lr=1e-4, gate_lr=1e-3))["gate"]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"lr": 0.0}, "lr must be a positive"),
        ({"lr": -1e-3}, "lr must be a positive"),
        ({"lr": math.nan}, "lr must be a positive"),
        ({"lr": math.inf}, "lr must be a positive"),
        ({"lr": "1e-3"}, "lr must be a positive"),
        ({"lr": True}, "lr must be a positive"),
        ({"lr": 1e-3, "gate_lr": 0.0}, "gate_lr must be a positive"),
        ({"lr": 1e-3, "gate_lr_ratio": -2.0}, "gate_lr_ratio must be a positive"),
        ({"lr": 1e-3, "gate_lr": 1e-3, "gate_lr_ratio": 5.0}, "either gate_lr or gate_lr_ratio"),
        ({"lr": 1e-3, "weight_decay": -0.1}, "weight_decay must be"),
        ({"lr": 1e-3, "weight_decay": math.nan}, "weight_decay must be"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, pattern):
    """Invalid learning rates, ratios and weight decays raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=pattern):
        param_groups(DiselLinear(nn.Linear(4, 4), 2), **kwargs)


def test_no_trainable_parameters_is_an_error():
    """A fully frozen model has nothing to optimise: say so instead of returning an empty list."""
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(nn.Linear(3, 3).requires_grad_(False), lr=1e-3)


# --- DiselTrainer ------------------------------------------------------------------------------------


def _tiny_llama():
    return tiny_models.tiny_llama(0, hidden_size=64, intermediate_size=128, vocab_size=128, max_position_embeddings=64)


def _swap_in_disel(model: nn.Module, r: int = 4) -> nn.Module:
    """Freeze the model and replace every q,k,v,o,gate,up,down nn.Linear by a DiselLinear around it."""
    model.requires_grad_(False)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if child_name in LLAMA_TARGETS and isinstance(child, nn.Linear):
                setattr(module, child_name, DiselLinear(child, r, lora_alpha=2 * r))
    return model


class _TokenDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 8, seq: int = 16) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 128, (n, seq), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _training_args(tmp_path, **overrides):
    from transformers import TrainingArguments

    settings = dict(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.1,
        adam_beta1=0.8,
        adam_beta2=0.95,
        adam_epsilon=1e-6,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def _record_lrs(trainer):
    """Attach a callback that stores each group's learning rate at the start of every step."""
    from transformers import TrainerCallback

    trainer.recorded_lrs = []

    class RecordLrs(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            trainer.recorded_lrs.append({g["name"]: g["lr"] for g in trainer.optimizer.param_groups})

    trainer.add_callback(RecordLrs())
    return trainer


def _gate_params(model):
    return [p for m in model.modules() if isinstance(m, DiselGate) for p in m.parameters()]


def _check_trained_optimizer(trainer, model, lr, gate_lr, weight_decay, before):
    groups = _by_name(trainer.optimizer.param_groups)
    # Only A, B (2-D) and the gates train: no 1-D trainable parameter outside the gates, so no "no_decay".
    assert set(groups) == {"decay", "gate"}
    # The scheduler rescales "lr" each step; "initial_lr" keeps what the optimizer was built with.
    assert groups["decay"]["initial_lr"] == pytest.approx(lr)
    assert groups["gate"]["initial_lr"] == pytest.approx(gate_lr)
    # The (linear, decaying) schedule multiplies both groups alike: the ratio holds at every step.
    assert len(trainer.recorded_lrs) == trainer.args.max_steps
    for step_lrs in trainer.recorded_lrs:
        assert step_lrs["gate"] / step_lrs["decay"] == pytest.approx(gate_lr / lr)
    assert groups["gate"]["weight_decay"] == 0.0
    assert groups["decay"]["weight_decay"] == weight_decay
    assert groups["decay"]["betas"] == (0.8, 0.95) and groups["decay"]["eps"] == 1e-6
    unwrapped = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps the optimizer
    assert isinstance(unwrapped, torch.optim.AdamW)
    assert _ids(groups["gate"]["params"]) == _ids(_gate_params(model))
    after = {name: p.detach() for name, p in model.named_parameters()}
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable, f"frozen changed: {changed - trainable}; trainable unchanged: {trainable - changed}"
    assert any(".disel_gate." in name for name in changed)


@pytest.mark.slow
def test_disel_trainer_trains_disel_linear_model_with_two_learning_rates(tmp_path):
    """Trainer.train() on a tiny Llama with DiselLinear swapped in: AdamW groups carry lr and 5 × lr for the
    gates (TrainingArguments' betas/eps/weight decay honoured, gates undecayed), and the gates train.

    (B = 0 at init makes the first gate gradient exactly 0; from step 2 on, B ≠ 0 and the gates move.)"""
    from disel.optim import DiselTrainer

    model = _swap_in_disel(_tiny_llama())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = _record_lrs(DiselTrainer(model=model, args=_training_args(tmp_path), train_dataset=_TokenDataset()))
    trainer.train()
    _check_trained_optimizer(trainer, model, 1e-3, 5e-3, 0.1, before)


@pytest.mark.slow
def test_disel_trainer_gate_lr_ratio_argument(tmp_path):
    """DiselTrainer(gate_lr_ratio=...) sets the gate learning rate relative to args.learning_rate."""
    from disel.optim import DiselTrainer

    model = _swap_in_disel(_tiny_llama())
    trainer = DiselTrainer(
        model=model, args=_training_args(tmp_path, max_steps=1), train_dataset=_TokenDataset(), gate_lr_ratio=2.0
    )
    trainer.create_optimizer()
    assert _by_name(trainer.optimizer.param_groups)["gate"]["lr"] == pytest.approx(2e-3)


def test_disel_trainer_rejects_both_gate_arguments(tmp_path):
    """gate_lr and gate_lr_ratio together are ambiguous: refused before any training starts."""
    from disel.optim import DiselTrainer

    with pytest.raises(ValueError, match="either gate_lr or gate_lr_ratio"):
        DiselTrainer(
            model=_swap_in_disel(_tiny_llama()), args=_training_args(tmp_path), gate_lr=1e-3, gate_lr_ratio=2.0
        )


def test_disel_trainer_keeps_a_given_optimizer(tmp_path):
    """An optimizer passed as optimizers=(optimizer, None) is used as given."""
    from disel.optim import DiselTrainer

    model = _swap_in_disel(_tiny_llama())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    trainer = DiselTrainer(model=model, args=_training_args(tmp_path), optimizers=(optimizer, None))
    assert trainer.create_optimizer() is optimizer


def _peft_disel_config():
    tuner = pytest.importorskip("disel.tuner", reason="the PEFT integration (disel.tuner) is not available")
    return tuner.DiselConfig


@pytest.mark.slow
def test_disel_trainer_trains_peft_model_with_config_gate_lr_ratio(tmp_path):
    """With a PEFT DISeL model the gate learning rate defaults to lr × the config's gate_lr_ratio; the gates
    (DiselGate modules inside PEFT's ModuleDicts) train and nothing frozen moves."""
    DiselConfig = _peft_disel_config()
    from peft import get_peft_model

    from disel.optim import DiselTrainer

    model = get_peft_model(
        _tiny_llama(), DiselConfig(r=4, lora_alpha=8, target_modules=list(LLAMA_TARGETS), gate_lr_ratio=4.0)
    )
    assert len(_gate_params(model)) == 2 * 2 * len(LLAMA_TARGETS)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = _record_lrs(DiselTrainer(model=model, args=_training_args(tmp_path), train_dataset=_TokenDataset()))
    trainer.train()
    _check_trained_optimizer(trainer, model, 1e-3, 4e-3, 0.1, before)
