"""Mean token-level KL divergence of a fine-tuned causal LM from its base model on held-out text.

    KL(p_base ‖ p_tuned) = Σ_v p_base(v | x_<t) · (log p_base(v | x_<t) − log p_tuned(v | x_<t))

averaged over the scored positions of the text. It measures how far fine-tuning moved the model's
next-token distribution, including moves that leave the reference token's probability (and hence
perplexity) unchanged, so it is the more sensitive retention metric of the two.

Scored positions are those perplexity scores (one definition,
:func:`disel.experiments.eval.perplexity.causal_lm_windows`): position ``t`` of a sequence predicting a real
token ``t + 1`` (``attention_mask`` 1 on both) whose label is not -100 (a batch without ``labels`` scores
every real next token). Padding on either side is ignored. So the perplexity these passes give equals
:func:`~disel.experiments.eval.perplexity.causal_lm_perplexity` on the same windows. Log-probabilities are
computed in float32 with ``log_softmax`` whatever the model's dtype.

The efficient path needs no second model: for a PEFT model, the base distribution is the same model
inside ``disable_adapter()`` (one set of weights in memory, two forward passes per batch). When many models are
scored on the same fixed texts (every checkpoint of a study), the base's log-probabilities can be computed once
(:func:`base_log_probs`) and passed back: one forward pass per batch, the same numbers (the cache holds exactly
what the live pass computes: float32 ``log_softmax`` of the base logits at the scored positions).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["KLResult", "base_log_probs", "mean_token_kl", "token_kl_divergence"]

# Positions per float32 log_softmax chunk: bounds the temporaries at (chunk, vocab) for large vocabularies.
_CHUNK_POSITIONS = 1024


@dataclass(frozen=True)
class KLResult:
    """KL(p_base ‖ p_tuned) over held-out text.

    ``mean_kl``: per-token average (total KL over all scored positions / ``tokens``), the headline number;
    ``sequence_mean_kl``: average over sequences of each sequence's per-token mean (every text weighs the
    same, however long); ``tokens``: number of scored positions; ``sequences``: sequences with at least
    one scored position. From the same forward passes, at no extra cost: ``nll`` / ``base_nll``, the mean
    negative log-likelihood (nats per token) of the real next tokens under the tuned / base model, whose
    ``exp`` is the perplexity (:attr:`perplexity`, :attr:`base_perplexity`). Per sequence, in batch order
    (every sequence, also one with no scored position): ``sequence_kl_sums``, ``sequence_nll_sums``,
    ``sequence_base_nll_sums`` (summed over its scored positions) and ``sequence_tokens`` (its scored positions),
    so a resample of the texts gives back the token means exactly.
    """

    mean_kl: float
    sequence_mean_kl: float
    tokens: int
    sequences: int
    nll: float = math.nan
    base_nll: float = math.nan
    sequence_kl_sums: tuple[float, ...] = ()
    sequence_nll_sums: tuple[float, ...] = ()
    sequence_base_nll_sums: tuple[float, ...] = ()
    sequence_tokens: tuple[int, ...] = ()

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    @property
    def base_perplexity(self) -> float:
        return math.exp(self.base_nll)


def token_kl_divergence(base_logits: Tensor, tuned_logits: Tensor) -> Tensor:
    """Per-position KL(p_base ‖ p_tuned) from logits, in float32: (..., V), (..., V) → (...)."""
    if base_logits.shape != tuned_logits.shape:
        raise ValueError(f"base_logits {tuple(base_logits.shape)} and tuned_logits {tuple(tuned_logits.shape)} differ")
    return _kl_from_log_probs(base_logits.float().log_softmax(dim=-1), tuned_logits.float().log_softmax(dim=-1))


def _kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Σ_v p (log p − log q) over the last dimension: (..., V), (..., V) → (...)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


@contextlib.contextmanager
def _eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Eval mode (no dropout: KL of a stochastic forward would be noise) restored afterwards; None is skipped."""
    models = [m for m in models if m is not None]
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, training in zip(models, was_training):
            m.train(training)


