"""Running a model over batches, and measuring how far an edit of its adapted layers moves its output.

A batch is a tensor (``model(batch)``), a tuple (``model(*batch)``) or a dict (``model(**batch)``); data
is an iterable of batches or ``{"domain name": batches}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Correction",
    "OutputChange",
    "call_model",
    "checked_batches",
    "data_sources",
    "eval_no_grad",
    "flat_tokens",
    "measure_output_change",
    "token_mask",
]

# (layer, f): the layer's output gets + f(x), x its input.
Correction = tuple[nn.Module, Callable[[Tensor], Tensor]]


def call_model(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _output_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find the output tensor in a {type(output).__name__} (expected a tensor or .logits)")


def token_mask(batch: Any, key: str | None) -> Tensor | None:
    """``batch[key]`` as a boolean (batch, seq) mask of the tokens to count, if the batch is a dict holding it."""
    if key is not None and isinstance(batch, Mapping) and isinstance(batch.get(key), Tensor):
        return batch[key].bool()
    return None


def flat_tokens(x: Tensor, mask: Tensor | None) -> Tensor:
    """(..., d) → (N, d), keeping only masked-in positions when the mask matches x's leading shape."""
    if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) under ``no_grad``; the training mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def data_sources(batches: Any, argument: str = "batches") -> dict[str | None, Iterable]:
    """``{name: iterable}`` for a mapping of named data sources, ``{None: batches}`` for one source."""
    if isinstance(batches, Mapping):
        if not batches:
            raise ValueError(f"{argument} is an empty dict: name at least one data source, e.g. {{'math': batches}}")
        if not all(isinstance(k, str) for k in batches):
            raise ValueError(f"{argument} as a mapping must name its data sources with strings, got {list(batches)!r}")
        for name, source in batches.items():
            if isinstance(source, (Tensor, Mapping)) or not isinstance(source, Iterable):
                raise TypeError(
                    f"{argument}[{name!r}] must be an iterable of batches (e.g. a list), got {type(source).__name__}"
                )
        return dict(batches)
    if isinstance(batches, Tensor) or not isinstance(batches, Iterable):
        raise TypeError(f"{argument} must be an iterable of batches or a dict of them, got {type(batches).__name__}")
    return {None: batches}


def _source_name(argument: str, name: str | None) -> str:
    return argument if name is None else f"{argument}[{name!r}]"


def _first_input(batch: Any, keys: Sequence[str]) -> tuple[str, Tensor | None]:
    """(what it is, the tensor) the model reads first from a batch: ``batch[key]`` for the first key a dict
    holds, the first element of a tuple, or the tensor itself."""
    if isinstance(batch, Mapping):
        for key in keys:
            if isinstance(batch.get(key), Tensor):
                return key, batch[key]
        return "", None
    if isinstance(batch, (tuple, list)):
        return "element 0", batch[0] if batch and isinstance(batch[0], Tensor) else None
    return "", batch if isinstance(batch, Tensor) else None


