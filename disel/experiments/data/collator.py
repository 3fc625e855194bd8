"""Right-padding of token sequences into batches: the one padding helper of training, perplexity and gates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from .templates import IGNORE_INDEX


def right_pad(
    batch: Sequence[tuple[Sequence[int] | torch.Tensor, Sequence | torch.Tensor]],
    pad_id: int,
    *,
    fill: int | bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, per-token values)`` pairs → ``input_ids``, ``attention_mask``, ``values``, each (b, T).

    T is the longest sequence; shorter ones are padded on the right with ``pad_id`` (ids), 0 (attention)
    and ``fill`` (values, e.g. -100 for labels or False for a token mask). Right padding leaves every real
    position's causal context unchanged.
    """
    ids = [torch.as_tensor(sequence, dtype=torch.long) for sequence, _ in batch]
    values = [torch.as_tensor(per_token, dtype=dtype) for _, per_token in batch]
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_id)  # (b, T)
    attention = pad_sequence([torch.ones_like(row) for row in ids], batch_first=True)  # (b, T)
    return input_ids, attention, pad_sequence(values, batch_first=True, padding_value=fill)  # (b, T) each


@dataclass
class CausalLMCollator:
    """The ``Trainer``'s collator for causal LM examples: :func:`right_pad` of ``input_ids`` (with
    ``pad_token_id``) and ``labels`` (with -100). Tensors of shape (batch, longest sequence in the batch)."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        pairs = [(example["input_ids"], example["labels"]) for example in examples]
        input_ids, attention_mask, labels = right_pad(pairs, self.pad_token_id, fill=IGNORE_INDEX, dtype=torch.long)
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
