"""Per-layer ranks, component statistics, pruning, partial (static) merge and "cat" composition (issue 11,
issue 10 item 4). Each test's docstring names the claim it checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft_fresh_process_load import load_in_fresh_process
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import disel
import tiny_models
from disel.tuner import DiselConfig, DiselLayer

VOCAB = 96
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny_models.tiny_llama(seed, vocab_size=VOCAB, max_position_embeddings=64)


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
    return torch.load(load_in_fresh_process(adapter_dir, token_ids(), tmp_path / "fresh") / "peft_model.pt")


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


# ------------------------------------------------------------------------------------------ statistics


def _standalone(seed: int = 0, d: int = 6, m: int = 5, r: int = 4) -> disel.DiselLinear:
    torch.manual_seed(seed)
    layer = disel.DiselLinear(torch.nn.Linear(d, m), r, lora_alpha=2 * r, init_weights=False).double()
    with torch.no_grad():
        layer.disel_gate.weight.normal_(0, 0.5)
    return layer.eval()


def test_statistics_match_their_definitions():
    """gate mean/std, contribution s·E[g_i|a_iᵀx|]·‖b_i‖ and the merge bound s‖b_i‖·sd_i·sqrt(E[(a_iᵀx)²]) equal
    direct computations; per-domain entries are each domain's own, and the pooled entry pools the tokens."""
    layer = _standalone()
    torch.manual_seed(3)
    math_batches = [torch.randn(5, 6, dtype=torch.float64) for _ in range(3)]
    prose_batches = [torch.randn(4, 2, 6, dtype=torch.float64) + 1.0]
    stats = disel.component_statistics(layer, {"math": math_batches, "prose": prose_batches})

    def direct(xs):
        x = torch.cat([b.reshape(-1, 6) for b in xs])
        g = layer.gates(x)
        ax = x @ layer.disel_A.weight.T
        b_norm = layer.disel_B.weight.norm(dim=0)
        s = layer.scaling
        return (
            x.shape[0],
            g.mean(0),
            g.std(0, unbiased=False),
            s * (g * ax.abs()).mean(0) * b_norm,
            (s * b_norm * g.std(0, unbiased=False) * ax.pow(2).mean(0).sqrt()),
        )

    for domain, xs in (("math", math_batches), ("prose", prose_batches), (None, math_batches + prose_batches)):
        entry = stats.get("", "default", domain)
        n, mean, std, contribution, bound = direct(xs)
        assert entry.tokens == n
        torch.testing.assert_close(torch.tensor(entry.gate_mean, dtype=torch.float64), mean)
        torch.testing.assert_close(torch.tensor(entry.gate_std, dtype=torch.float64), std)
        torch.testing.assert_close(torch.tensor(entry.contribution, dtype=torch.float64), contribution)
        torch.testing.assert_close(torch.tensor(entry.merge_error_bound, dtype=torch.float64), bound)
    assert disel.ComponentStatistics.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_statistics_count_only_masked_tokens():
    """With dict batches, positions where attention_mask = 0 are left out of the statistics."""
    model = random_adapter()
    ids = token_ids(batch=2, length=6)
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    full = disel.component_statistics(model, [{"input_ids": ids, "attention_mask": mask}])
    assert full.layers[0].tokens == int(mask.sum())


# ------------------------------------------------------------------------------------------ prune


def _zero_b(model, picks: dict[str, list[int]]) -> None:
    layers = disel_layers(model)
    with torch.no_grad():
        for path, components in picks.items():
            layers[path].disel_B["default"].weight[:, components] = 0


