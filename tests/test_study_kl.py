"""Token-level KL divergence from the base model (disel.experiments.study.kl) on a tiny Llama."""

import copy

import pytest
import torch

import disel
from disel.experiments.eval.perplexity import window_batches
from disel.experiments.study.kl import base_log_probs, mean_token_kl, token_kl_divergence
from tiny_models import tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tiny_llama(seed=0):
    return tiny_llama(seed, vocab_size=50, max_position_embeddings=64, pad_token_id=0)


def right_padded_batches(sequences, batch_size, pad_token_id):
    """Batches of token-id lists, every real next token scored (each sequence is its own labels)."""
    return window_batches([(s, s) for s in sequences], batch_size, pad_token_id)


def _sequences():
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 3, 12, 1, 9]
    return [torch.randint(1, 50, (n,), generator=gen).tolist() for n in lengths]


def _peft(model, kind):
    from peft import LoraConfig, get_peft_model

    config = (
        LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)
        if kind == "lora"
        else disel.DiselConfig(r=4, lora_alpha=8, target_modules=TARGETS)
    )
    return get_peft_model(model, config)


def test_kl_of_the_base_against_itself_is_zero():
    """KL(p ‖ p) = 0 for every position."""
    model = _tiny_llama()
    result = mean_token_kl(model, right_padded_batches(_sequences(), 2, 0), base_model=model)
    assert abs(result.mean_kl) < 1e-7 and abs(result.sequence_mean_kl) < 1e-7
    # 6 + 2 + 11 + 0 + 8 positions predict a real next token; the 1-token sequence has none.
    assert result.tokens == 27 and result.sequences == 4


@pytest.mark.parametrize("kind", ["lora", "disel"])
def test_kl_is_zero_at_adapter_init_and_positive_after_a_perturbation(kind):
    """B = 0 at init makes the adapter a no-op (KL 0 via disable_adapter); perturbing B makes KL the divergence
    from the unperturbed model, which is not 0."""
    base = _tiny_llama()
    reference = copy.deepcopy(base)
    model = _peft(base, kind)
    batches = list(right_padded_batches(_sequences(), 3, 0))
    assert abs(mean_token_kl(model, batches).mean_kl) < 1e-7
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "disel_B" in name:
                param.normal_(0, 0.5)
    perturbed = mean_token_kl(model, batches).mean_kl
    assert perturbed == pytest.approx(mean_token_kl(model, batches, base_model=reference).mean_kl, rel=1e-6)
    assert perturbed > 1e-4  # the perturbation moved the output: the comparison above is not 0 against 0


def test_disable_adapter_path_equals_a_separate_base_model():
    """The memory-saving path (same PeftModel, adapters disabled) gives the separate-base-model answer."""
    base = _tiny_llama()
    reference = copy.deepcopy(base)
    model = _peft(base, "disel")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, disel.tuner.layer.DiselLayer):
                module.disel_B["default"].weight.normal_(0, 0.5)
    batches = list(right_padded_batches(_sequences(), 2, 0))
    shared = mean_token_kl(model, batches)
    separate = mean_token_kl(model, batches, base_model=reference)
    assert shared.mean_kl == pytest.approx(separate.mean_kl, rel=1e-6)
    assert shared.tokens == separate.tokens


def test_kl_equals_a_brute_force_per_position_computation():
    """Padded batches give the same per-token and per-sequence means as each sequence scored alone in float64."""
    base = _tiny_llama(0)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.model.layers[0].mlp.up_proj.weight.add_(0.3 * torch.randn_like(tuned.model.layers[0].mlp.up_proj.weight))
    sequences = _sequences()
    result = mean_token_kl(tuned, right_padded_batches(sequences, 4, 0), base_model=base)
    per_token, per_sequence = [], []
    with torch.no_grad():
        for seq in sequences:
            if len(seq) < 2:
                continue
            ids = torch.tensor([seq])
            p = base(input_ids=ids).logits[0, :-1].double().softmax(-1)  # (n, V)
            q = tuned(input_ids=ids).logits[0, :-1].double().softmax(-1)
            kls = [float((p[t] * (p[t].log() - q[t].log())).sum()) for t in range(p.shape[0])]
            per_token += kls
            per_sequence.append(sum(kls) / len(kls))
    assert result.tokens == len(per_token)
    assert result.mean_kl == pytest.approx(sum(per_token) / len(per_token), rel=1e-4)
    assert result.sequence_mean_kl == pytest.approx(sum(per_sequence) / len(per_sequence), rel=1e-4)
    assert min(per_token) > 0  # the tuned model differs at every position: the comparison is not 0 against 0


