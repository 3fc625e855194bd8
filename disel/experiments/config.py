"""The typed configuration of one training run: nested dataclasses read from YAML or JSON.

A recipe file has four sections, each a dataclass below, plus an optional ``name``::

    name: llama2-7b-metamath-disel-r8
    model:    {path: /path/to/Llama-2-7b-hf, task_type: causal_lm, dtype: bfloat16}
    data:     {train_files: [/path/to/MetaMathQA-395K.json], template: alpaca,
               instruction_field: query, response_field: response, validation_fraction: 0.01}
    method:   {name: disel, r: 8, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
    training: {output_dir: runs/llama-disel-r8, learning_rate: 2.0e-4, precision: bf16}

:func:`load_config` reads a file, applies ``key.path=value`` overrides (values parsed as YAML, so
``training.max_steps=10`` is an int and ``method.target_modules=[q_proj,v_proj]`` a list), and builds
the dataclasses with type checks. An unknown key is an error naming the key, the file and the known
keys (a typo must not silently fall back to a default). Floats may be written ``1e-3``: YAML 1.1 reads
that as a string, so numeric strings are accepted for float fields.

The whole config is stored in ``train_result.json`` (:meth:`ExperimentConfig.to_dict`), so every result
file says exactly how it was produced.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

__all__ = [
    "AdaLoraSettings",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "METHODS",
    "MethodConfig",
    "ModelConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]

METHODS: tuple[str, ...] = ("disel", "lora", "dora", "adalora", "full")
TASK_TYPES: tuple[str, ...] = ("causal_lm", "sequence_classification")
TEMPLATE_NAMES: tuple[str, ...] = ("alpaca", "magicoder", "none")


class ConfigError(ValueError):
    """A recipe that cannot be run: an unknown key, a wrong type, or values that do not fit together."""


@dataclass
class ModelConfig:
    """The pre-trained model. Loaded from local files only: ``disel`` never downloads from a hub."""

    path: str = ""
    """Local directory of a ``transformers`` checkpoint (``config.json`` + weights + tokenizer), or the
    directory holding ``gguf_file``. Required; recipes ship a placeholder (``/path/to/...``)."""
    gguf_file: str | None = None
    """A GGUF file name inside ``path`` (dequantised by ``transformers`` on load), or None."""
    task_type: Literal["causal_lm", "sequence_classification"] = "causal_lm"
    """``causal_lm``: instruction tuning with loss on response tokens. ``sequence_classification``: a fresh
    classification head (``num_labels`` classes) on the encoder, accuracy as the evaluation metric."""
    num_labels: int | None = None
    """Number of classes; required for ``sequence_classification``."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Dtype of the loaded (frozen) weights. ``bfloat16`` halves the memory of a 7B base; trainable adapter
    weights are kept in float32 by PEFT either way. Mixed precision is ``training.precision``."""
    attn_implementation: str | None = None
    """``eager``, ``sdpa``, ``flash_attention_2`` ...; None lets ``transformers`` choose."""
    trust_remote_code: bool = False
    """Allow model code shipped inside ``path``; off unless the checkpoint needs it."""


@dataclass
class DataConfig:
    """Training and validation examples and how they become token sequences."""

    train_files: list[str] = field(default_factory=list)
    """Local JSON (a list of objects) or JSONL files; CSV/TSV for sequence classification. Concatenated."""
    validation_files: list[str] = field(default_factory=list)
    """Held-out files (e.g. a GLUE dev set). Exclusive with ``validation_fraction``."""
    dataset: str | None = None
    """Instead of files: a name or path for ``datasets.load_dataset``, resolved from local disk or the local
    cache only (offline mode is forced)."""
    dataset_config: str | None = None
    """The ``datasets`` configuration name (e.g. ``sst2`` of ``glue``)."""
    dataset_train_split: str = "train"
    """Split of ``dataset`` to train on."""
    dataset_validation_split: str | None = None
    """Split of ``dataset`` to evaluate on (e.g. ``validation``), or None."""
    template: Literal["alpaca", "magicoder", "none"] = "alpaca"
    """Prompt template (``disel.experiments.data.datasets.TEMPLATES``): ``alpaca`` (math), ``magicoder`` (code), or
    ``none`` (raw text from ``text_field``, loss on every token). Ignored for sequence classification."""
    instruction_field: str = "instruction"
    """Key of the instruction in each row (MetaMathQA: ``query``)."""
    response_field: str = "output"
    """Key of the response in each row (MetaMathQA and Magicoder-Evol-Instruct: ``response``)."""
    text_field: str = "text"
    """Key of the text (raw-text language modelling; the first sentence for classification)."""
    text_pair_field: str | None = None
    """Key of the second sentence for sentence-pair classification (MNLI, QNLI, MRPC), or None."""
    label_field: str = "label"
    """Key of the class label: an int in [0, num_labels), or a string listed in ``label_names``."""
    label_names: list[str] | None = None
    """Class names in id order, for files whose labels are strings (e.g. ``[entailment, neutral, contradiction]``)."""
    validation_fraction: float = 0.0
    """Fraction of the training rows held out for validation, in [0, 1). 0: no held-out split."""
    split_seed: int = 42
    """Seed of the held-out split; the same seed gives the same split on any number of processes."""
    max_length: int = 512
    """Sequences are truncated to this many tokens (prompt kept first; examples left without a response
    token are dropped and counted)."""
    max_train_samples: int | None = None
    """Use only the first N training rows after the split (quick runs)."""
    max_validation_samples: int | None = None
    """Use only the first N validation rows."""


@dataclass
class AdaLoraSettings:
    """AdaLoRA's rank-budget schedule (``peft.AdaLoraConfig``); used only when ``method.name`` is ``adalora``.

    The schedule: ``tinit`` warm-up steps at ``init_r``, then the budget shrinks (every ``deltaT`` steps)
    until step ``total_step - tfinal``, then the final ranks are kept. ``method.r`` is the target rank.
    """

    init_r: int | None = None
    """Initial rank per matrix; None: ceil(1.5 · target rank), PEFT's default ratio 12 / 8."""
    tinit: int = 0
    """Warm-up steps before pruning starts (exclusive with ``tinit_ratio``)."""
    tfinal: int = 0
    """Steps at the end with the final ranks (exclusive with ``tfinal_ratio``)."""
    tinit_ratio: float | None = None
    """``tinit`` as a fraction of ``total_step`` (the paper states the schedule in fractions)."""
    tfinal_ratio: float | None = None
    """``tfinal`` as a fraction of ``total_step``."""
    deltaT: int = 1
    """Steps between two budget allocations."""
    beta1: float = 0.85
    """EMA coefficient of the importance sensitivity."""
    beta2: float = 0.85
    """EMA coefficient of the importance uncertainty."""
    orth_reg_weight: float = 0.5
    """Weight of the orthogonality regulariser added to the loss."""
    total_step: int | None = None
    """Total optimizer steps of the schedule; None: the Trainer's own number of steps (computed from the data,
    batch size, accumulation and epochs, or ``max_steps``). PEFT requires it before training."""