def test_prune_removes_exactly_the_zero_b_components_and_keeps_outputs(tmp_path):
    """Components with b_i = 0 contribute exactly 0 (c_i = 0): prune(threshold=0) removes exactly those, a
    layer left with none loses its adapter, the output does not move, and plain save_pretrained +
    PeftModel.from_pretrained (in a fresh process) rebuild the pruned model with the same logits."""
    model = random_adapter()
    picks = {
        "model.layers.0.self_attn.q_proj": [1, 3],
        "model.layers.1.mlp.up_proj": [0],
        "model.layers.1.self_attn.k_proj": [0, 1, 2, 3],
    }
    _zero_b(model, picks)
    ids = token_ids()
    with torch.no_grad():
        before = model(ids).logits
    stats = disel.component_statistics(model, [ids])
    report = disel.prune(model, stats, threshold=0.0, batches=[ids])
    layers = disel_layers(model)
    for path, layer in layers.items():
        expected = [i for i in range(4) if i not in picks.get(path, [])]
        assert report.kept[path] == expected
        if expected:
            assert layer.r["default"] == len(expected) and layer.disel_A["default"].weight.shape[0] == len(expected)
        else:
            assert "default" not in layer.disel_A
    assert report.removed_layers == ["model.layers.1.self_attn.k_proj"]
    # Each component holds an A row (d), a gate row and bias (d + 1) and a B column (m).
    assert report.parameters_before - report.parameters_after == sum(
        len(v) * (2 * 32 + 1 + layers[k].out_features) for k, v in picks.items()
    )
    assert report.output_change.max_abs < 1e-5
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    base_dir, adapter_dir = tmp_path / "base", tmp_path / "pruned"
    tiny_llama().save_pretrained(base_dir)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(adapter_dir)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    # The emptied layer is excluded on reload: not wrapped at all.
    assert {p: layer.r["default"] for p, layer in disel_layers(reloaded).items()} == {
        p: layer.r["default"] for p, layer in layers.items() if "default" in layer.r
    }
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, after, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_fresh_process_logits(tmp_path, adapter_dir), after, rtol=1e-6, atol=1e-6)


def test_prune_removes_components_with_shut_gates_exactly():
    """A gate at σ(−200) = 0 in float32 makes c_i = 0 even with b_i ≠ 0: pruning it leaves the output unchanged."""
    model = random_adapter()
    layer = disel_layers(model)["model.layers.0.mlp.down_proj"]
    with torch.no_grad():
        layer.disel_gate["default"].weight[2] = 0
        layer.disel_gate["default"].bias[2] = -200.0
    ids = token_ids()
    with torch.no_grad():
        before = model(ids).logits
    stats = disel.component_statistics(model, [ids])
    assert stats.get("model.layers.0.mlp.down_proj").contribution[2] == 0.0
    report = disel.prune(model, stats, threshold=0.0)
    assert report.kept["model.layers.0.mlp.down_proj"] == [0, 1, 3]
    assert sum(report.rank_after.values()) == 14 * 4 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-6)


def test_keep_fraction_keeps_the_largest_contributions_over_all_layers():
    """keep_fraction keeps ceil(f · N) components, the largest contributions over all layers together."""
    model = random_adapter()
    ids = token_ids()
    stats = disel.component_statistics(model, [ids])
    everything = sorted((c for e in stats.layers for c in e.contribution), reverse=True)
    report = disel.prune(model, stats, keep_fraction=0.25)
    kept = [stats.get(path).contribution[i] for path, idx in report.kept.items() for i in idx]
    assert len(kept) == 14
    assert sorted(kept, reverse=True) == everything[:14]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one"),
        ({"threshold": 0.1, "keep_fraction": 0.5}, "exactly one"),
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"keep_fraction": 0.0}, "keep_fraction"),
        ({"keep_fraction": 1.5}, "keep_fraction"),
    ],
)
def test_prune_refuses_bad_criteria(kwargs, message):
    """prune needs exactly one valid criterion, and names the argument when it is wrong."""
    model = random_adapter()
    stats = disel.component_statistics(model, [token_ids()])
    with pytest.raises(ValueError, match=message):
        disel.prune(model, stats, **kwargs)


def test_stale_statistics_are_refused():
    """Statistics computed before a prune no longer match the layers' ranks: refused with the fix named."""
    model = random_adapter()
    stats = disel.component_statistics(model, [token_ids()])
    disel.prune(model, stats, keep_fraction=0.5)
    with pytest.raises(ValueError, match="recompute component_statistics"):
        disel.prune(model, stats, keep_fraction=0.5)