def test_token_kl_divergence_matches_torch_kl_div():
    """The per-position formula equals torch's kl_div(log q, log p, log_target=True) summed over the vocabulary."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 11, generator=gen), torch.randn(5, 11, generator=gen)
    expected = torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none").sum(
        -1
    )
    torch.testing.assert_close(token_kl_divergence(a, b), expected)


def test_bad_inputs_are_named():
    model = _tiny_llama()
    with pytest.raises(ValueError, match="disable_adapter"):
        mean_token_kl(model, right_padded_batches(_sequences(), 2, 0))
    with pytest.raises(ValueError, match="no position was scored"):
        mean_token_kl(model, right_padded_batches([[3], [4]], 2, 0), base_model=model)
    with pytest.raises(ValueError, match="batch_size"):
        right_padded_batches([[1, 2]], 0, 0)


def test_perplexities_come_from_the_same_pass():
    """nll / base_nll are the mean next-token negative log-likelihoods (brute force), and are equal (and
    KL is 0) when the tuned model is the base."""
    base = _tiny_llama(0)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.lm_head.weight.mul_(1.5)
    sequences = _sequences()
    result = mean_token_kl(tuned, right_padded_batches(sequences, 2, 0), base_model=base)
    nll, base_nll, n = 0.0, 0.0, 0
    with torch.no_grad():
        for seq in sequences:
            if len(seq) < 2:
                continue
            ids = torch.tensor([seq])
            targets = ids[0, 1:]
            for model, acc in ((tuned, "t"), (base, "b")):
                logp = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
                value = -float(logp[torch.arange(len(targets)), targets].sum())
                if acc == "t":
                    nll += value
                else:
                    base_nll += value
            n += len(targets)
    assert result.nll == pytest.approx(nll / n, rel=1e-5)
    assert result.base_nll == pytest.approx(base_nll / n, rel=1e-5)
    assert result.perplexity == pytest.approx(torch.tensor(nll / n).exp().item(), rel=1e-5)
    same = mean_token_kl(base, right_padded_batches(sequences, 2, 0), base_model=base)
    assert same.nll == pytest.approx(same.base_nll, rel=1e-7) and same.nll != pytest.approx(result.nll)


@pytest.mark.parametrize("max_tokens, stride", [(16, None), (None, 5)])
def test_kl_passes_give_the_one_perplexity_definition(tiny_llama_dir, max_tokens, stride):
    """The perplexity of the KL passes equals ``causal_lm_perplexity`` on the same windows (``causal_lm_windows``),
    cut texts (the study's setting) and sliding windows over whole texts alike; with texts cut at the window
    length it is also the truncated-text perplexity the committed evidence numbers were made with (every real
    token after the first of ``tokenizer(text, truncation=True, max_length=L)``)."""
    from disel.experiments.eval.perplexity import causal_lm_perplexity, causal_lm_windows, window_batches
    from disel.experiments.models import load_model_for_eval
    from tiny_models import CORPUS

    loaded = load_model_for_eval(tiny_llama_dir, None, device="cpu")
    model, tokenizer = _peft(loaded.model, "lora"), loaded.tokenizer
    texts, length = list(CORPUS[:5]), 16
    assert max(len(tokenizer(t)["input_ids"]) for t in texts) > length  # so cutting and sliding really happen
    windows = causal_lm_windows(tokenizer, texts, max_length=length, stride=stride, max_tokens=max_tokens)
    kl = mean_token_kl(model, window_batches(windows, 2, tokenizer.pad_token_id))
    reference = causal_lm_perplexity(model, tokenizer, texts, max_length=length, stride=stride, max_tokens=max_tokens)
    assert kl.tokens == reference["tokens"]
    assert kl.perplexity == pytest.approx(reference["perplexity"], rel=1e-5)
    if max_tokens is not None:
        cut = [tokenizer(t, truncation=True, max_length=length)["input_ids"] for t in texts]
        truncated = mean_token_kl(model, right_padded_batches(cut, 2, tokenizer.pad_token_id))
        assert truncated.tokens == kl.tokens == sum(len(ids) - 1 for ids in cut)
        assert truncated.perplexity == pytest.approx(kl.perplexity, rel=1e-6)


def _perturbed_pair():
    base = _tiny_llama(0)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.model.layers[1].self_attn.v_proj.weight.add_(0.3)
    return base, tuned


def test_per_sequence_sums_are_each_sequence_scored_alone():
    """Every sequence of a padded batch, in batch order (a 1-token one with 0 positions), gets the KL and NLL sums
    and scored positions of its own unpadded pass; they add up to the pooled means."""
    base, tuned = _perturbed_pair()
    batches = right_padded_batches(_sequences(), 2, 0)
    result = mean_token_kl(tuned, batches, base_model=base)
    pairs = [pair for batch in batches for pair in zip(batch["input_ids"], batch["attention_mask"])]
    rows = [ids[mask.bool()].tolist() for ids, mask in pairs]
    assert result.sequence_tokens == tuple(max(len(row) - 1, 0) for row in rows)
    for i, row in enumerate(rows):
        if len(row) < 2:
            assert result.sequence_kl_sums[i] == 0.0
            continue
        alone = mean_token_kl(tuned, [{"input_ids": torch.tensor([row])}], base_model=base)
        assert result.sequence_kl_sums[i] == pytest.approx(alone.mean_kl * alone.tokens, rel=1e-5)
        assert result.sequence_nll_sums[i] == pytest.approx(alone.nll * alone.tokens, rel=1e-5)
        assert result.sequence_base_nll_sums[i] == pytest.approx(alone.base_nll * alone.tokens, rel=1e-5)
    assert sum(result.sequence_kl_sums) / result.tokens == pytest.approx(result.mean_kl, rel=1e-9)


def test_cached_base_log_probs_give_the_live_numbers():
    """base_log_probs computed once and passed back give the same result as the live reference pass, with no
    reference forward pass at all; a cache of other batches is refused."""
    base, tuned = _perturbed_pair()
    batches = list(right_padded_batches(_sequences(), 2, 0))
    cache = base_log_probs(base, batches, base_model=base)
    live = mean_token_kl(tuned, batches, base_model=base)
    calls = []
    handle = base.register_forward_hook(lambda *args: calls.append(1))
    cached = mean_token_kl(tuned, batches, base_model=base, base_log_probs=cache)
    handle.remove()
    assert calls == []
    assert cached.sequence_kl_sums == pytest.approx(live.sequence_kl_sums, rel=1e-6, abs=1e-9)
    assert (cached.nll, cached.base_nll, cached.tokens) == pytest.approx((live.nll, live.base_nll, live.tokens))
    with pytest.raises(ValueError, match="do not fit batch"):
        mean_token_kl(tuned, batches[1:], base_log_probs=cache)
