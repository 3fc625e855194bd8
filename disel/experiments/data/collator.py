"""Right-padding of token sequences into batches, shared by the perplexity and gate-analysis loops."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["right_pad"]


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
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (b, T)
    attention = torch.zeros((len(batch), width), dtype=torch.long)  # (b, T)
    values = torch.full((len(batch), width), fill, dtype=dtype)  # (b, T)
    for row, (ids, per_token) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        attention[row, : len(ids)] = 1
        values[row, : len(ids)] = torch.as_tensor(per_token)
    return input_ids, attention, values