# ------------------------------------------------------------------------------------------ merge_static


def _constant_gates(model, picks: dict[str, list[int]]) -> None:
    """Set W_g rows to 0 (each picked gate is the constant σ(b_g,i) whatever the input)."""
    layers = disel_layers(model)
    with torch.no_grad():
        for path, components in picks.items():
            layers[path].disel_gate["default"].weight[components] = 0


def test_merge_static_folds_exactly_the_constant_gates_and_undoes_exactly():
    """Components whose W_g row is 0 have a constant gate (std 0): merge_static folds exactly those into W0,
    the output is unchanged to float precision, the measured error is at float precision, and unmerge_static
    restores base weights, adapter parameters, config and outputs bit for bit."""
    model = random_adapter()
    picks = {"model.layers.0.self_attn.v_proj": [0, 2], "model.layers.1.mlp.gate_proj": [0, 1, 2, 3]}
    _constant_gates(model, picks)
    ids = token_ids()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    config_before = model.peft_config["default"].to_dict()
    with torch.no_grad():
        before = model(ids).logits
    stats = disel.component_statistics(model, {"a": [ids], "b": [token_ids(seed=5)]})
    report = disel.merge_static(model, stats, std_threshold=1e-6, batches=[ids])
    for path in disel_layers(model):
        assert report.merged[path] == picks.get(path, [])
        assert report.remaining_rank[path] == 4 - len(picks.get(path, []))
    assert "default" not in disel_layers(model)["model.layers.1.mlp.gate_proj"].disel_A
    assert report.output_change.relative_rms < 1e-6 and not report.fully_static
    with torch.no_grad():
        merged = model(ids).logits
    torch.testing.assert_close(merged, before, rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError, match="depends on the input"):
        model.merge_and_unload()

    assert disel.unmerge_static(model) == 2
    after = model.state_dict()
    assert after.keys() == state_before.keys()
    assert all(torch.equal(after[k], state_before[k]) for k in after)
    assert model.peft_config["default"].to_dict() == config_before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_fully_static_adapter_merges_completely():
    """When every gate is constant, merge_static folds everything and merge_and_unload gives a plain model
    with the same output (to float precision)."""
    model = random_adapter()
    _constant_gates(model, {path: [0, 1, 2, 3] for path in disel_layers(model)})
    ids = token_ids()
    with torch.no_grad():
        before = model(ids).logits
    report = disel.merge_static(model, disel.component_statistics(model, [ids]), std_threshold=1e-6)
    assert report.fully_static
    plain = model.merge_and_unload()
    assert not any(isinstance(m, DiselLayer) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, before, rtol=1e-5, atol=1e-5)


def test_merge_static_measured_error_is_within_the_bound_for_varying_gates():
    """Folding input-dependent gates changes the output; the measured single-layer change is positive and the
    error bound Σ e_i of a lone adapted layer bounds its mean output change (Cauchy–Schwarz)."""
    layer = _standalone(seed=2)
    torch.manual_seed(4)
    xs = [torch.randn(64, 6, dtype=torch.float64)]
    stats = disel.component_statistics(layer, xs)
    with torch.no_grad():
        y0 = layer(xs[0])
    report = disel.merge_static(layer, stats, std_threshold=1.0)  # every gate counts as static
    assert report.merged[""] == [0, 1, 2, 3] and layer.r == 0
    with torch.no_grad():
        change = (layer(xs[0]) - y0).norm(dim=-1).mean()
    assert 0 < float(change) <= report.error_bound[""] * (1 + 1e-9)
    disel.unmerge_static(layer)
    with torch.no_grad():
        assert torch.equal(layer(xs[0]), y0)


# ------------------------------------------------------------------------------------------ add_weighted_adapter


