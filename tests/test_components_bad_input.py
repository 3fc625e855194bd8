"""Bad input to the component API (issue 19 items 1, 2, 4): empty data and data that do not fit the model are
refused with a ``ValueError`` naming the argument (and the batch), before the model is touched; the two
adapter-directory functions take the same arguments; ``merge_and_unload``'s refusal names the way to a merge."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

import disel
import tiny_models
from disel.tuner import DiselConfig

VOCAB = 96
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _llm() -> PeftModel:
    model = get_peft_model(tiny_models.tiny_llama(0, vocab_size=VOCAB), DiselConfig(r=4, target_modules=TARGETS))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "disel_B" in name:
                p.normal_(0, 0.3)
    return model.eval()


def _mlp() -> nn.Module:
    """A 32-wide standalone model: DiselLinear(32 → 16), ReLU, Linear(16 → 3)."""
    torch.manual_seed(0)
    layer = disel.DiselLinear(nn.Linear(32, 16), 4)
    with torch.no_grad():
        layer.disel_B.weight.normal_(0, 0.3)
    return nn.Sequential(layer, nn.ReLU(), nn.Linear(16, 3)).eval()


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(seed))


def _call(function: str, model: nn.Module, batches) -> None:
    """``function`` of the component API run with ``batches`` (statistics measured on good data first)."""
    if function == "component_statistics":
        disel.component_statistics(model, batches)
        return
    good = [_ids()] if isinstance(model, PeftModel) else [torch.randn(5, 32)]
    stats = disel.component_statistics(model, good, pairwise=function == "align_components")
    if function == "prune":
        disel.prune(model, stats, keep_fraction=0.5, batches=batches)
    elif function == "merge_static":
        disel.merge_static(model, stats, std_threshold=1.0, batches=batches)
    else:
        disel.align_components(model, stats, min_gate_correlation=0.5, batches=batches)


FUNCTIONS = ["component_statistics", "prune", "merge_static", "align_components"]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "empty, message",
    [
        ([], r"^batches holds no batch"),
        (iter([]), r"^batches holds no batch"),
        ({}, r"^batches is an empty dict"),
        ({"math": [_ids()], "code": []}, r"^batches\['code'\] holds no batch"),
    ],
    ids=["list", "generator", "dict", "one-empty-domain"],
)
def test_empty_data_is_refused_naming_the_argument(function, empty, message):
    """Regression (issue 19 item 1): prune(batches=[]) reported an output change "over 0 batches", and
    component_statistics(model, {}) complained about string keys. Every empty source is refused by name."""
    model = _llm()
    with pytest.raises(ValueError, match=message):
        _call(function, model, empty)


def _lm_batches(bad: str) -> list:
    good = {"input_ids": _ids(), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    bad_batch = {
        "vocabulary": {"input_ids": torch.full((2, 7), VOCAB + 4)},
        "float ids": {"input_ids": _ids().float()},
        "mask shape": {"input_ids": _ids(), "attention_mask": torch.ones(2, 5, dtype=torch.long)},
        "device": {"input_ids": torch.zeros(2, 7, dtype=torch.long, device="meta")},
    }[bad]
    return [good, bad_batch]


def _mlp_batches(bad: str) -> list:
    bad_batch = {
        "width": torch.randn(5, 48),
        "dtype": torch.randn(5, 32, dtype=torch.float64),
        "device": torch.zeros(5, 32, device="meta"),
    }[bad]
    return [torch.randn(5, 32), bad_batch]


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "model_kind, bad, expected",
    [
        ("mlp", "width", "expected features of size 32 in the last dimension, got shape (5, 48)"),
        ("mlp", "dtype", "expected dtype torch.float32 (the model's weights), got torch.float64"),
        ("mlp", "device", "expected a tensor on cpu (the model's weights), got meta"),
        ("lm", "vocabulary", f"input_ids: expected token ids in [0, {VOCAB}), got [{VOCAB + 4}, {VOCAB + 4}]"),
        ("lm", "float ids", "input_ids: expected integer token ids, got dtype torch.float32"),
        ("lm", "mask shape", "attention_mask: expected the shape of input_ids (2, 7), got (2, 5)"),
        ("lm", "device", "input_ids: expected a tensor on cpu (the model's embeddings), got meta"),
    ],
)
def test_data_that_does_not_fit_the_model_is_refused_before_it_runs(function, model_kind, bad, expected):
    """Regression (issue 19 item 2): hidden size 48 into a 32-wide model raised torch's "size of tensor a
    (32) must match" from deep inside. Now: ValueError naming the argument, the batch (index 1 here, after a
    good one) and what was expected, and the model's weights are untouched."""
    model = _llm() if model_kind == "lm" else _mlp()
    before = _snapshot(model)
    batches = _lm_batches(bad) if model_kind == "lm" else _mlp_batches(bad)
    with pytest.raises(ValueError) as refused:
        _call(function, model, {"text": batches} if function == "prune" else batches)
    where = "batches['text'], batch 1: " if function == "prune" else "batches, batch 1: "
    assert str(refused.value) == where + expected
    after = _snapshot(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _saved(tmp_path):
    """(base dir, adapter dir, statistics JSON) of a random adapter on a saved tiny Llama."""
    base_dir = tmp_path / "base"
    tiny_models.tiny_llama(0, vocab_size=VOCAB).save_pretrained(base_dir)
    model = _llm()
    with torch.no_grad():  # component 1 of every layer: a constant gate σ(b_1)
        for layer in model.modules():
            if isinstance(layer, disel.tuner.DiselLayer):
                layer.disel_gate["default"].weight[1] = 0.0
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(tmp_path / "adapter")
    disel.component_statistics(model, [_ids()]).save_json(tmp_path / "stats.json")
    return base_dir, tmp_path / "adapter", tmp_path / "stats.json", model


def test_both_adapter_dir_functions_read_the_base_from_the_adapter_config(tmp_path):
    """Consistency (issue 19 item 4): merge_static_adapter_dir, like prune_adapter_dir, loads the base named in
    the adapter config when no base_model is given; the result reloads with the original outputs."""
    _, adapter, stats, model = _saved(tmp_path)
    with torch.no_grad():
        expected = model(_ids()).logits
    report = disel.merge_static_adapter_dir(adapter, tmp_path / "merged", stats, std_threshold=1e-6)
    assert all(folded == [1] for folded in report.merged.values())
    merged_base = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "merged_base")
    reloaded = PeftModel.from_pretrained(merged_base, tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(_ids()).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("function", ["prune_adapter_dir", "merge_static_adapter_dir"])
@pytest.mark.parametrize("mismatch", ["rank", "layers", "adapter name"])
def test_statistics_of_another_adapter_are_refused_before_any_model_loads(tmp_path, monkeypatch, function, mismatch):
    """Statistics whose layers or ranks differ from the saved adapter's are refused by reading the adapter
    file's header, before the base model is loaded (the loader is made to fail to prove it)."""
    _, adapter, stats_path, _ = _saved(tmp_path)
    stats = disel.ComponentStatistics.load_json(stats_path)
    if mismatch == "rank":
        entry = stats.layers[2]
        for name in ("gate_mean", "gate_std", "contribution", "merge_error_bound", "b_norm"):
            setattr(entry, name, getattr(entry, name)[:3])
        expected = f"the statistics cover 3 components of {entry.module!r} but the adapter in"
    elif mismatch == "layers":
        dropped = stats.layers.pop(0)
        expected = f"has 1 layer(s) the statistics do not cover (e.g. {dropped.module!r})"
    else:
        for entry in stats.layers:
            entry.adapter = "other"
        expected = "the statistics hold no layer of adapter 'default' (they name ['other'])"

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the statistics were checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_loading)
    monkeypatch.setattr(PeftModel, "from_pretrained", no_loading)
    keyword = {"keep_fraction": 0.5} if function == "prune_adapter_dir" else {"std_threshold": 1e-3}
    with pytest.raises(ValueError) as refused:
        getattr(disel, function)(adapter, tmp_path / "out", stats, **keyword)
    assert expected in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_merge_and_unload_refusal_names_merge_static():
    """The refusal says why (ΔW depends on x) and where a partial or full merge is: merge_static."""
    model = _llm()
    with pytest.raises(NotImplementedError) as refused:
        model.merge_and_unload()
    message = str(refused.value)
    assert "depends on the input" in message and "disel.merge_static" in message
    assert "once every gate of every layer is folded, merge_and_unload merges completely" in message
