"""The continual-learning data (disel.experiments.data.continual) and label-likelihood scoring
(disel.experiments.eval.labels), on a synthetic task folder and a tiny Llama, offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from disel.experiments.data import continual
from disel.experiments.data.datasets import DataFormatError
from disel.experiments.data.templates import format_prompt
from disel.experiments.eval.labels import label_continuations, label_log_likelihoods, predict_labels, score_rows
from tiny_models import make_tiny_causal_lm

LABELS = {"agnews": ["World", "Sports"], "yelp": ["very negative", "negative", "positive"]}


def _write_task(root: Path, name: str, labels: list[str], n_train: int, n_test: int) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "labels.json").write_text(json.dumps(labels))
    for split, n in (("train", n_train), ("test", n_test)):
        rows = [
            {"text": f"{name} {split} text number {i} " + "word " * i, "label": labels[i % len(labels)]}
            for i in range(n)
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("continual")
    for name, labels in LABELS.items():
        _write_task(root, name, labels, n_train=20, n_test=6)
    return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from disel.experiments.models import load_tokenizer

    return load_tokenizer(str(tiny_dir))


# ------------------------------------------------------------------------------------------ data


def test_rows_name_the_allowed_labels_and_keep_the_label_index(data_dir):
    """Every instruction names all of its task's labels; the response is the label at ``label_index``."""
    tasks = continual.load_tasks(["agnews", "yelp"], data_dir, max_text_tokens=None)
    assert [len(tasks["yelp"].train), len(tasks["yelp"].test)] == [20, 6]
    for task in tasks.values():
        for row in task.train + task.test:
            assert all(label in row.instruction for label in task.labels)
            assert task.labels[row.label_index] == row.label
            assert row.task == task.name


def test_truncation_keeps_a_token_prefix(tokenizer):
    """A truncated text is a prefix of the original with exactly ``max_tokens`` tokens; short texts are kept."""
    text = "The movie was great and the acting was wonderful. I did not like the ending."
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    cut = continual.truncate_text(text, tokenizer, 5)
    assert text.startswith(cut) and len(cut) < len(text)
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) == 5
    assert continual.truncate_text(text, tokenizer, n) == text


def test_load_tasks_truncates_long_texts(data_dir, tokenizer):
    """With a cap, the longest texts are shortened and the short ones are unchanged."""
    raw = continual.load_raw_tasks(["yelp"], data_dir)["yelp"][1]["train"]
    cap = len(tokenizer(raw[0][0], add_special_tokens=False)["input_ids"])  # the shortest text fits exactly
    whole = continual.load_tasks(["yelp"], data_dir, max_text_tokens=None)["yelp"]
    capped = continual.load_tasks(["yelp"], data_dir, tokenizer=tokenizer, max_text_tokens=cap)["yelp"]
    lengths = [len(a.instruction) - len(b.instruction) for a, b in zip(whole.train, capped.train)]
    assert lengths[0] == 0 and lengths[-1] > 0


def test_held_out_split_is_seeded_and_disjoint(data_dir):
    """Same seed → same split; different seed → a different one; train ∪ held-out = rows, disjoint."""
    rows = continual.load_tasks(["agnews"], data_dir, max_text_tokens=None)["agnews"].train
    train, held = continual.held_out_split(rows, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert sorted(map(rows.index, train + held)) == list(range(20))
    assert continual.held_out_split(rows, 0.25, seed=3) == (train, held)
    assert continual.held_out_split(rows, 0.25, seed=4)[1] != held


def test_multitask_rows_shuffle_every_task_with_a_seed(data_dir):
    """The multitask set is every task's training rows, shuffled deterministically by the seed."""
    tasks = continual.load_tasks(data_dir=data_dir, names=["agnews", "yelp"], max_text_tokens=None)
    rows = continual.multitask_rows(tasks, seed=0)
    assert sorted(r.instruction for r in rows) == sorted(r.instruction for t in tasks.values() for r in t.train)
    assert rows == continual.multitask_rows(tasks, seed=0) != continual.multitask_rows(tasks, seed=1)
    assert {r.task for r in rows[:10]} == {"agnews", "yelp"}


def test_errors_name_the_problem(data_dir, tmp_path):
    """A missing folder, an unknown task and a label outside labels.json are refused with what was expected."""
    with pytest.raises(FileNotFoundError, match="data_dir"):
        continual.load_tasks(data_dir=tmp_path / "missing", max_text_tokens=None)
    with pytest.raises(FileNotFoundError, match="pass data_dir"):
        continual.default_data_dir(tmp_path)
    with pytest.raises(ValueError, match="unknown"):
        continual.load_tasks(["imdb"], data_dir, max_text_tokens=None)
    _write_task(tmp_path, "agnews", ["World"], 2, 2)
    (tmp_path / "agnews" / "labels.json").write_text(json.dumps(["Sports"]))
    with pytest.raises(DataFormatError, match="line 1"):
        continual.load_tasks(["agnews"], tmp_path, max_text_tokens=None)


def test_tokenize_rows_trains_on_the_label_and_eos(data_dir, tokenizer):
    """Only the label tokens and EOS carry loss; a max_length that would cut the label is refused."""
    row = continual.load_tasks(["agnews"], data_dir, max_text_tokens=None)["agnews"].train[1]
    (example,) = continual.tokenize_rows([row], tokenizer)
    target = [t for t in example["labels"] if t != -100]
    assert tokenizer.decode(target[:-1]).strip() == row.label and target[-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="max_length"):
        continual.tokenize_rows([row], tokenizer, max_length=len(example["input_ids"]) - 1)


def test_length_table_counts_kept_tokens(data_dir, tokenizer):
    """Each row's token fraction is Σ min(n, cap) / Σ n of the task's texts, computed here by hand."""
    raw = continual.load_raw_tasks(["agnews"], data_dir)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _ in raw["agnews"][1]["train"]]
    (row,) = continual.length_table(raw, tokenizer, [10])
    assert row["token_fraction"] == pytest.approx(sum(min(n, 10) for n in lengths) / sum(lengths))
    assert row["whole_fraction"] == pytest.approx(np.mean([n <= 10 for n in lengths]))