def test_cat_combination_is_exactly_the_weighted_sum_of_gated_updates(tmp_path):
    """add_weighted_adapter(..., "cat") stacks components with their gates: on random inputs, every layer's
    combined update equals Σ_k w_k · update_k(x) (different ranks, scalings and target sets), the new adapter
    is frozen and inactive, and it saves and reloads with plain PEFT calls."""
    model = random_adapter(r=3, lora_alpha=5)
    model.add_adapter(
        "other",
        DiselConfig(
            r=2, lora_alpha=7, target_modules=["q_proj", "down_proj"], init_weights=False, rank_pattern={"down_proj": 5}
        ),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".other" in name:
                p.normal_(0, 0.4)
    weights = [0.7, -1.3]
    model.add_weighted_adapter(["default", "other"], weights, "combo", combination_type="cat")
    assert model.active_adapters == ["default"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".combo" in n)
    generator = torch.Generator().manual_seed(7)
    from disel.components.branches import find_branches

    branches = {(b.path, b.adapter): b for b in find_branches(model)}
    combined_layers = {b.path for b in branches.values() if b.adapter == "combo"}
    assert combined_layers == {b.path for b in branches.values() if b.adapter == "default"}
    for path in combined_layers:
        layer = branches[(path, "combo")]
        xin = torch.randn(4, 3, layer.A.weight.shape[1], generator=generator)
        with torch.no_grad():
            expected = sum(
                w * branches[(path, a)].update(xin, torch.arange(branches[(path, a)].rank))
                for a, w in zip(["default", "other"], weights)
                if (path, a) in branches
            )
            got = layer.update(xin, torch.arange(layer.rank))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # float32 sums in another order
        assert layer.rank == sum(branches[(path, a)].rank for a in ("default", "other") if (path, a) in branches)
    assert branches[("model.layers.0.mlp.down_proj", "combo")].rank == 3 + 5

    model.set_adapter("combo")
    ids = token_ids()
    with torch.no_grad():
        expected_logits = model(ids).logits
    model.save_pretrained(tmp_path / "saved", selected_adapters=["combo"])
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "saved" / "combo").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected_logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("combination_type", ["svd", "linear", "ties", "dare_linear", "magnitude_prune_svd"])
def test_other_combination_types_are_refused_with_the_reason(combination_type):
    """Combinations of fixed weights (svd, linear, ties, dare, magnitude) are refused, saying why and naming 'cat'."""
    model = random_adapter()
    model.add_adapter("other", DiselConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="combination_type='cat'") as error:
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "combo", combination_type=combination_type)
    assert "gate" in str(error.value)


@pytest.mark.parametrize(
    "args, message",
    [
        ((["default", "missing"], [1.0, 1.0], "combo"), "do not exist"),
        ((["default"], [1.0, 2.0], "combo"), "weights"),
        ((["default"], [float("inf")], "combo"), "weights"),
        ((["default"], [1.0], "default"), "adapter_name"),
        (("default", [1.0], "combo"), "adapters"),
    ],
)
def test_add_weighted_adapter_refuses_bad_arguments(args, message):
    """Unknown adapters, mismatched or non-finite weights and an existing name are refused, naming the argument."""
    model = random_adapter()
    with pytest.raises(ValueError, match=message):
        model.add_weighted_adapter(*args)


# ------------------------------------------------------------------------------------------ toy evidence


def test_toy_planted_layer_prunes_zero_b_and_folds_constant_gates_exactly():
    """On the planted Bayes layer (eq. 31–33) with extra components: prune(threshold=0) removes exactly the
    zero-B components, merge_static folds exactly the constant-gate ones (leaving W0 and the rank-Δ Bayes
    layer), and the output is unchanged to float64 precision."""
    from toy.compress import planted_compression

    result = planted_compression(samples=2000, eval_samples=2000, extra_zero_b=2, extra_constant=3, seed=1)
    assert result["pruned"] == result["components"]["zero_b"]
    assert result["folded"] == result["components"]["constant_gate"]
    assert result["remaining_rank"] == result["rank_delta"]
    assert result["max_abs_output_change_prune"] < 1e-12
    assert result["max_abs_output_change_merge"] < 1e-12
    assert result["measured_relative_rms_merge"] < 1e-12
    assert result["max_abs_base_minus_W0_after_merge"] < 1e-12
    assert result["mse_after"] == pytest.approx(result["mse_before"], rel=1e-10)


