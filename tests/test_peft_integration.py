"""DISeL as a native PEFT method (disel.tuner): config, injection, training, saving, loading, refusals.

Every model is a tiny one built from a config (Llama, GPT-2, RoBERTa); nothing is downloaded.
"""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from peft_fresh_process_load import load_in_fresh_process
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    RobertaForSequenceClassification,
)
from transformers.pytorch_utils import Conv1D

import disel
import tiny_models
from disel.functional import disel_update_reference
from disel.layers import DiselGate
from disel.tuner import DiselConfig, DiselLayer, DiselModel, register_disel

VOCAB = 128
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny_models.tiny_llama(seed, hidden_size=64, intermediate_size=128, vocab_size=VOCAB)


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    return tiny_models.tiny_gpt2(seed, vocab_size=VOCAB)


def tiny_roberta_classifier(seed: int = 0) -> RobertaForSequenceClassification:
    return tiny_models.tiny_roberta_classifier(seed, vocab_size=VOCAB)


def token_ids(seed: int = 1, batch: int = 2, length: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


def disel_layers(model: nn.Module) -> list[DiselLayer]:
    return [m for m in model.modules() if isinstance(m, DiselLayer)]


def adapter_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------- config & registration


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, r"DiselConfig\.r must be a positive integer.*r=0"),
        ({"r": 2.5}, r"DiselConfig\.r must be a positive integer"),
        ({"lora_alpha": -1}, r"DiselConfig\.lora_alpha must be a positive finite number"),
        ({"lora_dropout": 1.0}, r"DiselConfig\.lora_dropout must be a probability in \[0, 1\)"),
        ({"bias": "lora_only"}, r"DiselConfig\.bias must be one of \('none', 'all', 'disel_only'\)"),
        ({"init_weights": "gaussian"}, r"DiselConfig\.init_weights must be True .* or False"),
        ({"gate_weight_init": "xavier"}, r"DiselConfig\.gate_weight_init must be one of \('kaiming', 'zero'\)"),
        ({"gate_bias_init": float("nan")}, r"DiselConfig\.gate_bias_init must be a finite number"),
        ({"gate_lr_ratio": 0.0}, r"DiselConfig\.gate_lr_ratio must be a positive finite number"),
        ({"target_modules": 3}, r"DiselConfig\.target_modules must be None, a list of module names, or a regex"),
        ({"modules_to_save": "classifier"}, r"DiselConfig\.modules_to_save must be None or a list"),
        (
            {"target_modules": r".*q_proj", "layers_to_transform": [0]},
            r"DiselConfig\.layers_to_transform must be None when target_modules is a regex",
        ),
        ({"target_modules": ["q_proj"], "layers_pattern": "layers"}, r"set layers_to_transform too"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, match):
    """A bad DiselConfig value raises ValueError naming the field and what was expected."""
    with pytest.raises(ValueError, match=match):
        DiselConfig(**kwargs)


def test_config_json_round_trip_and_type(tmp_path):
    """adapter_config.json stores peft_type "DISEL"; PeftConfig.from_pretrained gives back an equal DiselConfig."""
    config = DiselConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        gate_bias_init=-7.0,
        gate_weight_init="zero",
        gate_lr_ratio=10.0,
        task_type="CAUSAL_LM",
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "DISEL"
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is DiselConfig
    assert loaded.peft_type == "DISEL" and loaded.peft_type.value == "DISEL"
    fields = ("r", "lora_alpha", "target_modules", "gate_bias_init", "gate_weight_init", "gate_lr_ratio", "task_type")
    for name in fields:
        assert getattr(loaded, name) == getattr(config, name), name
    assert PeftConfig.from_peft_type(peft_type="DISEL", r=3).r == 3


def test_registration_is_idempotent_and_refuses_a_foreign_owner():
    """register_disel() can run any number of times; it refuses to take "DISEL" over from another class."""
    register_disel()
    register_disel()
    assert PEFT_TYPE_TO_CONFIG_MAPPING["DISEL"] is DiselConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["DISEL"] is DiselModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING["DISEL"] == "disel_"
    assert disel.DiselConfig is DiselConfig

    class OtherConfig(DiselConfig):
        pass

    PEFT_TYPE_TO_CONFIG_MAPPING["DISEL"] = OtherConfig
    try:
        with pytest.raises(KeyError, match="already registered"):
            register_disel()
    finally:
        PEFT_TYPE_TO_CONFIG_MAPPING["DISEL"] = DiselConfig


