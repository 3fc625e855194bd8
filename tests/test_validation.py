"""Bad inputs at every DISeL entry point, and saved adapters that do not match their config.

One validation (disel/_validate.py) serves ``DiselLinear``, ``DiselConfig``, a config changed after
construction when PEFT applies it, and ``DiselLinear.set_parameters``; each table below feeds the same
kinds of bad values to one entry point and checks that the error names the argument, the value and what
was expected. The loading tests save a tiny adapter, damage its ``adapter_config.json`` or weights file,
and check that loading refuses instead of silently dropping weights or filling in defaults.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaForCausalLM

import tiny_models
from disel._validate import ArgumentTypeError
from disel.layers import DiselLinear
from disel.tuner import DiselConfig, DiselLayer

NAN, INF = float("nan"), float("inf")
TYPE, VALUE = TypeError, ValueError

# (argument, bad value, expected exception type). A value of the wrong type raises ArgumentTypeError
# (a TypeError that is also a ValueError); a value of the right type out of range raises a plain ValueError.
# The names are DiselLinear's; the config calls the dropout "lora_dropout".
HYPERPARAMETER_CASES = [
    ("r", 0, VALUE),
    ("r", -2, VALUE),
    ("r", 2.0, TYPE),
    ("r", True, TYPE),
    ("r", None, TYPE),
    ("r", "4", TYPE),
    ("lora_alpha", NAN, VALUE),
    ("lora_alpha", INF, VALUE),
    ("lora_alpha", -INF, VALUE),
    ("lora_alpha", 0, VALUE),
    ("lora_alpha", -16.0, VALUE),
    ("lora_alpha", "16", TYPE),
    ("lora_alpha", True, TYPE),
    ("dropout", -0.1, VALUE),
    ("dropout", 1.0, VALUE),
    ("dropout", NAN, VALUE),
    ("dropout", "0.1", TYPE),
    ("dropout", None, TYPE),
    ("init_weights", "false", TYPE),
    ("init_weights", 1, TYPE),
    ("init_weights", None, TYPE),
    ("gate_weight_init", "xavier", VALUE),
    ("gate_weight_init", None, TYPE),
    ("gate_weight_init", 0, TYPE),
    ("gate_bias_init", NAN, VALUE),
    ("gate_bias_init", INF, VALUE),
    ("gate_bias_init", -INF, VALUE),
    ("gate_bias_init", "-3", TYPE),
    ("gate_bias_init", None, TYPE),
    ("gate_bias_init", False, TYPE),
]

CONFIG_ONLY_CASES = [
    ("gate_lr_ratio", 0.0, VALUE),
    ("gate_lr_ratio", -5.0, VALUE),
    ("gate_lr_ratio", NAN, VALUE),
    ("gate_lr_ratio", INF, VALUE),
    ("gate_lr_ratio", "5", TYPE),
    ("gate_lr_ratio", None, TYPE),
]
CONFIG_CASES = [
    ("lora_dropout" if name == "dropout" else name, value, error) for name, value, error in HYPERPARAMETER_CASES
] + CONFIG_ONLY_CASES
# Structural fields whose checks are the config's own (ValueError, naming the field).
CONFIG_STRUCTURE_CASES = [
    ("layers_to_transform", -1),
    ("layers_to_transform", [0, "1"]),
    ("layers_to_transform", 1.5),
    ("layers_to_transform", True),
    ("bias", "lora_only"),
    ("bias", None),
]


def _case_id(case) -> str:
    return f"{case[0]}={case[1]!r}"


def assert_names_argument(error: BaseException, owner: str, name: str, value) -> None:
    """The message says which argument, which value, and that something else was expected."""
    message = str(error)
    assert f"{owner}.{name} must be" in message, message
    assert f"{name}={value!r}" in message, message


def assert_error_type(error: BaseException, expected: type[BaseException]) -> None:
    assert isinstance(error, ValueError), f"every bad argument is a ValueError, got {type(error).__name__}"
    if expected is TypeError:
        assert isinstance(error, TypeError) and isinstance(error, ArgumentTypeError)
    else:
        assert not isinstance(error, TypeError), f"an out-of-range value is not a TypeError: {error}"


# --------------------------------------------------------------------------------------------- DiselLinear


@pytest.mark.parametrize("case", HYPERPARAMETER_CASES, ids=_case_id)
def test_disel_linear_refuses_bad_hyperparameters(case):
    name, value, error_type = case
    kwargs = {"r": 2, name: value}
    r = kwargs.pop("r")
    with pytest.raises(ValueError) as caught:
        DiselLinear(nn.Linear(4, 3), r, **kwargs)
    assert_error_type(caught.value, error_type)
    assert_names_argument(caught.value, "DiselLinear", name, value)


def test_disel_linear_accepts_numpy_scalars_and_no_alpha():
    """NumPy numbers are numbers; lora_alpha=None means scaling 1 (only the standalone layer allows it)."""
    layer = DiselLinear(nn.Linear(4, 3), np.int64(2), lora_alpha=np.float32(6.0), gate_bias_init=np.float64(-2.0))
    assert layer.r == 2 and type(layer.r) is int and layer.scaling == pytest.approx(3.0)
    assert torch.all(layer.disel_gate.bias == -2.0)
    assert DiselLinear(nn.Linear(4, 3), 2, lora_alpha=None).scaling == 1.0


# ----------------------------------------------------------------------------------------- set_parameters

SET_PARAMETERS_CASES = [
    # (argument, value, exception type, regex the message must match)
    ("lora_A", "abc", TYPE, r"lora_A must be a real-valued tensor of shape \(2, 5\), got str"),
    ("lora_B", object(), TYPE, r"lora_B must be a real-valued tensor of shape \(3, 2\), got object"),
    ("gate_weight", torch.ones(2, 5, dtype=torch.bool), TYPE, r"gate_weight must be .*got dtype torch\.bool"),
    ("gate_bias", torch.ones(2, dtype=torch.complex64), TYPE, r"gate_bias must be .*got dtype torch\.complex64"),
    ("lora_A", torch.full((2, 5), NAN), VALUE, r"lora_A must be finite, got 10 NaN or infinite value\(s\) of 10"),
    ("lora_B", torch.tensor([[0.0, 1.0], [INF, 0.0], [0.0, 0.0]]), VALUE, r"lora_B must be finite, got 1 NaN"),
    ("gate_bias", [0.0, -INF], VALUE, r"gate_bias must be finite, got 1 NaN"),
    ("gate_weight", torch.zeros(5, 2), VALUE, r"gate_weight must have shape \(2, 5\), got \(5, 2\)"),
    ("gate_bias", 0.5, VALUE, r"gate_bias must have shape \(2,\), got \(\)"),
]


@pytest.mark.parametrize("case", SET_PARAMETERS_CASES, ids=lambda case: f"{case[0]}-{case[3][:30]}")
def test_set_parameters_refuses_bad_values_and_copies_nothing(case):
    name, value, error_type, pattern = case
    layer = DiselLinear(nn.Linear(5, 3), 2)
    before = {key: p.detach().clone() for key, p in layer.named_parameters()}
    good = {"lora_A": torch.ones(2, 5), "gate_bias": torch.ones(2)}
    good.pop(name, None)
    with pytest.raises(ValueError, match=pattern) as caught:
        layer.set_parameters(**good, **{name: value})  # a good argument next to the bad one is not copied either
    assert_error_type(caught.value, error_type)
    assert str(caught.value).startswith("DiselLinear.set_parameters: ")
    for key, p in layer.named_parameters():
        assert torch.equal(p, before[key]), f"{key} changed although set_parameters refused"


def test_set_parameters_accepts_nested_lists_and_integers():
    layer = DiselLinear(nn.Linear(2, 2), 1)
    layer.set_parameters(lora_A=[[1, 2]], gate_bias=np.array([0.5]))
    assert torch.equal(layer.disel_A.weight, torch.tensor([[1.0, 2.0]]))
    assert torch.equal(layer.disel_gate.bias, torch.tensor([0.5]))


# -------------------------------------------------------------------------------------------- DiselConfig


@pytest.mark.parametrize("case", CONFIG_CASES, ids=_case_id)
def test_config_refuses_bad_values(case):
    name, value, error_type = case
    with pytest.raises(ValueError) as caught:
        DiselConfig(**{name: value})
    assert_error_type(caught.value, error_type)
    assert_names_argument(caught.value, "DiselConfig", name, value)


@pytest.mark.parametrize("case", CONFIG_STRUCTURE_CASES, ids=_case_id)
def test_config_refuses_bad_structure(case):
    name, value = case
    kwargs = {"target_modules": ["q_proj"], name: value}
    with pytest.raises(ValueError) as caught:
        DiselConfig(**kwargs)
    assert_names_argument(caught.value, "DiselConfig", name, value)


def test_config_stores_numpy_values_as_plain_numbers(tmp_path):
    """NumPy scalars are accepted and stored as Python numbers, so adapter_config.json can be written."""
    config = DiselConfig(r=np.int64(4), lora_alpha=np.float64(8.0), gate_lr_ratio=np.float32(2.0))
    assert type(config.r) is int and type(config.lora_alpha) is float and type(config.gate_lr_ratio) is float
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["lora_alpha"] == 8.0 and saved["gate_lr_ratio"] == 2.0


# ------------------------------------------------------------------------- a config changed after construction


class TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 5)
        self.second = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


@pytest.mark.parametrize("case", CONFIG_CASES, ids=_case_id)
def test_config_mutated_after_construction_is_refused_by_get_peft_model(case):
    """``config.r = 0`` set after construction used to divide by zero; now get_peft_model refuses it, naming
    the field, before any layer is replaced."""
    name, value, error_type = case
    config = DiselConfig(r=2, target_modules=["first", "second"])
    setattr(config, name, value)
    model = TwoLinears()
    with pytest.raises(ValueError) as caught:
        get_peft_model(model, config)
    assert_error_type(caught.value, error_type)
    assert_names_argument(caught.value, "DiselConfig", name, value)
    assert not any(isinstance(m, DiselLayer) for m in model.modules()), "a layer was adapted before the refusal"


def test_config_mutated_before_add_adapter_is_refused():
    """A second adapter added from a changed config is checked too, and the first adapter is left alone."""
    peft_model = get_peft_model(TwoLinears(), DiselConfig(r=2, target_modules=["first", "second"]))
    second = DiselConfig(r=2, target_modules=["first"])
    second.lora_alpha = NAN
    with pytest.raises(ValueError) as caught:
        peft_model.add_adapter("second", second)
    assert_names_argument(caught.value, "DiselConfig", "lora_alpha", NAN)
    layer = peft_model.base_model.model.first
    assert list(layer.disel_A) == ["default"]


@pytest.mark.parametrize(
    "case", [("r", 0, VALUE), ("lora_alpha", -1.0, VALUE), ("gate_bias_init", INF, VALUE)], ids=_case_id
)
def test_update_layer_checks_the_config_it_is_given(case):
    """The PEFT layer's own entry point (update_layer, used to add an adapter to an adapted layer) checks too."""
    name, value, error_type = case
    peft_model = get_peft_model(TwoLinears(), DiselConfig(r=2, target_modules=["first"]))
    layer = peft_model.base_model.model.first
    config = DiselConfig(r=2)
    setattr(config, name, value)
    with pytest.raises(error_type) as caught:
        layer.update_layer("other", config)
    assert_names_argument(caught.value, "DiselConfig", name, value)
    assert "other" not in layer.disel_A and "other" not in layer.r


