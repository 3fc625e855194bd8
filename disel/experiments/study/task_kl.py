"""Forgetting measured per text, so the frontier's bootstrap can resample texts; and the task's own inputs.

Three forgetting measures per checkpoint (issue 17, item 3): KL from the base and perplexity on English and on
code never trained on (the evidence study's texts), and the KL from the base on the *task's own inputs*:
held-out test problems formatted with the training recipe's template (:func:`task_input_texts`), the
distribution the training prompts come from. RL's Razor (Shenfeld et al., 2025) finds forgetting predicted
by the KL on the new task's inputs; :func:`~.fronts.r_squared` asks whether it predicts English / code KL here.

:func:`per_text_forgetting` scores the texts in right-padded batches with :func:`~.kl.mean_token_kl`, which
returns per sequence the summed token KL, the summed NLL of the tuned and of the base model, and the scored
tokens (:meth:`PerTextForgetting.of`); the study's evaluation keeps these per checkpoint (:mod:`.stages`).
Any resample of texts then gives the token-weighted KL ``Σ kl_sum / Σ tokens`` and the perplexity
``exp(Σ nll_sum / Σ tokens)`` exactly as ``mean_token_kl`` would on those texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from .kl import KLResult

__all__ = ["PerTextForgetting", "in_text_order", "per_text_forgetting", "task_input_texts", "text_batches"]


def task_input_texts(rows: Sequence[Mapping[str, str]], template: str, *, with_answer: bool = False) -> list[str]:
    """The prompts of ``rows`` (``{"instruction", "output"}``, e.g. the held-out test problems) in the named
    template (:func:`~disel.experiments.data.templates.get_template`), as training formats them; with
    ``with_answer`` the reference answer follows (the whole training sequence)."""
    from ..data.templates import get_template

    prompt = get_template(template)
    texts = []
    for index, row in enumerate(rows):
        if "instruction" not in row or (with_answer and "output" not in row):
            raise ValueError(
                f"rows[{index}] needs 'instruction'{' and output' if with_answer else ''}, got {sorted(row)}"
            )
        texts.append(prompt.format_prompt(row["instruction"]) + (row["output"] if with_answer else ""))
    return texts


@dataclass(frozen=True)
class PerTextForgetting:
    """Per text (T,): ``kl_sums`` (token KL from the base, summed over the text's scored positions), ``nll_sums`` /
    ``base_nll_sums`` (summed NLL of the real next tokens under the model / the base) and ``tokens`` (scored
    positions). The study's records store these lists; :class:`~.fronts.FrontierRun` takes ``kl_sums`` or
    ``nll_sums`` as ``text_sums`` and ``tokens`` as ``text_tokens``."""

    kl_sums: np.ndarray
    nll_sums: np.ndarray
    base_nll_sums: np.ndarray
    tokens: np.ndarray

    @property
    def mean_kl(self) -> float:
        """Token-weighted KL over all the texts (``mean_token_kl(...).mean_kl`` on them)."""
        return float(self.kl_sums.sum() / self.tokens.sum())

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll_sums.sum() / self.tokens.sum()))

    @property
    def base_perplexity(self) -> float:
        return float(np.exp(self.base_nll_sums.sum() / self.tokens.sum()))

    def to_dict(self) -> dict[str, list[float]]:
        return {name: getattr(self, name).tolist() for name in ("kl_sums", "nll_sums", "base_nll_sums", "tokens")}

    @classmethod
    def of(cls, result: KLResult, order: Sequence[int]) -> PerTextForgetting:
        """The per-sequence sums of one :func:`~.kl.mean_token_kl` pass on :func:`text_batches`, in text order."""
        columns = (result.sequence_kl_sums, result.sequence_nll_sums, result.sequence_base_nll_sums)
        return cls(*(np.array(in_text_order(c, order), dtype=np.float64) for c in (*columns, result.sequence_tokens)))


def text_batches(
    tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int
) -> tuple[list[dict[str, Any]], list[int]]:
    """Right-padded batches of ``texts``, each cut at ``max_length`` tokens and scored in one window (the one
    perplexity definition, :func:`~disel.experiments.eval.perplexity.causal_lm_windows`), and ``order``: the index
    of the text of each sequence, in batch order (longest first, so that a batch holds little padding); with
    :func:`in_text_order` the per-sequence sums of :func:`~.kl.mean_token_kl` come back in text order."""
    from ..eval.perplexity import causal_lm_windows, window_batches

    windows = causal_lm_windows(tokenizer, texts, max_length=max_length, max_tokens=max_length)
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # stable: ties keep text order
    # already longest first, so window_batches (which sorts so, stably) keeps this order
    return window_batches([windows[i] for i in order], batch_size, tokenizer.pad_token_id), order


def in_text_order(values: Sequence[float], order: Sequence[int]) -> list[float]:
    """``values`` per sequence in batch order, as a list in text order (``order`` from :func:`text_batches`)."""
    if len(values) != len(order):
        raise ValueError(f"{len(values)} values for {len(order)} texts")
    ordered = [0.0] * len(order)
    for value, text in zip(values, order):
        ordered[text] = value
    return ordered


def per_text_forgetting(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    base_model: nn.Module | None = None,
    batch_size: int = 8,
) -> PerTextForgetting:
    """Score ``texts`` (each cut to its first ``max_length`` tokens, one window per text) with
    :func:`~.kl.mean_token_kl` in right-padded batches of ``batch_size``, keeping the per-text sums.

    ``base_model``: the KL's reference, ``None`` for a PEFT model's own base (adapter disabled); pass the base
    for a fully fine-tuned model, or the model itself to score the base (KL 0). ``ValueError`` naming the text
    when one has fewer than two tokens (nothing to score).
    """
    from .kl import mean_token_kl

    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got max_length={max_length!r}")
    if not texts:
        raise ValueError("texts must hold at least one text")
    for index, text in enumerate(texts):
        if len(tokenizer(text)["input_ids"]) < 2:
            raise ValueError(f"texts[{index}] has fewer than 2 tokens, at least 2 are needed to score one: {text!r}")
    batches, order = text_batches(tokenizer, texts, max_length, batch_size)
    return PerTextForgetting.of(mean_token_kl(model, batches, base_model=base_model), order)