# --------------------------------------------------------------------------------------- injection & forward


def test_injection_counts_and_print_trainable_parameters(capsys):
    """get_peft_model adapts each target with r(d+m) + r·d + r trainable parameters (A, B, W_g, b_g), nothing else."""
    r = 4
    model = tiny_llama()
    shapes = {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in LLAMA_TARGETS
    }
    total_before = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, DiselConfig(r=r, target_modules="all-linear"))
    expected = sum(r * (d + m) + r * d + r for d, m in shapes.values())
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert len(disel_layers(peft_model)) == len(shapes) == 14  # all-linear skips lm_head
    assert trainable == expected and total == total_before + expected
    assert all("disel_" in name for name in adapter_parameters(peft_model))
    peft_model.print_trainable_parameters()
    assert f"trainable params: {expected:,}" in capsys.readouterr().out


def test_default_targets_follow_lora_and_bias_option_trains_adapted_biases():
    """target_modules=None adapts LoRA's defaults (Llama: q_proj, v_proj); bias="disel_only" trains and saves the
    adapted layers' biases (GPT-2 Conv1D) and no others."""
    peft_model = get_peft_model(tiny_llama(), DiselConfig())
    adapted = {name.rsplit(".", 1)[-1] for name, m in peft_model.named_modules() if isinstance(m, DiselLayer)}
    assert adapted == {"q_proj", "v_proj"}

    peft_model = get_peft_model(tiny_gpt2(), DiselConfig(target_modules=["c_attn"], bias="disel_only"))
    biases = {n for n, p in peft_model.named_parameters() if p.requires_grad and "disel_" not in n}
    assert biases == {f"base_model.model.transformer.h.{i}.attn.c_attn.base_layer.bias" for i in range(2)}
    assert biases <= set(get_peft_model_state_dict(peft_model))


def test_init_equals_base_model_exactly():
    """With init_weights=True (B = 0) the adapted model's logits equal the base model's exactly."""
    model = tiny_llama()
    ids = token_ids()
    with torch.no_grad():
        base_logits = model(ids).logits
        peft_model = get_peft_model(model, DiselConfig(r=4, target_modules=LLAMA_TARGETS))
        assert torch.equal(peft_model(ids).logits, base_logits)


@pytest.mark.parametrize("which", ["llama_linear", "gpt2_conv1d"])
def test_layer_computes_the_disel_equation(which):
    """The PEFT layer returns W0 x + s · B diag(σ(W_g x + b_g)) A x (eq. DISeL) for nn.Linear and GPT-2's Conv1D."""
    if which == "llama_linear":
        model, targets, base_type = tiny_llama(), ["q_proj", "down_proj"], nn.Linear
    else:
        model, targets, base_type = tiny_gpt2(), ["c_attn", "c_proj", "c_fc"], Conv1D
    peft_model = get_peft_model(model, DiselConfig(r=3, lora_alpha=6, target_modules=targets, init_weights=False))
    layers = disel_layers(peft_model)
    assert layers and all(isinstance(layer.get_base_layer(), base_type) for layer in layers)
    for layer in layers:
        x = torch.randn(2, 5, layer.in_features)
        A, B = layer.disel_A["default"].weight, layer.disel_B["default"].weight
        gate = layer.disel_gate["default"]
        assert A.shape == (3, layer.in_features) and B.shape == (layer.out_features, 3)
        expected = layer.get_base_layer()(x) + disel_update_reference(x, A, B, gate.weight, gate.bias, 2.0)
        torch.testing.assert_close(layer(x), expected)


def test_active_gates_lists_the_active_adapters_gates():
    """active_gates() returns (adapter, DiselGate) for the active adapters, and nothing while adapters are disabled."""
    peft_model = get_peft_model(tiny_llama(), DiselConfig(r=2, target_modules=["q_proj"]))
    layer = disel_layers(peft_model)[0]
    assert [(name, type(gate)) for name, gate in layer.active_gates()] == [("default", DiselGate)]
    with peft_model.disable_adapter():
        assert layer.active_gates() == []
    assert layer.active_gates()[0][1] is layer.disel_gate["default"]


