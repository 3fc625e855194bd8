"""Classification by label likelihood: the one scoring rule of the continual-learning study (issue 18).

Each test example has a prompt and a closed set of label strings (its task's labels). The prediction is the label
with the highest log-likelihood as the whole response,

    score(y) = log p(y_1 … y_m, EOS | prompt) = Σ_k log p(y_k | prompt, y_<k) + log p(EOS | prompt, y),

and the example is correct when that label is the reference. Why this rule and not exact match of a generated
label:

* **Cheaper.** The prompt is encoded once (its key/value cache is reused for every label), then each label costs
  a forward pass over its 1–4 tokens; free generation costs one forward pass per generated token and a model
  that rambles runs to the token limit.
* **No parse failures.** Generation can produce a near-miss ("Sci/Tech", "Positive.") or nothing, and its score
  would then depend on a normalisation rule; the label set closes the answer space, so every method is judged
  on the same discrete choice and an abstention cannot masquerade as forgetting.
* **The same as exact match where the model is confident**: it picks the most probable answer within the label
  set, so a label the model would generate with probability above 1/2 is also the one ranked first here.

**No length normalisation.** The score is the log-probability of emitting exactly that label and stopping (the
trained response is ``label + EOS``), a probability over answers that sums to at most 1 across labels. Dividing
by the token count would favour multi-token labels whose later tokens are nearly certain once the first is
chosen ("Science or Technology", "Educational Institution") and is no longer the probability of an answer.
Including EOS separates a label from a longer label it begins.

The label's tokens are those ``tokenize_instruction`` makes the response in training (the tokens of
``prompt + label`` that start at or after the prompt); a tokenizer that merges across the prompt/label boundary
is refused, since the prompt cache could then not be shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.datasets import tokenize_instruction
from ..data.templates import IGNORE_INDEX, format_prompt
from .progress import progress_bar

__all__ = ["LabelPredictions", "label_continuations", "label_log_likelihoods", "predict_labels", "score_rows"]


@dataclass(frozen=True)
class LabelPredictions:
    """Scores of N examples over L labels.

    Attributes:
        log_likelihoods: (N, L) float64, ``score(label l)`` of example n (module docstring).
        predictions: (N,) int, the argmax label index (the first on ties).
        correct: (N,) bool, prediction equals the reference index.
    """

    log_likelihoods: np.ndarray
    predictions: np.ndarray
    correct: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


def label_continuations(tokenizer: Any, prompt: str, labels: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """``(prompt ids, [response ids of each label, EOS included])`` as training tokenises ``prompt + label``.

    ValueError when the prompt's ids differ between labels (a token spanning the prompt/label boundary).
    """
    prompt_ids: list[int] | None = None
    continuations = []
    for label in labels:
        example = tokenize_instruction(tokenizer, prompt, label, max_length=10**9)
        if example is None:
            raise ValueError(f"label {label!r} has no response token after the prompt")
        n_prompt = sum(1 for value in example["labels"] if value == IGNORE_INDEX)
        head, tail = example["input_ids"][:n_prompt], example["input_ids"][n_prompt:]
        if prompt_ids is None:
            prompt_ids = head
        elif head != prompt_ids:
            raise ValueError(
                f"the tokenizer merges the end of the prompt with label {label!r}, so labels see different "
                "prompts; end the prompt with a separator (the templates end with a newline)"
            )
        continuations.append(tail)
    assert prompt_ids is not None  # labels is non-empty (checked by the caller)
    return prompt_ids, continuations


def _left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask``, each (b, P): every prompt ends at the last column, so
    the labels continue all rows from the same cache position."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (b, P)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (b, P)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.as_tensor(ids)
        mask[row, width - len(ids) :] = 1
    return input_ids, mask


@torch.no_grad()
def _score_batch(model: Any, prompt_ids: list[list[int]], continuations: list[list[int]], pad_id: int) -> torch.Tensor:
    """(b, L) scores of one batch: one pass over the prompts, then one cached pass per label (same label on
    every row, so no padding), cropping the cache back to the prompt after each."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    input_ids, mask = _left_pad(prompt_ids, pad_id)
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, P): left padding shifts every real position
    cache = DynamicCache()
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # the last position only: LM-head logits at every prompt position are unused (b, P, V)
    )
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (b, V): predicts each label's first token
    lengths = mask.sum(-1, keepdim=True)  # (b, 1)
    scores = torch.empty((len(prompt_ids), len(continuations)), dtype=torch.float64)
    for index, tokens in enumerate(continuations):
        ids = torch.as_tensor(tokens, device=device).expand(len(prompt_ids), -1)  # (b, m)
        total = first[:, tokens[0]].double()  # (b,)
        if len(tokens) > 1:
            step_mask = torch.cat([mask, torch.ones_like(ids[:, :-1])], dim=1)  # (b, P + m - 1)
            step_positions = lengths + torch.arange(len(tokens) - 1, device=device)  # (b, m - 1)
            step = model(
                input_ids=ids[:, :-1],
                attention_mask=step_mask,
                position_ids=step_positions,
                past_key_values=cache,
                use_cache=True,
            )
            log_probs = torch.log_softmax(step.logits.float(), dim=-1)  # (b, m - 1, V)
            total += log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1).double().sum(-1)  # (b,)
            cache.crop(-(len(tokens) - 1))  # transformers 5: a negative count of tokens to remove
        scores[:, index] = total.cpu()
    return scores


def label_log_likelihoods(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int = 16,
    description: str = "label scores",
) -> np.ndarray:
    """(N, L) float64: ``log p(label + EOS | prompt)`` of every prompt (already template-formatted) and label.

    The model is put in eval mode; prompts are not truncated (keep them short: see ``data.continual``).
    """
    if not labels or not prompts:
        raise ValueError(f"need at least one prompt and one label, got {len(prompts)} prompts, labels={labels!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [label_continuations(tokenizer, prompt, labels) for prompt in prompts]
    continuations = encoded[0][1]
    if any(item[1] != continuations for item in encoded):
        raise ValueError("the labels tokenise differently after different prompts; end every prompt the same way")
    batches = [encoded[start : start + batch_size] for start in range(0, len(encoded), batch_size)]
    rows = [
        _score_batch(model, [ids for ids, _ in batch], continuations, pad_id)
        for batch in progress_bar(batches, description)
    ]
    return torch.cat(rows).numpy()


def predict_labels(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str],
    references: Sequence[int],
    *,
    batch_size: int = 16,
) -> LabelPredictions:
    """The highest-likelihood label of each prompt and whether it is ``references[n]`` (an index into ``labels``)."""
    if len(references) != len(prompts):
        raise ValueError(f"references must have one label index per prompt ({len(prompts)}), got {len(references)}")
    scores = label_log_likelihoods(model, tokenizer, prompts, labels, batch_size=batch_size)
    predictions = scores.argmax(axis=1)
    return LabelPredictions(scores, predictions, predictions == np.asarray(references))


def score_rows(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Any],
    labels: Sequence[str],
    *,
    template: str = "alpaca",
    batch_size: int = 16,
) -> LabelPredictions:
    """:func:`predict_labels` of ``data.continual.LabelledRow`` rows (``instruction``, ``label_index``) of one task
    with label strings ``labels``, each instruction formatted with ``template`` as in training."""
    prompts = [format_prompt(template, row.instruction) for row in rows]
    return predict_labels(model, tokenizer, prompts, labels, [row.label_index for row in rows], batch_size=batch_size)