def test_update_layer_refuses_a_foreign_config():
    peft_model = get_peft_model(TwoLinears(), DiselConfig(r=2, target_modules=["first"]))
    with pytest.raises(TypeError, match="built from a DiselConfig, got config=dict"):
        peft_model.base_model.model.first.update_layer("other", {"r": 2})


# ------------------------------------------------------------------------------------- saved adapters


TARGETS = ["q_proj", "k_proj", "v_proj"]


def tiny_llama() -> LlamaForCausalLM:
    return tiny_models.tiny_llama(0)


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory) -> Path:
    """A tiny Llama adapter on q, k, v (not LoRA's default q, v), with non-default alpha and random B."""
    adapter_dir = tmp_path_factory.mktemp("adapter")
    config = DiselConfig(r=2, lora_alpha=7.0, target_modules=TARGETS, init_weights=False)
    get_peft_model(tiny_llama(), config).save_pretrained(adapter_dir)
    return adapter_dir


def edited_copy(source: Path, destination: Path, *, config_edit=None, weights_edit=None) -> Path:
    destination.mkdir()
    saved_config = json.loads((source / "adapter_config.json").read_text())
    weights = load_file(source / "adapter_model.safetensors")
    if config_edit is not None:
        config_edit(saved_config)
    if weights_edit is not None:
        weights_edit(weights)
    (destination / "adapter_config.json").write_text(json.dumps(saved_config))
    save_file(weights, destination / "adapter_model.safetensors")
    return destination