def test_unsupported_modules_raise_naming_module_and_type():
    """Targeting anything but nn.Linear / Conv1D raises TypeError naming the module and its type."""
    with pytest.raises(TypeError, match=r"'model\.embed_tokens' of type torch\.nn\.modules\.sparse\.Embedding"):
        get_peft_model(tiny_llama(), DiselConfig(target_modules=["embed_tokens"]))

    conv_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(TypeError, match=r"cannot adapt module '0' of type torch\.nn\.modules\.conv\.Conv2d"):
        get_peft_model(conv_net, DiselConfig(target_modules=["0"]))


def test_merge_refuses_because_the_update_depends_on_the_input():
    """merge_and_unload / merge_adapter / layer.merge raise NotImplementedError saying ΔW depends on x."""
    peft_model = get_peft_model(tiny_llama(), DiselConfig(r=2, target_modules=["q_proj"]))
    for merge in (peft_model.merge_and_unload, peft_model.merge_adapter, disel_layers(peft_model)[0].merge):
        with pytest.raises(NotImplementedError, match=r"ΔW\(x\).*depends on the input x"):
            merge()


# --------------------------------------------------------------------------------------- gradients & training


def test_gate_gradients_need_nonzero_B():
    """B = 0 at init: only B gets gradient (the gates cannot learn yet); once B ≠ 0, W_g and b_g get gradient."""
    ids = token_ids()
    for init_weights in (True, False):
        config = DiselConfig(r=4, target_modules=LLAMA_TARGETS, init_weights=init_weights)
        peft_model = get_peft_model(tiny_llama(), config)
        peft_model(ids, labels=ids).loss.backward()
        for layer in disel_layers(peft_model):
            gate, A, B = layer.disel_gate["default"], layer.disel_A["default"], layer.disel_B["default"]
            assert B.weight.grad.abs().sum() > 0
            for p in (gate.weight, gate.bias, A.weight):
                if init_weights:
                    assert torch.count_nonzero(p.grad) == 0
                else:
                    assert p.grad.abs().sum() > 0


def test_training_reduces_the_loss():
    """A few AdamW steps on the adapter (default init) reduce the LM loss on a fixed batch; the base stays frozen."""
    model = tiny_llama()
    base_before = [(p, p.detach().clone()) for p in model.parameters()]
    peft_model = get_peft_model(model, DiselConfig(r=4, target_modules=LLAMA_TARGETS)).train()
    optimizer = torch.optim.AdamW(adapter_parameters(peft_model).values(), lr=1e-2)
    ids = token_ids(batch=4, length=12)
    losses = []
    for _ in range(8):
        loss = peft_model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(not p.requires_grad and torch.equal(p, before) for p, before in base_before)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5 renames gradient_ to activation_checkpointing
@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    """With gradient checkpointing (+ enable_input_require_grads) backward works and the adapter grads match."""
    ids = token_ids()
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
            model.enable_input_require_grads()
        torch.manual_seed(2)
        peft_model = get_peft_model(model, DiselConfig(r=4, target_modules=LLAMA_TARGETS, init_weights=False)).train()
        peft_model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in adapter_parameters(peft_model).items()})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 14 * 4
    for name in grads[0]:
        assert grads[1][name] is not None, name
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast_adapter_dtype", [True, False])
def test_half_precision_base_forward_backward(dtype, autocast_adapter_dtype):
    """On a bf16/fp16 base the adapter runs (fp32 adapters by default, half if asked); init output = base output."""
    model = tiny_llama().to(dtype)
    ids = token_ids()
    with torch.no_grad():
        base_logits = model(ids).logits
    peft_model = get_peft_model(
        model, DiselConfig(r=4, target_modules=LLAMA_TARGETS), autocast_adapter_dtype=autocast_adapter_dtype
    )
    adapter_dtype = torch.float32 if autocast_adapter_dtype else dtype
    assert {p.dtype for p in adapter_parameters(peft_model).values()} == {adapter_dtype}
    logits = peft_model(ids).logits
    assert logits.dtype == dtype
    assert torch.equal(logits, base_logits)
    # B = 0 blocks the gate's gradient; random B makes every adapter parameter receive one.
    with torch.no_grad():
        for layer in disel_layers(peft_model):
            layer.disel_B["default"].weight.normal_(0, 0.02)
    peft_model(ids, labels=ids).loss.float().backward()
    for name, p in adapter_parameters(peft_model).items():
        assert p.grad is not None and p.grad.dtype == adapter_dtype and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_torch_compile_matches_eager():
    """A torch.compile'd PEFT model (default inductor backend) gives the eager forward and gradients."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    peft_model = get_peft_model(net, DiselConfig(r=4, target_modules=["0", "2"], init_weights=False))
    x = torch.randn(4, 16)

    def forward_backward(model):
        for p in model.parameters():
            p.grad = None
        out = model(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in adapter_parameters(peft_model).items()}

    eager_out, eager_grads = forward_backward(peft_model)
    compiled_out, compiled_grads = forward_backward(torch.compile(peft_model))
    torch.testing.assert_close(compiled_out, eager_out)
    assert compiled_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name])


def test_torch_compile_adds_no_graph_breaks():
    """DISeL layers trace into one graph: fullgraph=True compiles forward and backward of the PEFT model."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    peft_model = get_peft_model(net, DiselConfig(r=4, target_modules=["0", "2"], init_weights=False))
    torch._dynamo.reset()
    compiled = torch.compile(peft_model, backend="eager", fullgraph=True)
    compiled(torch.randn(4, 16)).sum().backward()
    assert all(p.grad is not None for p in adapter_parameters(peft_model).values())


