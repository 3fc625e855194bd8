"""Perplexity as a forgetting measure: causal-LM perplexity with sliding windows (:func:`causal_lm_perplexity`;
:func:`causal_lm_windows` is the one definition of which tokens are scored with which context, also used by the
study's KL), and masked-LM perplexity with seeded masks (:func:`masked_lm_perplexity`) of a fine-tuned RoBERTa
encoder paired with its ORIGINAL pre-trained MLM head (:func:`mlm_with_original_head`, paper Appendix II.5).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from disel.io import iter_jsonl

from ..data.collator import right_pad
from .progress import progress_bar


def read_texts(path: str | os.PathLike) -> list[str]:
    """The texts of a file: the whole file (UTF-8), or one per row (its ``"text"`` field) of a ``.jsonl`` file."""
    path = Path(path)
    if path.suffix != ".jsonl":
        return [path.read_text(encoding="utf-8")]
    texts = []
    for number, row in iter_jsonl(path):
        if "text" not in row:
            raise KeyError(f"{path}, line {number}: every JSONL row needs a 'text' field, got fields {sorted(row)}")
        texts.append(row["text"])
    return texts


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string; wrap it: [text]")
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to score")


def causal_lm_windows(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
) -> list[tuple[list[int], list[int]]]:
    """``(input ids, labels)`` of every window of ``texts``: labels are the ids where scored, -100 elsewhere.

    Each text is tokenized on its own (with the tokenizer's special tokens, e.g. Llama's BOS) and, if
    ``max_tokens`` is given, cut to its first ``max_tokens`` tokens. The first window is the first
    ``max_length`` tokens; each next window moves its end ``stride`` tokens on, keeps ``max_length`` tokens
    and scores only the ``stride`` new ones. So every kept token after a text's first is predicted exactly
    once, with all earlier tokens as context when the text fits in one window and at least
    ``max_length - stride`` otherwise. ``stride`` must be below ``max_length`` (the token before the first
    new one has to be in the window) and defaults to ``max_length // 2``.

    Why one definition with a per-text cap: perplexity and KL are then scored on the same positions with the
    same context whoever computes them (``disel-eval``, a study stage). A study scores retention on a token
    budget of many short texts, each cut at ``max_tokens = max_length`` (one window per text, every text of
    bounded weight, a fixed cost per checkpoint: the committed evidence numbers were made that way); a long
    document without ``max_tokens`` is scored whole in sliding windows.
    """
    _check_texts(texts)
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (a context token and a target), got {max_length}")
    stride = max_length // 2 if stride is None else stride
    if not 0 < stride < max_length:
        raise ValueError(f"stride must be in [1, max_length - 1] = [1, {max_length - 1}], got stride={stride}")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 or None (no cap), got {max_tokens}")
    windows: list[tuple[list[int], list[int]]] = []
    for text in texts:
        # verbose=False: a text longer than the model's window is expected here, the windows handle it.
        ids = tokenizer(text, verbose=False)["input_ids"][:max_tokens]
        scored_until = 1  # the first token has no context and is never predicted
        end = min(max_length, len(ids))
        while scored_until < len(ids):
            window = ids[max(0, end - max_length) : end]  # begins <= scored_until - 1 because stride < max_length
            unscored = len(window) - (end - scored_until)
            windows.append((window, [-100] * unscored + window[unscored:]))
            scored_until = end
            end = min(end + stride, len(ids))
    if not windows:
        raise ValueError("every text tokenized to fewer than 2 tokens: nothing to score")
    return windows


def window_batches(
    windows: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int, pad_id: int
) -> list[dict[str, torch.Tensor]]:
    """``{"input_ids", "attention_mask", "labels"}`` batches (b, T) of ``(ids, labels)`` windows, right-padded
    (labels -100 on padding; the causal mask keeps padding from affecting real positions), longest first so
    that a batch holds little padding (the order changes no mean: every scored token counts once)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    ordered = sorted(windows, key=lambda window: len(window[0]), reverse=True)
    starts = range(0, len(ordered), batch_size)
    padded = (right_pad(ordered[start : start + batch_size], pad_id, fill=-100, dtype=torch.long) for start in starts)
    return [{"input_ids": ids, "attention_mask": attention, "labels": labels} for ids, attention, labels in padded]


@torch.no_grad()
def causal_lm_perplexity(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 512,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Perplexity of a causal LM over the windows of ``texts`` (:func:`causal_lm_windows`).

    Returns ``{"perplexity", "nll" (mean per scored token), "tokens" (scored), "texts"}``.
    """
    windows = causal_lm_windows(tokenizer, texts, max_length=max_length, stride=stride, max_tokens=max_tokens)
    return {**_perplexity(model, tokenizer, windows, batch_size, shift=True), "texts": len(texts)}


def _perplexity(model: nn.Module, tokenizer: Any, pairs, batch_size: int, *, shift: bool) -> dict[str, float]:
    """``perplexity``, mean ``nll`` and number of ``tokens`` over the scored tokens of ``(ids, labels)`` pairs
    (label -100: not scored), right-padded into batches; ``shift``: position t predicts token t+1 (causal LM),
    else each position its own token (masked LM)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens = 0.0, 0
    for start in progress_bar(range(0, len(pairs), batch_size), "perplexity" if shift else "mlm perplexity"):
        input_ids, attention, labels = right_pad(pairs[start : start + batch_size], pad_id, fill=-100, dtype=torch.long)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits  # (b, T, V)
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]  # (b, T-1, V), (b, T-1)
        labels = labels.to(device)
        total_nll += float(F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="sum"))
        total_tokens += int((labels != -100).sum())
    mean_nll = total_nll / total_tokens
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "tokens": total_tokens}