def _checked_batch(index: int, batch: Mapping[str, Tensor], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids, attention_mask, scored)`` of batch ``index`` on ``device``: (b, s), (b, s), (b, s-1); the mask
    defaults to ones; ``scored``: position t predicts a real token t + 1 whose label (if any) is not -100."""
    if "input_ids" not in batch:
        raise ValueError(f"batch {index} has no 'input_ids' (keys: {sorted(batch)})")
    ids = batch["input_ids"].to(device)  # (b, s)
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask.to(device)  # (b, s)
    if mask.shape != ids.shape:
        raise ValueError(f"batch {index}: attention_mask {tuple(mask.shape)} differs from input_ids {tuple(ids.shape)}")
    scored = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)  # (b, s-1): a real token predicting a real token
    labels = batch.get("labels")
    if labels is not None:
        scored &= labels[:, 1:].to(device) != -100
    return ids, mask, scored


def _base_logits(model: nn.Module, base_model: nn.Module | None, ids: Tensor, mask: Tensor) -> Tensor:
    """Reference-model logits predicting tokens 1.., on ``ids``' device: (b, s), (b, s) → (b, s-1, V).

    ``base_model=None`` runs ``model`` inside ``disable_adapter()`` (PEFT).
    """
    if base_model is None:
        with model.disable_adapter():
            return model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    base_device = next(base_model.parameters()).device
    logits = base_model(input_ids=ids.to(base_device), attention_mask=mask.to(base_device)).logits
    return logits[:, :-1].to(ids.device)


def _scored_position_terms(
    base: Tensor, tuned_logits: Tensor, targets: Tensor, base_is_log_probs: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-position ``(KL(p_base ‖ p_tuned), tuned NLL, base NLL)`` of the targets: (n, V), (n, V), (n,) → 3 × (n,).

    ``base``: the base's logits, or (``base_is_log_probs``) its cached float32 log-probabilities. Float32
    ``log_softmax`` in chunks of :data:`_CHUNK_POSITIONS` positions bounds the temporaries (row-wise, so the
    chunking changes no number).
    """
    parts = []  # per chunk: its KL, NLL and base NLL, (c,) each
    for base_chunk, tuned_chunk, target in zip(*(t.split(_CHUNK_POSITIONS) for t in (base, tuned_logits, targets))):
        log_p = base_chunk if base_is_log_probs else base_chunk.float().log_softmax(dim=-1)  # (c, V)
        log_q = tuned_chunk.float().log_softmax(dim=-1)  # (c, V)
        nll, base_nll = (-log.gather(-1, target[:, None])[:, 0] for log in (log_q, log_p))  # (c,) each
        parts.append((_kl_from_log_probs(log_p, log_q), nll, base_nll))
    return tuple(torch.cat(column) for column in zip(*parts))


def base_log_probs(
    model: nn.Module, batches: Sequence[Mapping[str, Tensor]], base_model: nn.Module | None = None
) -> list[Tensor]:
    """The base's float32 log-probabilities at each batch's scored positions, (n_b, V) per batch: the
    ``base_log_probs`` of :func:`mean_token_kl` on the same ``batches``. ``base_model`` as there (None: ``model``
    with its adapter disabled; pass the base itself to score it). Memory: 4 · V bytes per scored token."""
    cached, device = [], next(model.parameters()).device
    with _eval_mode(model, base_model), torch.inference_mode():
        for index, batch in enumerate(batches):
            ids, mask, scored = _checked_batch(index, batch, device)  # (b, s), (b, s), (b, s-1)
            if not scored.any():
                cached.append(torch.zeros(0))  # keeps the batch indices; mean_token_kl skips the batch
                continue
            logits = _base_logits(model, base_model, ids, mask)[scored.nonzero(as_tuple=True)]  # (n, V)
            cached.append(torch.cat([chunk.float().log_softmax(-1) for chunk in logits.split(_CHUNK_POSITIONS)]))
    return cached


