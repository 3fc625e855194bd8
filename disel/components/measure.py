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
        if not batches or not all(isinstance(k, str) for k in batches):
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


def measure_output_change(model: nn.Module, batches: Any, corrections: Sequence[Correction]) -> OutputChange:
    """Output change when each corrected layer's output gets ``+ f(x)``, measured batch by batch with and
    without the corrections (nothing is stored between batches)."""
    by_layer: dict[int, tuple[nn.Module, list[Callable[[Tensor], Tensor]]]] = {}
    for layer, function in corrections:
        by_layer.setdefault(id(layer), (layer, []))[1].append(function)
    state = {"on": False}
    handles = [layer.register_forward_hook(_correcting_hook(fns, state)) for layer, fns in by_layer.values()]
    diff_sq = ref_sq = 0.0
    max_abs, count = 0.0, 0
    try:
        with eval_no_grad(model):
            for source in data_sources(batches).values():
                for batch in source:
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