# ------------------------------------------------------------------------------- adapters: enable, several, unload


def test_disable_adapter_equals_base():
    """Inside disable_adapter() the model's output is the base model's, exactly."""
    model = tiny_llama()
    ids = token_ids()
    with torch.no_grad():
        base_logits = model(ids).logits
        peft_model = get_peft_model(model, DiselConfig(r=4, target_modules=LLAMA_TARGETS, init_weights=False))
        adapted = peft_model(ids).logits
        assert not torch.allclose(adapted, base_logits)
        with peft_model.disable_adapter():
            assert torch.equal(peft_model(ids).logits, base_logits)
        assert torch.equal(peft_model(ids).logits, adapted)


def test_several_adapters_add_set_delete():
    """add_adapter adds an inactive, frozen adapter; set_adapter switches output and trainability; delete removes it."""
    ids = token_ids()
    peft_model = get_peft_model(tiny_llama(), DiselConfig(r=4, target_modules=LLAMA_TARGETS, init_weights=False))
    with torch.no_grad():
        out_default = peft_model(ids).logits
        peft_model.add_adapter("other", DiselConfig(r=2, target_modules=["q_proj", "v_proj"], init_weights=False))
        assert torch.equal(peft_model(ids).logits, out_default)
        assert all(".default." in n for n in adapter_parameters(peft_model))

        peft_model.set_adapter("other")
        out_other = peft_model(ids).logits
        assert not torch.allclose(out_other, out_default)
        assert adapter_parameters(peft_model) and all(".other." in n for n in adapter_parameters(peft_model))
        q_layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
        assert [name for name, _ in q_layer.active_gates()] == ["other"]
        assert q_layer.disel_gate["other"].out_features == 2

        peft_model.set_adapter("default")
        assert torch.equal(peft_model(ids).logits, out_default)
        peft_model.delete_adapter("other")
        assert list(peft_model.peft_config) == ["default"]
        assert not any(".other." in key for key in peft_model.state_dict())
        assert torch.equal(peft_model(ids).logits, out_default)


def test_unload_returns_the_base_model():
    """unload() removes every DISeL layer and returns a model whose output equals the original base model's."""
    model = tiny_llama()
    ids = token_ids()
    with torch.no_grad():
        base_logits = model(ids).logits
        peft_model = get_peft_model(model, DiselConfig(r=4, target_modules="all-linear", init_weights=False))
        unloaded = peft_model.unload()
        assert isinstance(unloaded, LlamaForCausalLM) and not disel_layers(unloaded)
        assert not any("disel_" in name for name in unloaded.state_dict())
        assert torch.equal(unloaded(ids).logits, base_logits)


# --------------------------------------------------------------------------------------- saving & loading


def _train_a_little(peft_model, ids, steps: int = 2):
    optimizer = torch.optim.AdamW(adapter_parameters(peft_model).values(), lr=1e-2)
    for _ in range(steps):
        loss = peft_model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _saved_adapter(tmp_path: Path, task_type=None):
    """Save a tiny base model locally, adapt it, train a little, save the adapter; return (peft_model, dirs)."""
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_llama().save_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = DiselConfig(r=4, target_modules=LLAMA_TARGETS, gate_bias_init=-1.0, task_type=task_type)
    peft_model = get_peft_model(model, config).train()
    _train_a_little(peft_model, token_ids(batch=4, length=12))
    peft_model.eval().save_pretrained(adapter_dir)
    return peft_model, base_dir, adapter_dir


