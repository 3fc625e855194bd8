"""Tests of disel.recording: the gate recorder behind the paper's gate histograms (THEORY.md §3)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import tiny_models
from disel.layers import DiselGate, DiselLinear
from disel.recording import (
    GateRecorder,
    GateStats,
    _short_names,
    depth_group,
    module_kind,
    parse_layer_index,
    record_gates,
)


class _Block(nn.Module):
    def __init__(self, d: int, r: int) -> None:
        super().__init__()
        self.self_attn = nn.Module()
        self.self_attn.q_proj = DiselLinear(nn.Linear(d, d), r, init_weights=False, gate_bias_init=0.0)
        self.mlp = nn.Module()
        self.mlp.up_proj = DiselLinear(nn.Linear(d, 2 * d), r, init_weights=False, gate_bias_init=0.5)
        self.mlp.down_proj = nn.Linear(2 * d, d)  # not adapted

    def forward(self, x):
        h = x + torch.tanh(self.self_attn.q_proj(x))
        return h + self.mlp.down_proj(torch.tanh(self.mlp.up_proj(h)))


class _Stack(nn.Module):
    """model.layers.<i>.self_attn.q_proj / model.layers.<i>.mlp.up_proj, like a decoder."""

    def __init__(self, num_layers: int = 3, d: int = 6, r: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(_Block(d, r) for _ in range(num_layers))

    def forward(self, x):
        for block in self.model.layers:
            x = block(x)
        return x


def _capture_inputs(model):
    """Inputs of every DiselLinear in one forward, captured independently of the recorder."""
    inputs, handles = {}, []
    for path, module in model.named_modules():
        if isinstance(module, DiselLinear):

            def keep(module, args, path=path):
                inputs.setdefault(path, []).append(args[0].detach())

            handles.append(module.register_forward_pre_hook(keep))
    return inputs, handles


def _direct_gates(model, x, mask=None):
    """Gate values (tokens, r) of every DiselLinear on input x, computed with DiselLinear.gates."""
    inputs, handles = _capture_inputs(model)
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    modules = dict(model.named_modules())
    out = {}
    for path, xs in inputs.items():
        xin = torch.cat([xi.reshape(-1, xi.shape[-1]) if mask is None else xi[mask] for xi in xs])
        out[path] = modules[path].gates(xin).detach()
    return out


def test_recorded_summaries_equal_gates_computed_directly():
    """Mean, std, per-component means and histogram of each module equal those of σ(W_g x + b_g)
    computed directly on that module's inputs (two batches of different shapes accumulated)."""
    model = _Stack().eval()
    xs = [torch.randn(2, 5, 6), torch.randn(3, 4, 6)]
    expected = {}
    for x in xs:
        for path, g in _direct_gates(model, x).items():
            expected[path] = torch.cat([expected[path], g]) if path in expected else g
    with record_gates(model, bins=10) as rec:
        for x in xs:
            model(x)
    assert len(rec.stats) == len(expected) == 6
    for (layer, name), stats in rec.stats.items():
        (path,) = stats.paths
        g = expected[path].double()
        assert layer == parse_layer_index(path) and path.endswith(name)
        assert stats.count == g.numel() and stats.tokens == g.shape[0] and stats.rank == g.shape[1]
        assert stats.mean == pytest.approx(g.mean().item(), rel=1e-12)
        assert stats.std == pytest.approx(g.std(unbiased=False).item(), rel=1e-9)
        np.testing.assert_allclose(stats.component_means, g.mean(dim=0).numpy(), rtol=1e-12)
        counts, _ = np.histogram(g.numpy(), bins=10, range=(0.0, 1.0))
        assert stats.histogram.tolist() == counts.tolist()


def test_histogram_counts_sum_to_number_of_recorded_values():
    """Σ histogram = count = recorded tokens × r, per module and per group."""
    model = _Stack().eval()
    with record_gates(model, bins=7) as rec:
        model(torch.randn(4, 3, 6))
    for stats in rec.stats.values():
        assert int(stats.histogram.sum()) == int(stats.count) == 4 * 3 * stats.rank
    for group in (rec.by_depth(), rec.by_module(), rec.by_kind()):
        assert sum(int(s.histogram.sum()) for s in group.values()) == sum(int(s.count) for s in rec.stats.values())
        for stats in group.values():
            assert int(stats.histogram.sum()) == int(stats.count)
            assert sum(stats.normalized_histogram()) == pytest.approx(1.0)


