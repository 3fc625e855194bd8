"""Training: :func:`train` (config → trained adapter + ``train_result.json``), in :mod:`.run`; which
checkpoint a resume can trust, in :mod:`.checkpoints`. Exported here: what a caller of :func:`train` needs (the
result file's name, the error and warning of a damaged checkpoint); the building blocks (``build_peft_config``,
``training_arguments``, ``resolve_resume``, ``checkpoint_damage`` ...) are imported from their modules."""

from .checkpoints import DamagedCheckpointError, DamagedCheckpointWarning
from .run import RESULT_FILE, train

__all__ = ["RESULT_FILE", "DamagedCheckpointError", "DamagedCheckpointWarning", "train"]
