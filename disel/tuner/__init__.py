"""DISeL as a native PEFT method: ``peft.get_peft_model(model, disel.DiselConfig(...))``.

PEFT's ``register_peft_method`` accepts only members of its own closed ``PeftType`` enum, so
:func:`register_disel` writes DISeL's entries into PEFT's type → config / tuner / prefix mappings
itself. ``import disel`` calls it; a process that loads a saved DISeL adapter
(``PeftModel.from_pretrained``, ``AutoPeftModelFor*.from_pretrained``, ``PeftConfig.from_pretrained``)
must ``import disel`` first, or PEFT will not know the type ``"DISEL"`` in ``adapter_config.json``.
"""

from __future__ import annotations

from .config import DiselConfig, DiselPeftType
from .layer import DiselLayer, DiselLinearLayer
from .model import DiselModel

__all__ = ["DiselConfig", "DiselLayer", "DiselLinearLayer", "DiselModel", "DiselPeftType", "register_disel"]

PEFT_TYPE = DiselPeftType.DISEL


def _qualified_name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def register_disel() -> None:
    """Make PEFT know the type ``"DISEL"``: config class, tuner class and parameter prefix ``"disel_"``.

    Idempotent: calling it again (or after ``importlib.reload``) changes nothing. Raises ``KeyError``
    if another method already holds the type ``"DISEL"`` or the prefix ``"disel_"``.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    entries = (
        (PEFT_TYPE_TO_CONFIG_MAPPING, DiselConfig),
        (PEFT_TYPE_TO_TUNER_MAPPING, DiselModel),
    )
    for mapping, cls in entries:
        existing = mapping.get(PEFT_TYPE)
        if existing is not None and _qualified_name(existing) != _qualified_name(cls):
            raise KeyError(f"PEFT type {PEFT_TYPE.value!r} is already registered to {_qualified_name(existing)}")
    for peft_type, prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if prefix == DiselModel.prefix and peft_type != PEFT_TYPE:
            raise KeyError(f"PEFT prefix {prefix!r} is already used by PEFT type {peft_type!r}")
    # Re-registering after a reload replaces the old class objects with the new ones.
    PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = DiselConfig
    PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = DiselModel
    PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = DiselModel.prefix
