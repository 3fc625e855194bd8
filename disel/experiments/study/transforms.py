"""Post-hoc transforms of a trained checkpoint, by name: the ``transform`` of a study's post-hoc arm
(``from_arm: lora``, ``transform: prune``, ``transform_params: {...}``) is looked up here and applied in place
to every checkpoint of the source arm, loaded as that arm's runs load it; the result is scored like any
checkpoint (KL against the frozen base).

A transform is ``callable(model, **params) -> None`` that changes ``model`` (a PEFT model) in place. Register one
with :func:`register_transform`. Registered here:

* ``scale_adapter`` (:func:`scale_adapter`): every up-projection times ``factor``.
* ``intruder_reduced`` (:func:`reduce_intruders`): peft's ``reduce_intruder_dimension`` (Shuttleworth et al.,
  2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence"), LoRA only. Per layer it takes the SVD of
  ``W + ΔW``, calls a direction among the ``top_k`` largest an *intruder* when its largest |cosine| with the
  base weight's singular vectors is below ``threshold_epsilon``, and rescales those directions:
  ``W + ΔW + (λ − 1) · Σ_intruders s_i u_i v_iᵀ``, refitted to rank r. So ``mitigation_lambda`` (λ) is the
  fraction of each intruder direction KEPT: λ = 1 changes nothing, λ = 0 removes the intruders entirely
  (peft's docstring calls λ "the portion subtracted"; its code, read in peft 0.21.2, keeps λ of it, and the
  tests check the code's meaning). The frontier study names the *strength* ``1 − λ``. The base weights are
  left as they are and the model keeps one adapter of its name.

:func:`intruder_layers` asks the same peft function which layers it would call intruded at a threshold (changing
nothing): where it flags none, ``intruder_reduced`` is the adapter itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "TRANSFORMS",
    "Transform",
    "apply_transform",
    "intruder_layers",
    "reduce_intruders",
    "register_transform",
    "scale_adapter",
]

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


def apply_transform(name: str, model: Any, **params: Any) -> Any:
    """``TRANSFORMS[name](model, **params)`` (in place), returning ``model``; ``ValueError`` naming the transforms
    for an unknown ``name``."""
    if name not in TRANSFORMS:
        raise ValueError(f"transform must be one of {sorted(TRANSFORMS)}, got transform={name!r}")
    TRANSFORMS[name](model, **params)
    return model


def _fraction(value: Any, name: str, *, allow_zero: bool) -> float:
    """``value`` as a float in [0, 1] (or (0, 1]); ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number in [0, 1], got {name}={value!r}")
    if value > 1 or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be in {'[0, 1]' if allow_zero else '(0, 1]'}, got {name}={value!r}")
    return float(value)


_REDUCED = "intruder_reduced"  # peft's new adapter, removed again once its weights are copied back


def _peft_intruders(model: Any, mitigation_lambda: float, top_k: int, threshold_epsilon: float, sink) -> str:
    """peft's ``reduce_intruder_dimension`` on the active LoRA adapter into a new adapter (returned: the active
    adapter's name), its per-layer messages to ``sink``; arguments checked first, naming the bad one."""
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    config = getattr(model, "peft_config", None)
    peft_type = str(getattr(config[model.active_adapter].peft_type, "value", "")) if config else None
    if peft_type != "LORA":
        raise ValueError(f"intruder_reduced needs a LoRA adapter, got {peft_type or type(model).__name__!r}")
    mitigation_lambda = _fraction(mitigation_lambda, "mitigation_lambda", allow_zero=True)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got top_k={top_k!r}")
    threshold_epsilon = _fraction(threshold_epsilon, "threshold_epsilon", allow_zero=False)
    name = model.active_adapter
    reduce_intruder_dimension(
        model,
        old_adapter_name=name,
        new_adapter_name=_REDUCED,
        top_k=top_k,
        threshold_epsilon=threshold_epsilon,
        mitigation_lambda=mitigation_lambda,
        logging_sink=sink,
    )
    return name


@register_transform("intruder_reduced")
def reduce_intruders(model: Any, mitigation_lambda: float, top_k: int = 10, threshold_epsilon: float = 0.5) -> None:
    """Intruder dimensions of the active LoRA adapter kept at ``mitigation_lambda`` (module docstring), in place.

    Calls ``peft.tuners.lora.intruders.reduce_intruder_dimension``, copies its new adapter's weights back into the
    active adapter (``set_peft_model_state_dict``) and deletes the new one, so the model keeps one adapter of
    the original name. ``top_k`` and ``threshold_epsilon`` are peft's (defaults: peft's).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    name = _peft_intruders(model, mitigation_lambda, top_k, threshold_epsilon, None)
    set_peft_model_state_dict(model, get_peft_model_state_dict(model, adapter_name=_REDUCED), adapter_name=name)
    model.set_adapter(name)
    model.delete_adapter(_REDUCED)


def intruder_layers(model: Any, threshold_epsilon: float = 0.5, top_k: int = 10) -> dict[str, int]:
    """Layer name → number of intruder directions peft's ``reduce_intruder_dimension`` finds there at
    ``threshold_epsilon`` and ``top_k`` (its per-layer report, read back), for the layers where it finds any.
    The model is left as it was (the reduction's new adapter is deleted)."""
    from peft.tuners.lora import LoraLayer

    found: dict[str, int] = {}
    clean: list[str] = []

    def sink(message: str) -> None:  # peft also reports other steps ("Enabling new adapter ...")
        layer, _, report = message.rpartition(": Intruders: ")
        if layer:
            found[layer] = int(report)
        elif message.endswith(": No intruders"):
            clean.append(message)

    name = _peft_intruders(model, 1.0, top_k, threshold_epsilon, sink)
    model.set_adapter(name)
    model.delete_adapter(_REDUCED)
    layers = sum(isinstance(m, LoraLayer) for m in model.modules())
    if len(found) + len(clean) != layers:
        raise RuntimeError(
            f"peft reported on {len(found) + len(clean)} of {layers} LoRA layers: its report changed form"
        )
    return found
