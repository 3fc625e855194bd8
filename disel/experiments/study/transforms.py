"""Post-hoc transforms of a trained checkpoint, by name: the ``transform`` of a study's post-hoc arm
(``from_arm: lora``, ``transform: prune``, ``transform_params: {...}``) is looked up here and applied in place
to every checkpoint of the source arm, loaded as that arm's runs load it; the result is scored like any
checkpoint (KL against the frozen base).

A transform is ``callable(model, **params) -> None`` that changes ``model`` (a PEFT model) in place. Register one
with :func:`register_transform`; the transforms of issue 17 (pruning, peft's intruder-dimension reduction) are
registered by the module that defines them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["TRANSFORMS", "Transform", "register_transform"]

Transform = Callable[..., None]
TRANSFORMS: dict[str, Transform] = {}
"""Transform name → function; study recipes name them (checked when the recipe is read)."""


def register_transform(name: str) -> Callable[[Transform], Transform]:
    """Decorator: ``@register_transform("prune")`` makes the function a study transform named ``name``."""

    def register(function: Transform) -> Transform:
        if name in TRANSFORMS and TRANSFORMS[name] is not function:
            raise ValueError(f"transform {name!r} is already registered ({TRANSFORMS[name].__qualname__})")
        TRANSFORMS[name] = function
        return function

    return register


@register_transform("scale_adapter")
def scale_adapter(model: Any, factor: float) -> None:
    """Multiply every LoRA (``lora_B``) and DISeL (``disel_B``) up-projection by ``factor`` (0: the base model,
    1: unchanged): the simplest transform, moving a checkpoint along the line to its base."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            for attribute in ("lora_B", "disel_B"):  # B per adapter name, in PEFT's LoRA layers and DISeL's
                up = getattr(module, attribute, None)
                if isinstance(up, torch.nn.ModuleDict):
                    for linear in up.values():
                        linear.weight.mul_(factor)