def test_toy_trained_disel_with_excess_rank_prunes_to_rank_delta():
    """DISeL trained with r = 5 > rank Δ = 2 spreads the update over all components (none negligible); after
    aligning its correlated gates, prune keeps rank Δ components and the excess MSE stays within 2 % of the
    trained layer's on the same evaluation samples."""
    from toy.compress import trained_rank_recovery
    from toy.train import ToyTrainConfig

    config = ToyTrainConfig(steps=800, eval_samples=1000)
    result = trained_rank_recovery(rank=5, config=config, samples=5000, eval_samples=20_000, seed=0)
    assert result["components_above_threshold_without_align"] > result["rank_delta"]
    assert result["rank_after_prune"] == result["rank_delta"]
    assert result["mse_pruned"] <= 1.02 * result["mse_trained"]


def test_prune_adapter_dir_writes_a_loadable_adapter_and_its_report(tmp_path):
    """prune_adapter_dir: adapter dir + statistics JSON in, pruned adapter dir + report JSON out, loadable."""
    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(base_dir)
    model = random_adapter()
    _zero_b(model, {"model.layers.0.mlp.up_proj": [0, 2]})
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(tmp_path / "adapter")
    ids = token_ids()
    disel.component_statistics(model, [ids]).save_json(tmp_path / "stats.json")
    with torch.no_grad():
        expected = model(ids).logits
    report = disel.prune_adapter_dir(tmp_path / "adapter", tmp_path / "pruned", tmp_path / "stats.json", threshold=0.0)
    assert report.kept["model.layers.0.mlp.up_proj"] == [1, 3]
    saved = json.loads((tmp_path / "pruned" / "prune_report.json").read_text())
    assert saved["rank_after"]["model.layers.0.mlp.up_proj"] == 2
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "pruned").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="out_dir"):
        disel.prune_adapter_dir(tmp_path / "adapter", tmp_path / "adapter", tmp_path / "stats.json", threshold=0.0)


def test_merge_static_folds_into_transposed_conv1d_weights():
    """GPT-2's Conv1D stores W transposed (d_in, d_out): folding constant gates there keeps the output too."""

    torch.manual_seed(0)
    base = tiny_models.tiny_gpt2(0, n_layer=1, vocab_size=VOCAB)
    model = get_peft_model(base, DiselConfig(r=3, target_modules=["c_attn", "c_fc"], init_weights=False)).eval()
    with torch.no_grad():
        for layer in disel_layers(model).values():
            layer.disel_gate["default"].weight[1] = 0
    ids = token_ids()
    with torch.no_grad():
        before = model(ids).logits
    report = disel.merge_static(model, disel.component_statistics(model, [ids]), std_threshold=1e-9)
    assert all(v == [1] for v in report.merged.values())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)


def test_two_merges_then_unmerge_restore_everything():
    """Two successive merge_static calls on different layers are undone together: weights, parameters and the
    config before the first fold come back bit for bit."""
    model = random_adapter()
    config = model.peft_config["default"].to_dict()
    ids = token_ids()
    _constant_gates(model, {"model.layers.1.self_attn.o_proj": [3]})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    disel.merge_static(model, disel.component_statistics(model, [ids]), std_threshold=1e-9)
    _constant_gates(model, {"model.layers.0.self_attn.q_proj": [0]})
    state_between = {k: v.clone() for k, v in model.state_dict().items()}
    disel.merge_static(model, disel.component_statistics(model, [ids]), std_threshold=1e-9)
    assert model.peft_config["default"].to_dict() != config
    assert disel.unmerge_static(model) == 2
    after = model.state_dict()
    q_gate = "base_model.model.model.layers.0.self_attn.q_proj.disel_gate.default.weight"
    assert torch.equal(after[q_gate], state_between[q_gate])  # the second fold's gate edit is kept (made by us)
    assert all(torch.equal(after[k], state[k]) for k in after if k != q_gate)
    assert model.peft_config["default"].to_dict() == config
