"""Tiny random models with offline tokenizers, saved to a directory, for fast CPU tests.

No hub access: each model is built from a config with random weights, and its tokenizer is a byte-level
BPE trained in memory on :data:`CORPUS` (byte-level, so any text encodes without unknown tokens). The
saved directory loads with ``AutoModel*.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)``
exactly like a real checkpoint.

* :func:`make_tiny_causal_lm` — a 2-layer Llama (hidden 64, grouped-query attention), BOS ``<s>``,
  EOS ``</s>``, PAD ``<pad>``; modules ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``.
* :func:`make_tiny_roberta_mlm` — a 2-layer RoBERTa with its MLM head (``RobertaForMaskedLM``).
* :func:`make_tiny_roberta_classifier` — the same encoder with a fresh ``classifier`` head
  (``RobertaForSequenceClassification``).
* In memory, without a tokenizer: :func:`tiny_llama` (the one Llama builder; the saved one is it with a
  tokenizer's vocabulary), :func:`tiny_gpt2`, :func:`tiny_roberta_classifier`. The saved causal LM is the
  session fixture ``tiny_llama_dir`` (``conftest.py``), built once.

The RoBERTa tokenizer adds ``<s> A </s>`` / ``<s> A </s></s> B </s>`` like the real one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "CORPUS",
    "LLAMA_TARGET_MODULES",
    "ROBERTA_TARGET_MODULES",
    "TINY_STUDY",
    "make_tiny_causal_lm",
    "make_tiny_roberta_classifier",
    "make_tiny_roberta_mlm",
    "tiny_byte_bpe",
    "tiny_gpt2",
    "tiny_llama",
    "tiny_roberta_classifier",
]

# Text the tokenizer's merges are learned from: instruction templates, arithmetic, code and prose, so the
# test data of every experiment helper tokenizes into reasonably short sequences.
CORPUS: tuple[str, ...] = (
    "### Instruction:\nWhat is 3 + 4?\n### Response:\n3 + 4 = 7. The answer is: 7",
    "### Instruction:\nAdd the numbers 12 and 30.\n### Response:\n12 + 30 = 42. The answer is: 42",
    "You are an exceptionally intelligent coding assistant that consistently delivers\n"
    "accurate and reliable responses to user instructions.\n@@ Instruction\nWrite a function.\n@@ Response\n",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    'def is_even(n: int) -> bool:\n    """Return True if n is even."""\n    return n % 2 == 0\n',
    "The quick brown fox jumps over the lazy dog. A cat sat on the mat.",
    "The movie was great and the acting was wonderful. I did not like the ending.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 #### answer question because therefore",
)

# Every linear layer an adapter targets in the tiny models (the paper's target sets, Appendices II–III).
LLAMA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROBERTA_TARGET_MODULES: tuple[str, ...] = (
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def tiny_byte_bpe(special_tokens: Sequence[str], vocab_size: int = 384, corpus: Sequence[str] = CORPUS):
    """A ``tokenizers.Tokenizer``: byte-level BPE with ``special_tokens`` first (ids 0, 1, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus) * 4, trainer)
    return tokenizer


def _llama_tokenizer(corpus: Sequence[str]):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = tiny_byte_bpe(["<unk>", "<s>", "</s>", "<pad>"], corpus=corpus)
    bos = backend.token_to_id("<s>")
    # Llama prepends BOS to every sequence and appends nothing; the training code appends EOS itself.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=256,
    )


def make_tiny_causal_lm(
    path: str | os.PathLike, *, seed: int = 0, num_hidden_layers: int = 2, corpus: Sequence[str] = CORPUS
) -> Path:
    """Save a tiny random ``LlamaForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 KV heads) and tokenizer.

    Returns ``path`` as a ``Path``. Deterministic for a given ``seed``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _llama_tokenizer(corpus)
    model = tiny_llama(
        seed,
        hidden_size=64,
        num_hidden_layers=num_hidden_layers,
        intermediate_size=128,
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _roberta_tokenizer(corpus: Sequence[str]):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = tiny_byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], corpus=corpus)
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>")), add_prefix_space=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=128,
    )


def _roberta_config(tokenizer, **extra):
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        # RoBERTa's positions start after padding_idx, so it needs max_length + 2 position slots.
        max_position_embeddings=tokenizer.model_max_length + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def make_tiny_roberta_mlm(path: str | os.PathLike, *, seed: int = 0, corpus: Sequence[str] = CORPUS) -> Path:
    """Save a tiny random ``RobertaForMaskedLM`` (hidden 64, 2 layers) and its tokenizer; return ``path``."""
    from transformers import RobertaForMaskedLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _roberta_tokenizer(corpus)
    torch.manual_seed(seed)
    RobertaForMaskedLM(_roberta_config(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_roberta_classifier(
    path: str | os.PathLike, num_labels: int = 2, *, seed: int = 0, corpus: Sequence[str] = CORPUS
) -> Path:
    """Save a tiny random ``RobertaForSequenceClassification`` with ``num_labels`` classes; return ``path``.

    The head is the module ``classifier`` (what ``modules_to_save=["classifier"]`` names).
    """
    from transformers import RobertaForSequenceClassification

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _roberta_tokenizer(corpus)
    torch.manual_seed(seed)
    RobertaForSequenceClassification(_roberta_config(tokenizer, num_labels=num_labels)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_llama(seed: int = 0, **overrides):
    """A randomly initialised Llama in eval mode, small enough for unit tests: 2 layers, hidden 32, 4 heads
    (2 key/value heads), MLP 64, vocabulary 64; ``overrides`` replace any ``LlamaConfig`` field
    (``vocab_size``, ``num_hidden_layers``, ``pad_token_id``, ``attn_implementation``, ...)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    fields = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=64,
    )
    return LlamaForCausalLM(LlamaConfig(**{**fields, **overrides})).eval()


def tiny_gpt2(seed: int = 0, **overrides):
    """A randomly initialised GPT-2 in eval mode (its ``Conv1D`` layers, not ``nn.Linear``): 2 layers, width 32,
    4 heads, vocabulary 128, 32 positions; ``overrides`` replace any ``GPT2Config`` field."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    fields = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=32, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(GPT2Config(**{**fields, **overrides})).eval()


def tiny_roberta_classifier(seed: int = 0, **overrides):
    """A randomly initialised ``RobertaForSequenceClassification`` in eval mode: 2 layers, hidden 32, 4 heads,
    MLP 64, vocabulary 128, 3 labels, head ``classifier``; ``overrides`` replace any ``RobertaConfig`` field."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    fields = dict(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    return RobertaForSequenceClassification(RobertaConfig(**{**fields, **overrides})).eval()


# A disel-study run sized for tests (seconds on the tiny Llama): two training steps, a checkpoint each, a dozen
# problems and a few short retention texts. Each study test adds its own arms and statistics settings.
TINY_STUDY = [
    "training.max_steps=2",
    "training.save_steps=1",
    "training.per_device_train_batch_size=2",
    "training.logging_steps=1",
    "training.warmup_steps=0",
    "problems.train=12",
    "problems.test=6",
    "evaluation.retention_tokens=60",
    "evaluation.retention_max_length=32",
    "evaluation.max_new_tokens=4",
    "evaluation.generation_batch_size=6",
    "evaluation.gate_sequences=2",
]
