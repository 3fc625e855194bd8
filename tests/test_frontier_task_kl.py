"""Per-text forgetting and the task's own inputs (disel.experiments.study.task_kl) on a tiny Llama."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from disel.experiments.data.arithmetic import generate_problems
from disel.experiments.eval.perplexity import window_batches
from disel.experiments.study.kl import mean_token_kl
from disel.experiments.study.task_kl import per_text_forgetting, task_input_texts
from tiny_models import LLAMA_TARGET_MODULES, make_tiny_causal_lm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"))
    return path, AutoTokenizer.from_pretrained(path)


def _rows(n: int = 5) -> list[dict[str, str]]:
    return [p.as_row() for p in generate_problems(n, seed=3)]


def test_task_inputs_are_the_test_prompts_in_the_recipe_template():
    rows = _rows(2)
    prompts = task_input_texts(rows, "alpaca")
    assert prompts[0] == f"### Instruction:\n{rows[0]['instruction']}\n### Response:\n"
    assert task_input_texts(rows, "alpaca", with_answer=True)[1] == prompts[1] + rows[1]["output"]
    with pytest.raises(ValueError, match="template"):
        task_input_texts(rows, "chatml")
    with pytest.raises(ValueError, match=r"rows\[0\]"):
        task_input_texts([{"question": "1 + 1?"}], "alpaca")


def _lora(path) -> torch.nn.Module:
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path), LoraConfig(r=4, target_modules=list(LLAMA_TARGET_MODULES))
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.eval()


def test_per_text_sums_give_back_mean_token_kl_on_all_the_texts(tiny):
    """Σ kl_sum / Σ tokens is mean_token_kl's token mean on the same texts in padded batches of another size, and
    the NLL sums give its perplexities; each text's own mean (scored in a padded batch) is that text's
    mean_token_kl scored alone: padding changes no text's numbers."""
    path, tokenizer = tiny
    model = _lora(path)
    texts = task_input_texts(_rows(), "alpaca", with_answer=True)
    per_text = per_text_forgetting(model, tokenizer, texts, max_length=48)
    ids = [tokenizer(t, truncation=True, max_length=48)["input_ids"] for t in texts]
    pooled = mean_token_kl(model, window_batches([(i, i) for i in ids], 3, tokenizer.pad_token_id))
    assert per_text.tokens.sum() == pooled.tokens and per_text.kl_sums.min() > 0
    assert per_text.mean_kl == pytest.approx(pooled.mean_kl, rel=1e-5)
    assert per_text.perplexity == pytest.approx(pooled.perplexity, rel=1e-5)
    assert per_text.base_perplexity == pytest.approx(pooled.base_perplexity, rel=1e-5)
    assert per_text.tokens.tolist() == [len(i) - 1 for i in ids]  # in the order of the texts, not of the batches
    for index in range(len(texts)):
        alone = mean_token_kl(model, [{"input_ids": torch.tensor([ids[index]])}])
        assert per_text.kl_sums[index] / per_text.tokens[index] == pytest.approx(alone.mean_kl, rel=1e-5)


def test_a_fully_fine_tuned_model_is_scored_against_the_base_passed(tiny):
    """No adapter to disable: the base model is passed; the model against itself gives KL 0."""
    path, tokenizer = tiny
    base = AutoModelForCausalLM.from_pretrained(path).eval()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.model.layers[0].mlp.down_proj.weight.add_(0.05)
    texts = task_input_texts(_rows(3), "alpaca")
    assert per_text_forgetting(tuned, tokenizer, texts, 48, base_model=base).kl_sums.min() > 0
    np.testing.assert_allclose(per_text_forgetting(base, tokenizer, texts, 48, base_model=base).kl_sums, 0, atol=1e-6)
    with pytest.raises(ValueError, match="disable_adapter"):
        per_text_forgetting(tuned, tokenizer, texts, 48)


def test_a_text_too_short_to_score_is_named(tiny):
    path, tokenizer = tiny
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        per_text_forgetting(_lora(path), tokenizer, ["1 + 1 = 2", ""], 48)