def _input_problem(model: nn.Module, batch: Any) -> str | None:
    """What about ``batch`` cannot fit ``model``'s input, or None: token ids (integer, in the vocabulary, on
    the embedding's device) for a model with input embeddings, else features whose last size, dtype and
    device are those of the first linear layer (the first ``in_features`` module in module order)."""
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a transformers model, or one without embeddings
        embeddings = None
    if isinstance(embeddings, nn.Embedding):
        what, x = _first_input(batch, ("input_ids", "inputs_embeds"))
        weight = embeddings.weight
        if x is not None and what != "inputs_embeds":
            label = f"{what}: " if what else ""
            if x.is_floating_point() or x.is_complex():
                return f"{label}expected integer token ids, got dtype {x.dtype}"
            if x.device != weight.device:
                return f"{label}expected a tensor on {weight.device} (the model's embeddings), got {x.device}"
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= weight.shape[0]):
                return f"{label}expected token ids in [0, {weight.shape[0]}), got [{int(x.min())}, {int(x.max())}]"
            mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            if isinstance(mask, Tensor) and mask.shape != x.shape:
                return f"attention_mask: expected the shape of {what} {tuple(x.shape)}, got {tuple(mask.shape)}"
            return None
        size, dtype, device = weight.shape[1], weight.dtype, weight.device
    else:
        linear = (m for m in model.modules() if isinstance(getattr(m, "weight", None), Tensor))
        first = next((m for m in linear if isinstance(getattr(m, "in_features", None), int)), None)
        if first is None:
            return None
        what, x = _first_input(batch, ())
        size, dtype, device = first.in_features, first.weight.dtype, first.weight.device
    if x is None:
        return None
    label = f"{what}: " if what else ""
    if x.dim() == 0 or x.shape[-1] != size:
        return f"{label}expected features of size {size} in the last dimension, got shape {tuple(x.shape)}"
    if x.dtype != dtype:
        return f"{label}expected dtype {dtype} (the model's weights), got {x.dtype}"
    if x.device != device:
        return f"{label}expected a tensor on {device} (the model's weights), got {x.device}"
    return None


def checked_batches(model: nn.Module, source: Iterable, argument: str, name: str | None = None) -> Iterator[Any]:
    """The batches of ``source``, each checked against ``model``'s input before it is run; ``ValueError``
    naming the argument, the batch index and what was expected for a batch that does not fit, or for a
    source without batches (after it is exhausted, so a generator is read once)."""
    where = _source_name(argument, name)
    count = 0
    for index, batch in enumerate(source):
        problem = _input_problem(model, batch)
        if problem is not None:
            raise ValueError(f"{where}, batch {index}: {problem}")
        count += 1
        yield batch
    if count == 0:
        raise ValueError(f"{where} holds no batch: give at least one (a measurement over no data measures nothing)")


@dataclass
class OutputChange:
    """How much the model output moved: ``relative_rms = ‖y' − y‖ / ‖y‖`` over all outputs, and the max |y' − y|."""

    relative_rms: float
    max_abs: float
    batches: int


def _correcting_hook(functions: list[Callable[[Tensor], Tensor]], state: dict[str, bool]) -> Callable:
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if not state["on"]:
            return None
        return output + sum(f(args[0]) for f in functions).to(output.dtype)

    return hook


def measure_output_change(
    model: nn.Module, batches: Any, corrections: Sequence[Correction], argument: str = "batches"
) -> OutputChange:
    """Output change when each corrected layer's output gets ``+ f(x)``, measured batch by batch with and
    without the corrections (nothing is stored between batches). ``batches`` is checked as it is read
    (:func:`checked_batches`; ``argument`` is its name in the errors)."""
    by_layer: dict[int, tuple[nn.Module, list[Callable[[Tensor], Tensor]]]] = {}
    for layer, function in corrections:
        by_layer.setdefault(id(layer), (layer, []))[1].append(function)
    state = {"on": False}
    handles = [layer.register_forward_hook(_correcting_hook(fns, state)) for layer, fns in by_layer.values()]
    diff_sq = ref_sq = 0.0
    max_abs, count = 0.0, 0
    try:
        with eval_no_grad(model):
            for name, source in data_sources(batches, argument).items():
                for batch in checked_batches(model, source, argument, name):
                    state["on"] = False
                    y0 = _output_tensor(call_model(model, batch)).double()
                    state["on"] = True
                    y1 = _output_tensor(call_model(model, batch)).double()
                    diff_sq += float(((y1 - y0) ** 2).sum())
                    ref_sq += float((y0**2).sum())
                    max_abs = max(max_abs, float((y1 - y0).abs().max()) if y0.numel() else 0.0)
                    count += 1
    finally:
        for handle in handles:
            handle.remove()
    return OutputChange(relative_rms=math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else 0.0, max_abs=max_abs, batches=count)