def mean_token_kl(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    base_model: nn.Module | None = None,
    base_log_probs: Sequence[Tensor] | None = None,
) -> KLResult:
    """KL(p_base ‖ p_model) averaged over the scored positions of ``batches`` (module docstring).

    Args:
        model: the fine-tuned causal LM (a PEFT model or any model returning ``.logits``).
        batches: mappings with ``input_ids`` (batch, seq), optionally ``attention_mask`` (batch, seq) (all ones
            if absent) and ``labels`` (batch, seq; -100: not scored), e.g. from
            :func:`~disel.experiments.eval.perplexity.window_batches`.
        base_model: the reference model. ``None`` uses ``model`` itself inside ``model.disable_adapter()``
            (PEFT), which needs no second copy of the weights.
        base_log_probs: the reference's cached log-probabilities on these ``batches`` (:func:`base_log_probs`);
            then no reference forward pass is run and ``base_model`` is not used.

    Raises ``ValueError`` if no reference is given and ``model`` has no ``disable_adapter``, if a batch lacks
    ``input_ids`` or its mask has another shape, if the cache does not fit the batches, or if no position was
    scored.
    """
    if base_log_probs is None and base_model is None and not callable(getattr(model, "disable_adapter", None)):
        raise ValueError(
            f"base_model is None but the {type(model).__name__} has no disable_adapter(); pass base_model "
            "or a PEFT model"
        )
    device = next(model.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64)  # KL, NLL, base NLL summed over every scored position
    per_sequence: list[Tensor] = []  # (b, 4) per batch: KL, NLL, base NLL sums and scored positions
    with _eval_mode(model, base_model if base_log_probs is None else None), torch.inference_mode():
        for index, batch in enumerate(batches):
            ids, mask, scored = _checked_batch(index, batch, device)  # (b, s), (b, s), (b, s-1)
            if not scored.any():  # nothing to score: its sequences count zero positions
                per_sequence.append(torch.zeros(ids.shape[0], 4, dtype=torch.float64))
                continue
            cached = None if base_log_probs is None else _cached(base_log_probs, index, int(scored.sum()))
            sums = _sequence_sums(model, base_model, ids, mask, scored, cached)  # (b, 4)
            per_sequence.append(sums.cpu())
            totals += sums[:, :3].sum(dim=0).cpu()
    table = torch.cat(per_sequence) if per_sequence else torch.zeros(0, 4, dtype=torch.float64)  # (N, 4)
    tokens = int(table[:, 3].sum())
    if tokens == 0:
        raise ValueError("no position was scored: every sequence has fewer than two real tokens")
    has = table[:, 3] > 0
    kl_sums, nll_sums, base_nll_sums, counts = table.T
    return KLResult(
        mean_kl=float(totals[0]) / tokens,
        sequence_mean_kl=float((kl_sums[has] / counts[has]).mean()),
        tokens=tokens,
        sequences=int(has.sum()),
        nll=float(totals[1]) / tokens,
        base_nll=float(totals[2]) / tokens,
        sequence_kl_sums=tuple(kl_sums.tolist()),
        sequence_nll_sums=tuple(nll_sums.tolist()),
        sequence_base_nll_sums=tuple(base_nll_sums.tolist()),
        sequence_tokens=tuple(int(c) for c in counts.tolist()),
    )


def _sequence_sums(
    model: nn.Module, base_model: nn.Module | None, ids: Tensor, mask: Tensor, scored: Tensor, cached: Tensor | None
) -> Tensor:
    """(b, 4) per sequence of one batch: summed KL, NLL and base NLL over its scored positions, and their count.
    ``cached``: the base's (n, V) log-probabilities at the scored positions, else the base is run."""
    rows = scored.nonzero(as_tuple=True)
    base = _base_logits(model, base_model, ids, mask)[rows] if cached is None else cached.to(ids.device)  # (n, V)
    tuned_logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][rows]  # (n, V)
    targets = ids[:, 1:][rows]  # (n,): the real next tokens
    terms = _scored_position_terms(base, tuned_logits, targets, cached is not None)  # 3 × (n,)
    sums = torch.zeros(ids.shape[0], 4, dtype=torch.float64, device=ids.device)
    for column, values in enumerate(terms):
        sums[:, column].index_add_(0, rows[0], values.double())
    sums[:, 3] = scored.sum(dim=1)
    return sums


def _cached(base_log_probs: Sequence[Tensor], index: int, positions: int) -> Tensor:
    """Batch ``index``'s cached (n, V) log-probabilities; ``ValueError`` when they are not of these batches."""
    if index >= len(base_log_probs) or base_log_probs[index].shape[0] != positions:
        raise ValueError(
            f"base_log_probs do not fit batch {index} ({positions} scored positions): were they computed on "
            "these batches (base_log_probs(model, batches))?"
        )
    return base_log_probs[index]