@dataclass
class MethodConfig:
    """The fine-tuning method and its adapter settings."""

    name: Literal["disel", "lora", "dora", "adalora", "full"] = "disel"
    """``disel``; PEFT's ``lora``, ``dora`` (``LoraConfig(use_dora=True)``), ``adalora``; or ``full``
    (every parameter trained, no adapter)."""
    r: int = 8
    """Adapter rank (AdaLoRA: the target average rank)."""
    lora_alpha: float | None = None
    """Scaling numerator, s = lora_alpha / r. None: 2r, the published recipe."""
    lora_dropout: float = 0.05
    """Dropout on the adapter input (the paper's value was lost in the text; 0.05 is our default)."""
    target_modules: list[str] | str | None = None
    """Module names (suffix match) or a regex; None: PEFT's per-architecture default."""
    modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (a fresh head: ``[classifier]``)."""
    gate_bias_init: float = -3.0
    """DISeL: initial gate bias b_g (σ(-3) ≈ 0.047, gates start nearly closed)."""
    gate_weight_init: Literal["kaiming", "zero"] = "kaiming"
    """DISeL: initial gate weight W_g."""
    gate_lr: float | None = None
    """DISeL: absolute learning rate of W_g, b_g (separate AdamW group, no weight decay)."""
    gate_lr_ratio: float | None = None
    """DISeL: gate learning rate / ``training.learning_rate`` (exclusive with ``gate_lr``). Neither: 5."""
    adalora: AdaLoraSettings = field(default_factory=AdaLoraSettings)
    """AdaLoRA's schedule (only read for ``name: adalora``)."""

    @property
    def scaling_alpha(self) -> float:
        """``lora_alpha`` with its default (2r) filled in."""
        return float(2 * self.r if self.lora_alpha is None else self.lora_alpha)


