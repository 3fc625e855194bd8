"""Post-hoc arms of the frontier study: a trained checkpoint changed without training, then scored like the rest.

:data:`TRANSFORMS` maps an arm's transform name to ``callable(model, **params) -> model`` (the study runner's
post-hoc hook). Each changes the adapter of a loaded PEFT model in place and returns the model; the base
weights are left as they are, so the KL from the base is still measured with the adapter disabled, and the
result is a single-adapter PEFT model that ``save_pretrained`` / ``PeftModel.from_pretrained`` round-trip.

* ``intruder_reduced`` (:func:`reduce_intruders`): peft's ``reduce_intruder_dimension`` (Shuttleworth et al.,
  2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence"), LoRA only. Per layer it takes the SVD of
  ``W + ΔW``, calls a direction among the ``top_k`` largest an *intruder* when its largest |cosine| with the
  base weight's singular vectors is below ``threshold_epsilon``, and rescales those directions:
  ``W + ΔW + (λ − 1) · Σ_intruders s_i u_i v_iᵀ``, refitted to rank r. So ``mitigation_lambda`` (λ) is the
  fraction of each intruder direction KEPT: λ = 1 changes nothing, λ = 0 removes the intruders entirely
  (peft's docstring calls λ "the portion subtracted"; its code, read in peft 0.21.2, keeps λ of it, and the
  tests check the code's meaning). We name the *strength* ``1 − λ``.
* ``pruned`` (:func:`prune_components`): DISeL only. :func:`disel.prune` keeps the ``keep_fraction`` of all
  gated components with the largest contribution, measured on ``batches`` (:func:`disel.component_statistics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

__all__ = ["TRANSFORMS", "apply_transform", "prune_components", "reduce_intruders"]

_REDUCED = "intruder_reduced"  # peft's name for the new adapter, removed again once its weights are copied


def _fraction(value: Any, name: str, *, allow_zero: bool) -> float:
    lower_ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lower_ok:
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {name}={value!r}")
    if value > 1:
        raise ValueError(f"{name} must be at most 1, got {name}={value!r}")
    return float(value)


def _peft_type(model: nn.Module) -> str:
    config = getattr(model, "peft_config", None)
    if not config:
        raise ValueError(f"model must be a PEFT model with an adapter, got a {type(model).__name__}")
    peft_type = config[model.active_adapter].peft_type
    return str(getattr(peft_type, "value", peft_type))


def reduce_intruders(
    model: nn.Module, *, mitigation_lambda: float, top_k: int = 10, threshold_epsilon: float = 0.5
) -> nn.Module:
    """Intruder dimensions of the active LoRA adapter kept at ``mitigation_lambda`` (module docstring), in place.

    Calls ``peft.tuners.lora.intruders.reduce_intruder_dimension``, copies its new adapter's weights back into the
    active adapter (``set_peft_model_state_dict``) and deletes the new one, so the model keeps one adapter of
    the original name. ``top_k`` and ``threshold_epsilon`` are peft's (defaults: peft's).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    if _peft_type(model) != "LORA":
        raise ValueError(f"reduce_intruders needs a LoRA adapter, got peft type {_peft_type(model)!r}")
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
        logging_sink=None,
    )
    reduced = get_peft_model_state_dict(model, adapter_name=_REDUCED)
    set_peft_model_state_dict(model, reduced, adapter_name=name)
    model.set_adapter(name)
    model.delete_adapter(_REDUCED)
    return model


def prune_components(model: nn.Module, *, keep_fraction: float, batches: Iterable) -> nn.Module:
    """The ``keep_fraction`` of the DISeL adapter's components with the largest contribution on ``batches`` kept,
    the rest removed, in place (:func:`disel.prune`; ranks written to the adapter config).

    ``batches``: what :func:`disel.component_statistics` reads (dicts with ``input_ids`` and ``attention_mask``),
    e.g. task prompts and retention-like text held out from the evaluation.
    """
    import disel

    if _peft_type(model) != "DISEL":
        raise ValueError(f"prune_components needs a DISeL adapter, got peft type {_peft_type(model)!r}")
    keep_fraction = _fraction(keep_fraction, "keep_fraction", allow_zero=False)
    stats = disel.component_statistics(model, batches)
    disel.prune(model, stats, keep_fraction=keep_fraction)
    return model


TRANSFORMS: dict[str, Callable[..., nn.Module]] = {
    "intruder_reduced": reduce_intruders,
    "pruned": prune_components,
}


def apply_transform(name: str, model: nn.Module, **params: Any) -> nn.Module:
    """``TRANSFORMS[name](model, **params)``; ``ValueError`` naming the transforms for an unknown ``name``."""
    if name not in TRANSFORMS:
        raise ValueError(f"transform must be one of {sorted(TRANSFORMS)}, got transform={name!r}")
    return TRANSFORMS[name](model, **params)