# ------------------------------------------------------------------------------------------ scoring


def _model(tiny_dir):
    from disel.experiments.models import load_model

    return load_model(str(tiny_dir)).eval()


def _brute_force(model, tokenizer, prompt: str, label: str) -> float:
    """log p(label + EOS | prompt) from one uncached forward pass over the whole sequence."""
    prompt_ids, (tail,) = label_continuations(tokenizer, prompt, [label])
    ids = torch.tensor([prompt_ids + tail])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(log_probs[len(prompt_ids) - 1 + k, token].item() for k, token in enumerate(tail))


def test_cached_batched_scores_equal_full_sequence_log_likelihoods(tiny_dir, tokenizer):
    """Claim: the cached, left-padded batch score of each (prompt, label) is Σ log p over the label and EOS of
    one full forward pass, for prompts of different lengths split over batches (padding must not leak)."""
    model = _model(tiny_dir)
    prompts = [format_prompt("alpaca", text) for text in ("What is 3 + 4?", "Add 12 and 30, please, now.", "Hi")]
    labels = ["World", "Science or Technology", "very negative"]
    scores = label_log_likelihoods(model, tokenizer, prompts, labels, batch_size=2)
    expected = [[_brute_force(model, tokenizer, p, y) for y in labels] for p in prompts]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_uniform_model_prefers_the_shortest_label(tiny_dir, tokenizer):
    """Claim (no length normalisation): a model with a zero LM head spreads probability uniformly over the V
    tokens, so label y scores −(m_y + 1)·log V with m_y its token count, and the shortest label wins."""
    model = _model(tiny_dir)
    torch.nn.init.zeros_(model.lm_head.weight)
    labels = ["Science or Technology", "World", "very negative"]
    prompt = format_prompt("alpaca", "What is the topic?")
    _, tails = label_continuations(tokenizer, prompt, labels)
    result = predict_labels(model, tokenizer, [prompt], labels, [1])
    vocab = model.config.vocab_size
    np.testing.assert_allclose(result.log_likelihoods[0], [-len(t) * math.log(vocab) for t in tails], rtol=1e-6)
    assert result.predictions.tolist() == [int(np.argmin([len(t) for t in tails]))]
    assert result.correct.tolist() == [result.predictions[0] == 1]


def test_planted_label_is_predicted(tiny_dir, tokenizer):
    """A model whose LM head only rewards one label's first token predicts that label on every prompt."""
    model = _model(tiny_dir)
    labels = ["World", "Sports"]
    prompts = [format_prompt("alpaca", f"Question {i}?") for i in range(3)]
    _, tails = label_continuations(tokenizer, prompts[0], labels)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        # The final norm output has a nonzero mean direction; aim the planted row along every prompt's last state.
        hidden = model.model(input_ids=torch.tensor([tokenizer(p)["input_ids"] for p in prompts[:1]])).last_hidden_state
        model.lm_head.weight[tails[1][0]] = 50 * hidden[0, -1] / hidden[0, -1].norm()
    result = predict_labels(model, tokenizer, prompts, labels, [1, 1, 0])
    assert result.predictions.tolist() == [1, 1, 1]
    assert result.accuracy == pytest.approx(2 / 3)


@pytest.mark.parametrize("adapter", ["lora", "disel"])
def test_scores_through_a_peft_adapter_equal_full_sequence_log_likelihoods(tiny_dir, tokenizer, adapter):
    """The cache, positions and ``logits_to_keep`` pass through peft's wrapper and DISeL's gated layers: scores of
    an adapted model (nonzero B, so the adapter matters) equal its uncached full-sequence log-likelihoods."""
    from peft import LoraConfig, get_peft_model

    import disel

    targets = ["q_proj", "v_proj", "down_proj"]
    config = {
        "lora": LoraConfig(r=4, target_modules=targets, init_lora_weights=False),
        "disel": disel.DiselConfig(r=4, target_modules=targets, init_weights=False),
    }[adapter]
    torch.manual_seed(0)
    model = get_peft_model(_model(tiny_dir), config).eval()
    prompts = [format_prompt("alpaca", text) for text in ("What is 3 + 4?", "Hi")]
    labels = ["World", "Science or Technology"]
    scores = label_log_likelihoods(model, tokenizer, prompts, labels, batch_size=2)
    expected = [[_brute_force(model, tokenizer, p, y) for y in labels] for p in prompts]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    with model.disable_adapter():
        assert not np.allclose(label_log_likelihoods(model, tokenizer, prompts, labels), scores)


def test_score_rows_formats_rows_like_training(data_dir, tiny_dir, tokenizer):
    """``score_rows`` of a task's rows is ``predict_labels`` of their Alpaca prompts and label indices."""
    task = continual.load_tasks(["yelp"], data_dir, max_text_tokens=None)["yelp"]
    rows = task.test[:3]
    model = _model(tiny_dir)
    result = score_rows(model, tokenizer, rows, task.labels, batch_size=2)
    prompts = [format_prompt("alpaca", row.instruction) for row in rows]
    expected = predict_labels(model, tokenizer, prompts, task.labels, [row.label_index for row in rows])
    np.testing.assert_allclose(result.log_likelihoods, expected.log_likelihoods, rtol=1e-5, atol=1e-6)
    assert result.correct.tolist() == expected.correct.tolist()
