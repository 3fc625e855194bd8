"""Training: :func:`train` (config → trained adapter + ``train_result.json``), in :mod:`.run`; which
checkpoint a resume can trust, in :mod:`.checkpoints`."""

from .checkpoints import (
    DamagedCheckpointError,
    DamagedCheckpointWarning,
    check_config_unchanged,
    checkpoint_damage,
    complete_checkpoints,
    resolve_resume,
)
from .run import RESULT_FILE, AdaLoraScheduleCallback, build_peft_config, train, training_arguments

__all__ = [
    "RESULT_FILE",
    "AdaLoraScheduleCallback",
    "DamagedCheckpointError",
    "DamagedCheckpointWarning",
    "build_peft_config",
    "check_config_unchanged",
    "checkpoint_damage",
    "complete_checkpoints",
    "resolve_resume",
    "train",
    "training_arguments",
]