def test_token_mask_excludes_tokens():
    """With a token mask only the True tokens are recorded: the summary equals that of the masked tokens'
    gates, and masked-out tokens (here scaled to saturate every gate) leave no trace."""
    model = _Stack(num_layers=1).eval()
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool)
    x[~mask] *= 1e3  # prompt tokens: extreme inputs, gates at 0 or 1
    expected = _direct_gates(model, x, mask)
    with record_gates(model, bins=5) as rec:
        rec.set_token_mask(mask.long())  # 0/1 integers are accepted too
        model(x)
    for stats in rec.stats.values():
        g = expected[stats.paths[0]].double()
        assert stats.tokens == int(mask.sum()) == g.shape[0]
        assert stats.mean == pytest.approx(g.mean().item(), rel=1e-12)


def test_token_mask_can_change_per_batch_and_be_cleared():
    """set_token_mask applies to the following forwards; None records everything again."""
    model = _Stack(num_layers=1).eval()
    with record_gates(model, token_mask=torch.tensor([[True, False, False]])) as rec:
        model(torch.randn(1, 3, 6))
        rec.set_token_mask(torch.ones(2, 4, dtype=torch.bool))
        model(torch.randn(2, 4, 6))
        rec.set_token_mask(None)
        model(torch.randn(5, 6))
    assert {int(s.tokens) for s in rec.stats.values()} == {1 + 8 + 5}


def test_token_mask_of_wrong_shape_is_an_error_naming_the_module():
    """A mask that does not match the layer input's leading shape raises, naming the module and the shapes."""
    model = _Stack(num_layers=1).eval()
    message = r"token_mask has shape \(2, 3\).*model\.layers\.0\.self_attn\.q_proj.*\(2, 5\)"
    with pytest.raises(ValueError, match=message):
        with record_gates(model, token_mask=torch.ones(2, 3, dtype=torch.bool)):
            model(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="token_mask must be bool"):
        record_gates(model, token_mask=torch.ones(2, 3))


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_exist_only_inside_the_context_even_on_exception():
    """Hooks are installed on entry and removed on exit, also when the block raises; outside the
    context nothing is recorded."""
    model = _Stack().eval()
    assert _hook_count(model) == 0
    rec = record_gates(model)
    with rec:
        assert _hook_count(model) == 6 and rec.recording
        model(torch.randn(2, 6))
    assert _hook_count(model) == 0 and not rec.recording
    counts = {k: int(s.count) for k, s in rec.stats.items()}
    model(torch.randn(2, 6))  # after the context: not recorded
    assert {k: int(s.count) for k, s in rec.stats.items()} == counts
    with pytest.raises(RuntimeError, match="boom"):
        with record_gates(model):
            assert _hook_count(model) == 6
            raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_recording_does_not_change_outputs_or_gradients():
    """Outputs (and gradients) with the recorder on are bit-identical to those without it."""
    model = _Stack()
    x = torch.randn(3, 4, 6)
    out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), model.model.layers[0].self_attn.q_proj.disel_gate.weight)
    with record_gates(model) as rec:
        out_rec = model(x)
        (grad_rec,) = torch.autograd.grad(out_rec.sum(), model.model.layers[0].self_attn.q_proj.disel_gate.weight)
    assert torch.equal(out, out_rec) and torch.equal(grad, grad_rec)
    assert not any(s.histogram.requires_grad for s in rec.stats.values())


def test_model_without_gates_is_an_error():
    """Recording a model with no DISeL module is almost certainly a mistake: say so on entry."""
    with pytest.raises(ValueError, match="nothing to record"):
        with record_gates(nn.Linear(3, 3)):
            pass


def test_bad_bins_rejected():
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        GateRecorder(_Stack(), bins=0)


