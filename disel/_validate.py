"""Argument checks shared by every entry point that takes DISeL hyperparameters or parameter values.

``DiselLinear``, ``DiselConfig`` (at construction, and again when the PEFT tuner applies it) and
``DiselLinear.set_parameters`` all call these, so one bad value gets the same answer wherever it enters:
``"<owner>.<name> must be <expected>, got <name>=<value>"``. A value of the wrong type raises
:class:`ArgumentTypeError`, which is both a ``TypeError`` and a ``ValueError`` (callers that catch either
see it); a value of the right type outside its range raises ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "GATE_WEIGHT_INITS",
    "ArgumentTypeError",
    "check_adapter_hyperparameters",
    "check_bool",
    "check_choice",
    "check_finite",
    "check_non_negative_finite",
    "check_parameter_tensor",
    "check_positive_finite",
    "check_probability",
    "check_rank",
]


# The initialisations of the gate weight W_g (disel.layers.init_disel_parameters implements them).
GATE_WEIGHT_INITS: tuple[str, ...] = ("kaiming", "zero")


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. Also a ``ValueError``: every bad DISeL argument is one."""


def _message(owner: str, name: str, value: Any, expected: str) -> str:
    return f"{owner}.{name} must be {expected}, got {name}={value!r}"


def _real(owner: str, name: str, value: Any, expected: str) -> float | int:
    """``value`` as a plain Python int / float; refuses bool (a flag, not a number) and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(_message(owner, name, value, expected))
    # NumPy / other Real scalars become plain Python numbers, so the value stays JSON-serialisable.
    return value if type(value) in (int, float) else float(value)


def check_rank(owner: str, name: str, value: Any, expected: str = "a positive integer") -> int:
    """A rank: an integer ≥ 1 (not a bool, not a float such as 2.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(_message(owner, name, value, expected))
    if value < 1:
        raise ValueError(_message(owner, name, value, expected))
    return int(value)


def check_positive_finite(owner: str, name: str, value: Any, expected: str = "a positive finite number") -> float | int:
    """A finite number > 0 (a scale or a ratio: 0, negative, NaN and ±inf are refused)."""
    value_ = _real(owner, name, value, expected)
    if not (math.isfinite(value_) and value_ > 0):
        raise ValueError(_message(owner, name, value, expected))
    return value_


def check_finite(owner: str, name: str, value: Any, expected: str = "a finite number") -> float | int:
    """A finite number (NaN and ±inf are refused)."""
    value_ = _real(owner, name, value, expected)
    if not math.isfinite(value_):
        raise ValueError(_message(owner, name, value, expected))
    return value_


def check_non_negative_finite(owner: str, name: str, value: Any, expected: str = "a finite number >= 0") -> float | int:
    """A finite number ≥ 0 (a decay or a threshold: negative, NaN and ±inf are refused)."""
    value_ = _real(owner, name, value, expected)
    if not (math.isfinite(value_) and value_ >= 0):
        raise ValueError(_message(owner, name, value, expected))
    return value_


def check_probability(owner: str, name: str, value: Any, expected: str = "a probability in [0, 1)") -> float | int:
    """A dropout probability: 0 ≤ p < 1 (p = 1 would drop every input)."""
    value_ = _real(owner, name, value, expected)
    if not 0.0 <= value_ < 1.0:  # False for NaN as well
        raise ValueError(_message(owner, name, value, expected))
    return value_


def check_bool(owner: str, name: str, value: Any, expected: str = "True or False") -> bool:
    """A real bool (not 0 / 1, not a string such as "false")."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(_message(owner, name, value, expected))
    return value


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """One of a fixed set of strings."""
    expected = f"one of {tuple(choices)}"
    if not isinstance(value, str):
        raise ArgumentTypeError(_message(owner, name, value, expected))
    if value not in choices:
        raise ValueError(_message(owner, name, value, expected))
    return value


def check_parameter_tensor(owner: str, name: str, value: Any, shape: tuple[int, ...]) -> Tensor:
    """A parameter value to plant: real numbers (tensor, array or nested list) of ``shape``, all finite.

    Returns it as a tensor (not yet cast; the caller copies it into the parameter).
    """
    shape = tuple(shape)
    expected = f"a real-valued tensor of shape {shape}"
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ArgumentTypeError(f"{owner}: {name} must be {expected}, got {type(value).__name__} ({error})") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ArgumentTypeError(f"{owner}: {name} must be {expected}, got dtype {tensor.dtype}")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{owner}: {name} must have shape {shape}, got {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(f"{owner}: {name} must be finite, got {bad} NaN or infinite value(s) of {tensor.numel()}")
    return tensor


def check_adapter_hyperparameters(
    owner: str,
    *,
    r: Any,
    lora_alpha: Any,
    dropout: Any,
    init_weights: Any,
    gate_weight_init: Any,
    gate_bias_init: Any,
    dropout_name: str = "dropout",
    alpha_may_be_none: bool = False,
) -> dict[str, Any]:
    """The hyperparameters every DISeL adapter has, checked the same way for ``DiselLinear`` and ``DiselConfig``.

    ``dropout_name`` is the dropout argument's name at the entry point (``lora_dropout`` in the config);
    ``alpha_may_be_none`` lets ``DiselLinear`` take ``lora_alpha=None`` (scaling 1). Returns the values as
    plain Python numbers, keyed by argument name.
    """
    alpha_expected = "a positive finite number (the scaling is lora_alpha / r)"
    if alpha_may_be_none:
        alpha_expected = "None or " + alpha_expected
    return {
        "r": check_rank(owner, "r", r, "a positive integer (the number of gated rank-one components)"),
        "lora_alpha": None
        if alpha_may_be_none and lora_alpha is None
        else check_positive_finite(owner, "lora_alpha", lora_alpha, alpha_expected),
        dropout_name: check_probability(owner, dropout_name, dropout),
        "init_weights": check_bool(
            owner, "init_weights", init_weights, "True (B = 0, start at the base model) or False (random B, for tests)"
        ),
        "gate_weight_init": check_choice(owner, "gate_weight_init", gate_weight_init, GATE_WEIGHT_INITS),
        "gate_bias_init": check_finite(
            owner, "gate_bias_init", gate_bias_init, "a finite number (negative keeps the gates nearly closed at init)"
        ),
    }