def _load_next_to_another_adapter(path: Path) -> tuple[PeftModel, str]:
    model = get_peft_model(tiny_llama(), DiselConfig(r=2, target_modules=TARGETS))
    model.load_adapter(path, "loaded")
    return model, "loaded"


# Each loads the adapter at a path and returns (PEFT model, name of the loaded adapter).
LOADERS = {
    "from_pretrained": lambda path: (PeftModel.from_pretrained(tiny_llama(), path), "default"),
    "from_pretrained_low_cpu_mem": lambda path: (
        PeftModel.from_pretrained(tiny_llama(), path, low_cpu_mem_usage=True),
        "default",
    ),
    "load_adapter": _load_next_to_another_adapter,
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_an_unedited_adapter_loads_exactly(saved_adapter, loader):
    """Positive control for the checks below: the saved adapter reloads with every weight in place."""
    saved = load_file(saved_adapter / "adapter_model.safetensors")
    model, name = LOADERS[loader](saved_adapter)
    state = {k: v for k, v in model.state_dict().items() if f".{name}." in k and ".disel_" in k}
    assert len(state) == len(saved) == 2 * len(TARGETS) * 4  # 2 layers x 3 targets x (A, B, W_g, b_g)
    assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling[name] == 3.5  # lora_alpha 7 / r 2
    for key, value in saved.items():
        model_key = re.sub(r"(disel_\w+)\.", rf"\1.{name}.", key)
        assert torch.equal(state[model_key], value), key


@pytest.mark.parametrize("field", ["lora_alpha", "r", "target_modules"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_saved_config_missing_a_field_that_changes_the_math_is_refused(saved_adapter, tmp_path, field, loader):
    """Without lora_alpha the scaling would silently become 16 / r; without target_modules LoRA's default
    (q, v) would silently drop the k_proj weights. Each is an error naming the field."""
    path = edited_copy(saved_adapter, tmp_path / "edited", config_edit=lambda c: c.pop(field))
    with pytest.raises(ValueError, match=rf"saved DISeL adapter config lacks '{field}'"):
        LOADERS[loader](path)


def test_a_saved_config_missing_only_optional_fields_still_loads(saved_adapter, tmp_path):
    """Fields that do not change the loaded adapter's output (the gate learning-rate ratio, init options) may be
    absent, e.g. in a file written before they existed."""

    def drop_optional(saved_config):
        for name in ("gate_lr_ratio", "gate_bias_init", "gate_weight_init", "lora_dropout", "exclude_modules"):
            saved_config.pop(name)

    path = edited_copy(saved_adapter, tmp_path / "edited", config_edit=drop_optional)
    model = PeftModel.from_pretrained(tiny_llama(), path)
    reference = PeftModel.from_pretrained(tiny_llama(), saved_adapter)
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_saved_weights_for_layers_the_config_does_not_adapt_are_an_error(saved_adapter, tmp_path, loader):
    """target_modules edited to q, v: the saved k_proj tensors would be dropped; the error names them."""
    path = edited_copy(
        saved_adapter, tmp_path / "edited", config_edit=lambda c: c.update(target_modules=["q_proj", "v_proj"])
    )
    with pytest.raises(
        ValueError, match=r"would drop 8 saved tensor\(s\).*layers\.0\.self_attn\.k_proj\.disel_A\.weight"
    ):
        LOADERS[loader](path)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_stray_saved_disel_tensor_is_an_error_naming_it(saved_adapter, tmp_path, loader):
    stray = "base_model.model.model.layers.1.mlp.up_proj.disel_gate.bias"
    path = edited_copy(saved_adapter, tmp_path / "edited", weights_edit=lambda w: w.update({stray: torch.zeros(2)}))
    with pytest.raises(ValueError, match=rf"would drop 1 saved tensor\(s\).*{re.escape(stray)}"):
        LOADERS[loader](path)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_config_adapting_more_layers_than_saved_is_an_error(saved_adapter, tmp_path, loader):
    """target_modules edited to add o_proj: its DISeL parameters would keep a random initialisation."""
    path = edited_copy(
        saved_adapter, tmp_path / "edited", config_edit=lambda c: c.update(target_modules=TARGETS + ["o_proj"])
    )
    with pytest.raises(ValueError, match=r"would leave 8 DISeL parameter\(s\).*o_proj\.disel_"):
        LOADERS[loader](path)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_tensor_missing_from_the_weights_file_is_an_error(saved_adapter, tmp_path, loader):
    removed = "base_model.model.model.layers.1.self_attn.v_proj.disel_B.weight"
    path = edited_copy(saved_adapter, tmp_path / "edited", weights_edit=lambda w: w.pop(removed))
    with pytest.raises(
        ValueError, match=r"would leave 1 DISeL parameter\(s\).*layers\.1\.self_attn\.v_proj\.disel_B\.\w+\.weight"
    ):
        LOADERS[loader](path)


def test_a_saved_config_with_a_bad_value_is_refused_naming_it(saved_adapter, tmp_path):
    path = edited_copy(saved_adapter, tmp_path / "edited", config_edit=lambda c: c.update(lora_alpha=-7.0))
    with pytest.raises(ValueError) as caught:
        PeftModel.from_pretrained(tiny_llama(), path)
    assert_names_argument(caught.value, "DiselConfig", "lora_alpha", -7.0)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_stray_saved_tensor_of_any_kind_is_an_error_naming_it(saved_adapter, tmp_path, loader):
    """Not only disel_* tensors: a saved tensor for a module the model does not have is refused too."""
    stray = "base_model.model.model.layers.0.self_attn.rotary.bias"
    path = edited_copy(saved_adapter, tmp_path / "edited", weights_edit=lambda w: w.update({stray: torch.zeros(2)}))
    with pytest.raises(ValueError, match=rf"would drop 1 saved tensor\(s\).*{re.escape(stray)}"):
        LOADERS[loader](path)


def test_an_edited_rank_is_a_size_mismatch_naming_the_tensor(saved_adapter, tmp_path):
    path = edited_copy(saved_adapter, tmp_path / "edited", config_edit=lambda c: c.update(r=4))
    with pytest.raises(RuntimeError, match=r"size mismatch for base_model\.model\.model\.layers\.0\..*disel_"):
        PeftModel.from_pretrained(tiny_llama(), path)


def test_saved_base_biases_land_even_without_the_bias_field(tmp_path):
    """bias="all" saves the base layers' biases; a config without "bias" still loads them (nothing dropped)."""

    def biased_llama() -> LlamaForCausalLM:
        return tiny_models.tiny_llama(0, num_hidden_layers=1, attention_bias=True)

    model = get_peft_model(biased_llama(), DiselConfig(r=2, target_modules=["q_proj"], bias="all"))
    with torch.no_grad():
        model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.bias.fill_(5.0)
        model.base_model.model.model.layers[0].self_attn.k_proj.bias.fill_(-2.0)
    model.save_pretrained(tmp_path / "saved")
    path = edited_copy(tmp_path / "saved", tmp_path / "edited", config_edit=lambda c: c.pop("bias"))
    attention = PeftModel.from_pretrained(biased_llama(), path).base_model.model.model.layers[0].self_attn
    assert torch.all(attention.q_proj.base_layer.bias == 5.0) and torch.all(attention.k_proj.bias == -2.0)