# --- keys, groupings, files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "index"),
    [
        ("base_model.model.model.layers.3.self_attn.q_proj", 3),
        ("transformer.h.11.attn.c_attn", 11),
        ("roberta.encoder.layer.7.attention.output.dense", 7),
        ("blocks.0.mlp.fc1", 0),
        ("lm_head", None),
        ("model.layers.x.q_proj", None),
    ],
)
def test_parse_layer_index(path, index):
    assert parse_layer_index(path) == index


def test_short_names_are_last_component_extended_only_to_disambiguate():
    """Llama → q_proj …; RoBERTa's three "dense" and GPT-2's two "c_proj" get the shortest distinguishing suffix."""
    llama = [f"model.layers.0.self_attn.{n}" for n in ("q_proj", "k_proj")] + ["model.layers.0.mlp.down_proj"]
    assert list(_short_names(llama).values()) == ["q_proj", "k_proj", "down_proj"]
    roberta = [
        f"roberta.encoder.layer.2.{p}"
        for p in ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")
    ]
    assert list(_short_names(roberta).values()) == [
        "query",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    gpt2 = [f"transformer.h.5.{p}" for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert list(_short_names(gpt2).values()) == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]
    seq2seq = ["model.encoder.layers.0.self_attn.q_proj", "model.decoder.layers.0.self_attn.q_proj"]
    assert list(_short_names(seq2seq).values()) == seq2seq  # identical within-layer paths: keep full paths


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("q_proj", "attention"),
        ("k_proj", "attention"),
        ("v_proj", "attention"),
        ("o_proj", "attention"),
        ("gate_proj", "mlp"),
        ("up_proj", "mlp"),
        ("down_proj", "mlp"),
        ("query", "attention"),
        ("key", "attention"),
        ("value", "attention"),
        ("attention.output.dense", "attention"),
        ("intermediate.dense", "mlp"),
        ("output.dense", "mlp"),
        ("c_attn", "attention"),
        ("attn.c_proj", "attention"),
        ("c_fc", "mlp"),
        ("mlp.c_proj", "mlp"),
        ("fc1", "mlp"),
        ("fc2", "mlp"),
        ("model.layers.2.self_attn.q_proj", "attention"),
        ("transformer.h.0.mlp.c_proj", "mlp"),
        ("q_proj/other_adapter", "attention"),
        ("lm_head", "other"),
    ],
)
def test_module_kind_mapping(name, kind):
    """The documented attention / MLP mapping (Llama, RoBERTa, GPT-2, OPT names)."""
    assert module_kind(name) == kind


def test_depth_thirds():
    """⌊3 i / L⌋: 32 layers split 11 / 11 / 10; 4 layers 2 / 1 / 1; out-of-range layers refused."""
    assert [depth_group(i, 32) for i in range(32)].count("early") == 11
    assert [depth_group(i, 32) for i in range(32)].count("late") == 10
    assert [depth_group(i, 4) for i in range(4)] == ["early", "early", "mid", "late"]
    with pytest.raises(ValueError, match="layer must be in"):
        depth_group(4, 4)


def test_groupings_partition_the_modules():
    """by_depth / by_module / by_kind merge per-module summaries: counts add up and group means are the
    count-weighted means of their members."""
    model = _Stack(num_layers=3).eval()
    with record_gates(model) as rec:
        model(torch.randn(2, 4, 6))
    keys = set(rec.stats)
    assert keys == {(i, n) for i in range(3) for n in ("q_proj", "up_proj")}
    depth = rec.by_depth()
    assert list(depth) == ["early", "mid", "late"]
    assert depth["early"].paths == rec.stats[(0, "q_proj")].paths + rec.stats[(0, "up_proj")].paths
    kinds = rec.by_kind()
    assert set(kinds) == {"attention", "mlp"}
    members = [rec.stats[(i, "q_proj")] for i in range(3)]
    expected = sum(s.mean * int(s.count) for s in members) / sum(int(s.count) for s in members)
    assert kinds["attention"].mean == pytest.approx(expected, rel=1e-12)
    assert rec.by_module()["up_proj"].count == sum(int(rec.stats[(i, "up_proj")].count) for i in range(3))
    assert kinds["mlp"].component_means is None  # components of different modules are unrelated


