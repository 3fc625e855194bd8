"""The scaled-up experiment path: typed run configs, instruction/classification data, one training entry,
and evaluation (GSM8K, HumanEval, lm-eval retention, perplexity, gate analysis).

Training: ``disel-train --config recipes/<recipe>.yaml [--override key=value ...]`` or, from Python,
``from disel.experiments.train import train; train(load_config(path))``. Layout: ``config`` (recipes),
``schemas`` (result files), ``tables`` (runs and tables read from them), ``models`` (the loader), ``data/``,
``train/``, ``eval/``, ``cli/``, ``comparison``.
Submodules import ``torch``/``transformers`` only when used, so ``import disel.experiments`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule, imported on first access
_EXPORTS = {
    "ConfigError": "config",
    "ExperimentConfig": "config",
    "load_config": "config",
    "DataFormatError": "data.datasets",
    "format_prompt": "data.templates",
    "TrainResult": "schemas",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)  # cached in sys.modules