@torch.no_grad()
def masked_lm_perplexity(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    mask_prob: float = 0.15,
    seed: int = 0,
    max_length: int = 512,
    batch_size: int = 8,
) -> dict[str, float]:
    """Masked-LM perplexity: exp(mean NLL of the original tokens at masked positions).

    Each text is tokenized (with ``<s> … </s>``) and cut into pieces of at most ``max_length`` tokens;
    in piece ``i`` every non-special token is masked with probability ``mask_prob`` (at least one per
    piece), replaced by the mask token (always, no 80/10/10 corruption: this scores, it does not
    train). The draws come from ``torch.Generator().manual_seed(seed * 1_000_003 + i)``, so the masks
    are a function of the texts and the seed only: different models and batch sizes see the same masks.

    Returns ``{"perplexity", "nll", "tokens" (masked), "texts", "mask_prob", "seed"}``.
    """
    _check_texts(texts)
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in (0, 1), got mask_prob={mask_prob}")
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; masked-LM perplexity needs a masked-LM tokenizer")
    pieces: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input ids with masks, labels)
    for text in texts:
        encoded = tokenizer(text, return_special_tokens_mask=True, add_special_tokens=True, verbose=False)
        ids, special = encoded["input_ids"], encoded["special_tokens_mask"]
        inner_ids = [t for t, s in zip(ids, special) if not s]
        prefix = [t for t, s in zip(ids[:1], special[:1]) if s]  # <s>
        suffix = [t for t, s in zip(ids[-1:], special[-1:]) if s]  # </s>
        chunk = max_length - len(prefix) - len(suffix)
        for begin in range(0, len(inner_ids), chunk):
            piece = torch.tensor(prefix + inner_ids[begin : begin + chunk] + suffix)  # (T,)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + len(pieces))
            draws = torch.rand(len(piece), generator=generator)  # (T,)
            draws[: len(prefix)] = torch.inf  # <s> and </s> are never masked
            draws[len(piece) - len(suffix) :] = torch.inf
            chosen = draws < mask_prob  # (T,)
            chosen[draws.argmin()] = True  # a short piece may draw no mask: its smallest draw is masked then
            pieces.append((piece.masked_fill(chosen, tokenizer.mask_token_id), piece.masked_fill(~chosen, -100)))
    if not pieces:
        raise ValueError("every text is empty after tokenization: nothing to score")
    result = _perplexity(model, tokenizer, pieces, batch_size, shift=False)
    return {**result, "texts": len(texts), "mask_prob": mask_prob, "seed": seed}


def mlm_with_original_head(pretrained_mlm_path: str | os.PathLike, finetuned_model: nn.Module) -> nn.Module:
    """A masked LM made of ``finetuned_model``'s encoder and the pre-trained checkpoint's MLM head.

    ``pretrained_mlm_path``: the original checkpoint (e.g. ``roberta-base``), read with
    ``AutoModelForMaskedLM``, so its ``lm_head`` is the pre-trained one. ``finetuned_model``: the
    fine-tuned classifier, a ``PeftModel`` (adapters active) or a plain model (full fine-tuning).

    The returned model shares the fine-tuned encoder (not a copy: its adapters act) and owns a copy
    of the original head. RoBERTa ties the head's decoder matrix to the input embeddings; the copy is
    untied, so the head stays the pre-trained one even when full fine-tuning changed the embeddings,
    and a later ``tie_weights`` cannot re-point it. The result is in eval mode, on the encoder's device.
    """
    from transformers import AutoModelForMaskedLM

    # The body (``.roberta`` for RoBERTa) inside the adapted model of a PeftModel, so its adapters stay in it.
    inner = finetuned_model.get_base_model() if hasattr(finetuned_model, "get_base_model") else finetuned_model
    body_name = getattr(inner, "base_model_prefix", "")
    encoder = getattr(inner, body_name, None) if body_name else None
    if encoder is None:
        raise ValueError(
            f"cannot find the encoder of {type(inner).__name__}: expected an attribute named by its "
            f"base_model_prefix ({body_name!r})"
        )
    parameter = next(encoder.parameters())
    mlm = AutoModelForMaskedLM.from_pretrained(pretrained_mlm_path, dtype=parameter.dtype)
    head = mlm.get_output_embeddings()
    if head is not None:
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    mlm.config.tie_word_embeddings = False
    setattr(mlm, mlm.base_model_prefix, encoder)
    return mlm.to(parameter.device).eval()