def test_several_active_adapters_recorded_separately():
    """A module reporting several active gates records each adapter under "<name>/<adapter>"."""

    class TwoAdapters(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = DiselGate(4, 2), DiselGate(4, 3)

        def active_gates(self):
            return [("a", self.a), ("b", self.b)]

        def forward(self, x):
            return x

    model = nn.Module()
    model.layers = nn.ModuleList([nn.Module()])
    model.layers[0].q_proj = TwoAdapters()
    with record_gates(model) as rec:
        model.layers[0].q_proj(torch.randn(5, 4))
    assert {k: s.rank for k, s in rec.stats.items()} == {(0, "q_proj/a"): 2, (0, "q_proj/b"): 3}


def test_to_dict_and_atomic_save_json(tmp_path):
    """save_json writes to_dict() as JSON (bins, edges, modules, groupings) and leaves no temporary file."""
    model = _Stack(num_layers=3).eval()
    with record_gates(model, bins=4) as rec:
        model(torch.randn(2, 4, 6))
    path = tmp_path / "gates.json"
    rec.save_json(path)
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(rec.to_dict()))
    assert data["bin_edges"] == [0.0, 0.25, 0.5, 0.75, 1.0] and data["num_layers"] == 3
    assert len(data["modules"]) == 6 and set(data["by_depth"]) == {"early", "mid", "late"}
    module = data["modules"][0]
    assert module["layer"] == 0 and module["module"] == "q_proj"
    assert module["paths"] == ["model.layers.0.self_attn.q_proj"]
    assert sum(module["histogram"]) == module["count"] and math.isfinite(module["mean"])
    assert os.listdir(tmp_path) == ["gates.json"]


def test_empty_stats_are_nan_not_errors():
    """A summary with nothing recorded reports NaN mean/std instead of dividing by zero."""
    stats = GateStats.empty(5, rank=2)
    assert math.isnan(stats.mean) and math.isnan(stats.std) and stats.component_means is None


# --- real models --------------------------------------------------------------------------------------

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _tiny_llama():
    return tiny_models.tiny_llama(
        0, hidden_size=64, num_hidden_layers=3, intermediate_size=128, vocab_size=128, max_position_embeddings=64
    )


def _check_llama_recording(model, prefix):
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, :3] = False  # "prompt" tokens excluded
    with torch.no_grad():
        reference = model(ids).logits
    with record_gates(model, token_mask=mask) as rec, torch.no_grad():
        logits = model(ids).logits
    assert torch.equal(logits, reference)
    assert set(rec.stats) == {(i, n) for i in range(3) for n in LLAMA_TARGETS}
    assert rec.stats[(2, "down_proj")].paths == (f"{prefix}model.layers.2.mlp.down_proj",)
    assert all(int(s.tokens) == 8 for s in rec.stats.values())
    assert set(rec.by_kind()) == {"attention", "mlp"}
    assert [int(s.tokens) for s in rec.by_depth().values()] == [7 * 8] * 3
    # Gates start nearly closed: σ(-3 + W_g x) with small W_g x.
    assert 0.0 < rec.by_depth()["early"].mean < 0.5


def test_tiny_llama_with_disel_linear():
    """On a tiny Llama with DiselLinear swapped into q,k,v,o,gate,up,down: keys (layer, module), masked
    token counts, groupings, unchanged logits."""
    model = _tiny_llama()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in LLAMA_TARGETS:
                setattr(module, name, DiselLinear(child, 4))
    _check_llama_recording(model, prefix="")


def test_tiny_llama_peft_model():
    """The same on the PEFT DISeL model (layers found through their active_gates())."""
    tuner = pytest.importorskip("disel.tuner", reason="the PEFT integration (disel.tuner) is not available")
    from peft import get_peft_model

    model = get_peft_model(_tiny_llama(), tuner.DiselConfig(r=4, target_modules=list(LLAMA_TARGETS)))
    _check_llama_recording(model, prefix="base_model.model.")
    model.disable_adapter_layers()
    with record_gates(model) as rec, torch.no_grad():
        model(torch.randint(0, 128, (1, 4)))
    assert rec.stats == {}  # disabled adapters report no active gates