@dataclass
class TrainingConfig:
    """Optimisation, schedule, precision, checkpoints: what becomes ``transformers.TrainingArguments``."""

    output_dir: str = ""
    """Checkpoints (``checkpoint-<step>/``), the final adapter and ``train_result.json`` go here. Required."""
    learning_rate: float = 2.0e-4
    """Peak learning rate of A, B (and of every parameter for ``full``)."""
    weight_decay: float = 0.0
    """AdamW weight decay; never applied to biases, norms or gates."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1.0e-8
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    lr_scheduler_type: str = "cosine"
    """Any ``transformers`` scheduler name (``cosine``, ``linear``, ``constant_with_warmup`` ...)."""
    warmup_ratio: float | None = None
    """Linear warm-up over this fraction of the steps (exclusive with ``warmup_steps``). Neither: 0.03
    (the paper's ratio was lost in the text; our default)."""
    warmup_steps: int | None = None
    """Linear warm-up over this many steps."""
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    """Effective batch = per_device_train_batch_size × gradient_accumulation_steps × number of processes."""
    num_train_epochs: float = 3.0
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``num_train_epochs``)."""
    precision: Literal["bf16", "fp32"] = "fp32"
    """``bf16``: bfloat16 autocast (the paper's runs); ``fp32``: full precision (CPU tests)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (non-reentrant), trading compute for memory."""
    seed: int = 42
    """Seed of initialisation, dropout and data order (``transformers.set_seed``)."""
    data_seed: int | None = None
    """Seed of the data order alone; None: ``seed``."""
    full_determinism: bool = False
    """``transformers.enable_full_determinism``: deterministic kernels (slower), for bit-exact reruns on GPU."""
    logging_steps: int = 10
    eval_strategy: Literal["no", "steps", "epoch"] | None = None
    """When to evaluate; None: ``epoch`` if there is validation data, else ``no``."""
    eval_steps: int | None = None
    save_strategy: Literal["steps", "epoch", "no"] = "steps"
    save_steps: float = 500
    """Steps between checkpoints; a float in (0, 1) is a fraction of the total steps."""
    save_total_limit: int | None = None
    """Keep only the newest N checkpoints (oldest pruned); None keeps all."""
    resume: str | None = None
    """``auto``: continue from the newest complete checkpoint in ``output_dir`` (start fresh if there is
    none); a path: that checkpoint; None: start fresh (an ``output_dir`` that already holds checkpoints is
    then an error, so a restarted job cannot silently overwrite a run)."""
    dataloader_num_workers: int = 0
    report_to: list[str] = field(default_factory=list)
    """Loggers (``tensorboard``, ``wandb`` ...); empty: none."""
    disable_tqdm: bool | None = None
    """None: progress bars on the main process (``transformers``' default)."""
    use_cpu: bool = False
    """Train on the CPU even if an accelerator is present."""
    ddp_find_unused_parameters: bool | None = None
    """DDP's ``find_unused_parameters``; None: False for adapters (every trainable parameter is used)."""
    trainer_args: dict[str, Any] = field(default_factory=dict)
    """Further ``TrainingArguments`` fields not covered above (e.g. ``optim``, ``ddp_timeout``), passed as
    is. A field this config already sets is refused, so each setting has one place."""


@dataclass
class ExperimentConfig:
    """One training run: model, data, method, training, and an optional run name."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    name: str | None = None
    """Free-form run name, stored in the result file."""

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict; ``config_from_dict(c.to_dict())`` rebuilds an equal config."""
        return dataclasses.asdict(self)

    def validate(self, source: str = "<config>") -> ExperimentConfig:
        """Check that the values fit together (beyond their types); raise :class:`ConfigError`; return self."""
        _validate(self, source)
        return self


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) recipe, apply overrides, type-check, validate.

    Args:
        path: the recipe file.
        overrides: ``"section.key=value"`` strings; values are parsed as YAML (``10`` → int,
            ``[a,b]`` → list, ``null`` → None).

    Raises:
        ConfigError: unreadable file, unknown key, wrong type, or inconsistent values (the message names
            the key and ``path``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001 — re-raised with the file name
        raise ConfigError(f"cannot parse config file {str(path)!r}: {error}") from error
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    return config_from_dict(raw, source=str(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``"a.b.c=value"`` set (value parsed as YAML). Unknown keys are caught later."""
    import yaml

    result = copy.deepcopy(raw)
    for override in overrides:
        key, sep, value_text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {override!r} must have the form section.key=value")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: cannot parse the value: {error}") from error
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a nested dict (``source`` names it in errors)."""
    config = _build(ExperimentConfig, raw, "", source)
    return config.validate(source)


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    label = where or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{label} in {source}: expected a mapping of {cls.__name__} fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ConfigError(f"unknown key {path!r} in {source}; the keys of {label} are: {', '.join(known)}")
        values[key] = _convert(hints[key], value, path, source)
    return cls(**values)


def _convert(annotation: Any, value: Any, path: str, source: str) -> Any:
    """``value`` checked (and, for floats, coerced) against ``annotation``; ConfigError naming ``path``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, path, source)
            except ConfigError as error:
                errors.append(error)
        raise ConfigError(f"{path} in {source}: expected {_describe(annotation)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{path} in {source}: expected one of {choices}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value if value is not None else {}, path, source)
    if origin is list:
        (item_type,) = args
        if not isinstance(value, list):
            raise ConfigError(f"{path} in {source}: expected a list of {_describe(item_type)}, got {value!r}")
        return [_convert(item_type, item, f"{path}[{i}]", source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} in {source}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} in {source}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} in {source}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept any string that is a float literal.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path} in {source}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path} in {source}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} in {source}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config field {path} has an unsupported annotation {annotation!r}")  # a bug here, not the user's


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if annotation is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


# ------------------------------------------------------------------------------------------------
# Cross-field checks
# ------------------------------------------------------------------------------------------------


def _validate(config: ExperimentConfig, source: str) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{key} in {source}: {message}")

    model, data, method, training = config.model, config.data, config.method, config.training
    if not model.path:
        fail("model.path", "required: a local directory holding the model (disel never downloads)")
    if model.task_type == "sequence_classification":
        if model.num_labels is None or model.num_labels < 1:
            fail("model.num_labels", f"required for sequence_classification (a positive int), got {model.num_labels}")
        if data.label_names is not None and len(data.label_names) != model.num_labels:
            fail("data.label_names", f"has {len(data.label_names)} names but model.num_labels is {model.num_labels}")
    if not data.train_files and data.dataset is None:
        fail("data.train_files", "give local training files, or data.dataset (a locally available `datasets` source)")
    if data.train_files and data.dataset is not None:
        fail("data.dataset", "give either data.train_files or data.dataset, not both")
    if not 0.0 <= data.validation_fraction < 1.0:
        fail("data.validation_fraction", f"must be in [0, 1), got {data.validation_fraction}")
    if data.validation_fraction > 0 and (data.validation_files or data.dataset_validation_split):
        fail("data.validation_fraction", "hold out a fraction OR give validation files/split, not both")
    for key in ("max_length",):
        if getattr(data, key) < 1:
            fail(f"data.{key}", f"must be a positive integer, got {getattr(data, key)}")
    for key in ("max_train_samples", "max_validation_samples"):
        if getattr(data, key) is not None and getattr(data, key) < 1:
            fail(f"data.{key}", f"must be a positive integer or null, got {getattr(data, key)}")

    if method.r < 1:
        fail("method.r", f"must be a positive integer, got {method.r}")
    if method.lora_alpha is not None and method.lora_alpha <= 0:
        fail("method.lora_alpha", f"must be positive (or null for 2r), got {method.lora_alpha}")
    if not 0.0 <= method.lora_dropout < 1.0:
        fail("method.lora_dropout", f"must be in [0, 1), got {method.lora_dropout}")
    if method.gate_lr is not None and method.gate_lr_ratio is not None:
        fail("method.gate_lr", "give gate_lr or gate_lr_ratio, not both")
    for key in ("gate_lr", "gate_lr_ratio"):
        value = getattr(method, key)
        if value is not None and value <= 0:
            fail(f"method.{key}", f"must be positive, got {value}")
    if method.name != "disel" and (method.gate_lr is not None or method.gate_lr_ratio is not None):
        fail("method.gate_lr", f"gate learning rates apply to method disel only, not {method.name!r}")
    ada = method.adalora
    if method.name == "adalora":
        if ada.tinit_ratio is not None and ada.tinit:
            fail("method.adalora.tinit_ratio", "give tinit or tinit_ratio, not both")
        if ada.tfinal_ratio is not None and ada.tfinal:
            fail("method.adalora.tfinal_ratio", "give tfinal or tfinal_ratio, not both")
        for key in ("tinit_ratio", "tfinal_ratio"):
            value = getattr(ada, key)
            if value is not None and not 0.0 <= value < 1.0:
                fail(f"method.adalora.{key}", f"must be in [0, 1), got {value}")
        if ada.init_r is not None and ada.init_r < method.r:
            fail("method.adalora.init_r", f"must be >= the target rank method.r={method.r}, got {ada.init_r}")
        if ada.total_step is not None and ada.total_step < 1:
            fail("method.adalora.total_step", f"must be a positive integer or null, got {ada.total_step}")

    if not training.output_dir:
        fail("training.output_dir", "required: the directory for checkpoints and train_result.json")
    if training.learning_rate <= 0:
        fail("training.learning_rate", f"must be positive, got {training.learning_rate}")
    if training.warmup_steps is not None and training.warmup_ratio is not None:
        fail("training.warmup_steps", "give warmup_steps or warmup_ratio, not both")
    if training.warmup_steps is not None and training.warmup_steps < 0:
        fail("training.warmup_steps", f"must be >= 0, got {training.warmup_steps}")
    if training.warmup_ratio is not None and not 0.0 <= training.warmup_ratio < 1.0:
        fail("training.warmup_ratio", f"must be in [0, 1), got {training.warmup_ratio}")
    positive = (
        "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "logging_steps"
    )
    for key in positive:
        if getattr(training, key) < 1:
            fail(f"training.{key}", f"must be a positive integer, got {getattr(training, key)}")
    if training.max_steps is not None and training.max_steps < 1:
        fail("training.max_steps", f"must be a positive integer or null, got {training.max_steps}")
    if training.max_steps is None and training.num_train_epochs <= 0:
        fail("training.num_train_epochs", f"must be positive, got {training.num_train_epochs}")
    if training.save_strategy == "steps" and training.save_steps <= 0:
        fail("training.save_steps", f"must be positive, got {training.save_steps}")
    if training.save_steps > 1 and training.save_steps != int(training.save_steps):
        fail("training.save_steps", f"must be an integer or a fraction in (0, 1), got {training.save_steps}")
    if training.save_total_limit is not None and training.save_total_limit < 1:
        fail("training.save_total_limit", f"must be a positive integer or null, got {training.save_total_limit}")
    if training.eval_strategy == "steps" and training.eval_steps is None:
        fail("training.eval_steps", "required when eval_strategy is 'steps'")
    _check_trainer_args(training.trainer_args, fail)


# TrainingArguments fields that TrainingConfig (or train()) already sets: refused in trainer_args.
_SET_BY_CONFIG = {
    "output_dir", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "lr_scheduler_type", "warmup_steps", "warmup_ratio", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "num_train_epochs", "max_steps", "bf16", "fp16", "gradient_checkpointing",
    "gradient_checkpointing_kwargs", "activation_checkpointing", "activation_checkpointing_kwargs",
    "prediction_loss_only", "seed", "data_seed", "full_determinism", "logging_steps", "eval_strategy",
    "eval_steps", "save_strategy", "save_steps", "save_total_limit", "dataloader_num_workers", "report_to",
    "disable_tqdm", "use_cpu", "ddp_find_unused_parameters", "resume_from_checkpoint", "remove_unused_columns",
    "label_names",
}


def _check_trainer_args(trainer_args: dict[str, Any], fail) -> None:
    if not trainer_args:
        return
    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key in trainer_args:
        if key in _SET_BY_CONFIG:
            fail(f"training.trainer_args.{key}", "is set by a training.* key of this config; set it there")
        if key not in known:
            fail(f"training.trainer_args.{key}", "is not a transformers.TrainingArguments field")
