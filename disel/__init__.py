"""DISeL: Dynamic Input-Sensitive LoRA.

LoRA whose rank-one components are each multiplied by an input-dependent sigmoid gate,
``h = W0 x + s · B diag(σ(W_g x + b_g)) A x``. Importing ``disel`` registers the PEFT type ``"DISEL"``,
so ``peft.get_peft_model``, ``save_pretrained`` and ``PeftModel.from_pretrained`` work with
:class:`DiselConfig`. The install also registers DISeL whenever ``peft`` is imported (``disel._autoregister``;
off with ``DISEL_NO_AUTO_REGISTER=1``), so a process that only loads a saved adapter needs no ``import disel``.
"""

from . import (
    _quiet,  # noqa: F401 (first: its import filters a bitsandbytes notice before peft imports that)
    components,
)
from .components import *  # noqa: F403 (its __all__ is part of ours, below)
from .continual import add_task_branch, task_branch_ranks
from .functional import disel_update, disel_update_reference, gate_values
from .layers import DEFAULT_GATE_BIAS_INIT, DiselGate, DiselLinear, init_disel_parameters
from .optim import DEFAULT_GATE_LR_RATIO, DiselGateGroupWarning, DiselOptimizerMixin, param_groups
from .recording import GateRecorder, GateStats, record_gates
from .tuner import DiselConfig, DiselModel, register_disel

register_disel()  # makes PEFT know peft_type "DISEL" (idempotent)

__version__ = "0.1.0"


def __getattr__(name: str):
    # DiselTrainer subclasses transformers.Trainer, whose import takes seconds: load it on first use only.
    if name == "DiselTrainer":
        from .optim import DiselTrainer

        return DiselTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_GATE_BIAS_INIT",
    "DEFAULT_GATE_LR_RATIO",
    "DiselConfig",
    "DiselGate",
    "DiselGateGroupWarning",
    "DiselLinear",
    "DiselModel",
    "DiselOptimizerMixin",
    "DiselTrainer",  # noqa: F405 (loaded on first access by __getattr__ above)
    "GateRecorder",
    "GateStats",
    "add_task_branch",
    "disel_update",
    "disel_update_reference",
    "gate_values",
    "init_disel_parameters",
    "param_groups",
    "record_gates",
    "register_disel",
    "task_branch_ranks",
]
__all__ += components.__all__  # per-component statistics, pruning, static merge