def test_save_pretrained_writes_safetensors_with_disel_keys(tmp_path):
    """save_pretrained writes adapter_model.safetensors holding A, B, W_g, b_g per layer, without the adapter name."""
    peft_model, base_dir, adapter_dir = _saved_adapter(tmp_path)
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    assert len(saved) == 14 * 4
    suffixes = {".".join(key.split(".")[-2:]) for key in saved}
    assert suffixes == {"disel_A.weight", "disel_B.weight", "disel_gate.weight", "disel_gate.bias"}, suffixes
    assert not any(".default." in key for key in saved)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "DISEL" and config["base_model_name_or_path"] == str(base_dir)
    # get/set_peft_model_state_dict move the adapter into another model (under another adapter name).
    state = get_peft_model_state_dict(peft_model)
    other = get_peft_model(tiny_llama(), DiselConfig(r=4, target_modules=LLAMA_TARGETS), adapter_name="copy")
    result = set_peft_model_state_dict(other, state, adapter_name="copy")
    assert not [key for key in result.missing_keys if "disel_" in key] and not result.unexpected_keys
    ids = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(other(ids).logits, peft_model(ids).logits, rtol=0, atol=0)


def test_reload_in_a_fresh_process_gives_identical_logits(tmp_path):
    """A fresh process that imports disel loads the adapter with PeftModel and AutoPeftModelForCausalLM: same logits."""
    peft_model, _, adapter_dir = _saved_adapter(tmp_path, task_type="CAUSAL_LM")
    ids = token_ids()
    with torch.no_grad():
        expected = peft_model(ids).logits
    # Auto-registration off (tests/test_ecosystem.py covers it): this checks the explicit `import disel` path.
    out = load_in_fresh_process(adapter_dir, ids, tmp_path, DISEL_NO_AUTO_REGISTER="1")
    assert torch.equal(torch.load(out / "peft_model.pt"), expected)
    assert torch.equal(torch.load(out / "auto.pt"), expected)
    # The documented requirement: before `import disel`, PEFT does not know the type.
    assert "KeyError" in (out / "unknown_before_import.txt").read_text()


def test_reload_is_trainable_only_when_asked(tmp_path):
    """PeftModel.from_pretrained reloads the same model (also with low_cpu_mem_usage), frozen by default and
    trainable with is_trainable=True (and then it trains)."""
    peft_model, base_dir, adapter_dir = _saved_adapter(tmp_path)
    n_trainable = peft_model.get_nb_trainable_parameters()[0]
    frozen = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    assert frozen.get_nb_trainable_parameters()[0] == 0
    # low_cpu_mem_usage builds the adapter on the meta device and assigns the saved tensors: same model.
    lazy = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir, low_cpu_mem_usage=True
    )
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(lazy(ids).logits, frozen(ids).logits)
        assert torch.equal(frozen(ids).logits, peft_model(ids).logits)
    trainable = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir, is_trainable=True
    )
    assert trainable.get_nb_trainable_parameters()[0] == n_trainable
    before = {n: p.detach().clone() for n, p in adapter_parameters(trainable).items()}
    _train_a_little(trainable.train(), token_ids(batch=4, length=12), steps=1)
    assert all(not torch.equal(p, before[n]) for n, p in adapter_parameters(trainable).items())


def test_modules_to_save_head_is_saved_and_reloaded(tmp_path):
    """modules_to_save (a RoBERTa classifier head) is trained, saved with the adapter and restored on reload."""
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_roberta_classifier().save_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir)
    config = DiselConfig(
        r=4, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS", init_weights=False
    )
    peft_model = get_peft_model(model, config).train()
    assert any("classifier" in n for n in adapter_parameters(peft_model))
    ids, labels = token_ids(batch=4), torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.AdamW(adapter_parameters(peft_model).values(), lr=1e-2)
    for _ in range(2):
        loss = peft_model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.eval().save_pretrained(adapter_dir)
    assert any("classifier" in key for key in load_file(adapter_dir / "adapter_model.safetensors"))

    fresh_base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    reloaded = PeftModel.from_pretrained(fresh_base, adapter_dir).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        original_head = AutoModelForSequenceClassification.from_pretrained(base_dir)
        assert not torch.allclose(original_head(input_ids=ids).logits, expected)
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
