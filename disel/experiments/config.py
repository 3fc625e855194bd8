"""The typed configuration of one training run (a *recipe*), read from YAML or JSON and validated by pydantic.

Sections ``model``, ``data``, ``method``, ``training``, plus an optional ``name`` and ``base`` (files this one
overlays); ``recipes/README.md`` shows them. ``training`` IS ``transformers.TrainingArguments`` (type-checked
here against its annotations, validated by transformers in :func:`disel.experiments.train.run.training_arguments`);
DISeL's ``method.gate_*`` settings go to :class:`disel.DiselConfig`, which holds their defaults and from which
the optimizer reads the gate learning rate. An unknown key is an error naming the key, the file and the known
keys; a wrong type names the key, the file and the expected type.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from .data.templates import DEFAULT_TEMPLATE

TRAINING_DEFAULTS: dict[str, Any] = {"report_to": "none"}
"""Where the experiment path's training defaults differ from ``TrainingArguments``' own: no logging service (runs
are offline). Schedules are the recipes' (``recipes/base/``), written once there."""

_SET_BY_DISEL = {
    "remove_unused_columns": "our datasets hold exactly the model inputs",
    "label_names": "PEFT wraps forward(**kwargs), so it is always ['labels']",
}

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class ConfigError(ValueError):
    """A recipe that cannot be run: an unknown key, a wrong type, or values that do not fit together."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class ModelConfig(_Section):
    """The pre-trained model, read from local files only (``disel`` never downloads)."""

    path: str = ""
    """A ``transformers`` checkpoint directory, or the one holding ``gguf_file``; required."""
    gguf_file: str | None = None
    """A GGUF file name inside ``path`` (de-quantised on load)."""
    task_type: Literal["causal_lm", "sequence_classification"] = "causal_lm"
    num_labels: PositiveInt | None = None
    """Classes of the fresh head; required for ``sequence_classification``."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Of the frozen weights; trainable adapter weights stay float32 (mixed precision is ``training.bf16``)."""
    attn_implementation: str | None = None
    trust_remote_code: bool = False


class DataConfig(_Section):
    """Training and validation examples and how they become token sequences."""

    train_files: list[str] = []
    """Local JSON/JSONL files (CSV/TSV for classification), concatenated."""
    validation_files: list[str] = []
    dataset: str | None = None
    """Instead of files: a ``datasets.load_dataset`` name or path, from local disk or cache only."""
    dataset_config: str | None = None
    dataset_train_split: str = "train"
    dataset_validation_split: str | None = None
    template: Literal["alpaca", "magicoder", "none"] = DEFAULT_TEMPLATE
    """``none``: raw text from ``text_field``, loss on every token; ignored for classification."""
    instruction_field: str = "instruction"
    response_field: str = "output"
    text_field: str = "text"
    """Raw text for language modelling; the first sentence for classification."""
    text_pair_field: str | None = None
    """The second sentence of sentence-pair classification (MNLI, QNLI, MRPC)."""
    label_field: str = "label"
    label_names: list[str] | None = None
    """Class names in id order, for files whose labels are strings."""
    validation_fraction: Fraction = 0.0
    """Fraction of the training rows held out for validation (0: none)."""
    split_seed: int = 42
    """The same seed gives the same split on any number of processes."""
    max_length: PositiveInt = 512
    """Tokens per sequence (prompt kept first; examples left without a response token are dropped)."""
    max_train_samples: PositiveInt | None = None
    max_validation_samples: PositiveInt | None = None


class AdaLoraSettings(_Section):
    """AdaLoRA's rank-budget schedule (``peft.AdaLoraConfig``), read only for ``method.name: adalora``:
    ``tinit`` warm-up steps at ``init_r``, the budget shrinking every ``deltaT`` steps until
    ``total_step - tfinal``, then the final ranks kept. ``method.r`` is the target rank."""

    init_r: int | None = None
    """None: ceil(1.5 · target rank), PEFT's default ratio 12 / 8."""
    tinit: int = 0
    tfinal: int = 0
    tinit_ratio: Fraction | None = None
    """``tinit`` as a fraction of ``total_step`` (the paper's form); ``tfinal_ratio`` likewise."""
    tfinal_ratio: Fraction | None = None
    deltaT: int = 1
    beta1: float = 0.85  # EMA coefficients of the importance sensitivity and uncertainty
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: PositiveInt | None = None
    """None: the Trainer's own number of optimizer steps."""


DISEL_ONLY_KEYS: tuple[str, ...] = ("gate_bias_init", "gate_weight_init", "gate_lr_ratio", "gate_delay_steps")
"""The ``method`` keys only DISeL reads; another method drops them, so a baseline needs only ``method.name``."""


class MethodConfig(_Section):
    """The fine-tuning method and its adapter settings. DISeL's ``gate_*`` settings (:data:`DISEL_ONLY_KEYS`) are
    None unless the recipe sets them (:class:`disel.DiselConfig` holds their defaults and validates them), and
    are dropped for any other method, as ``adalora`` is read only for AdaLoRA: ``method.name=lora`` on a DISeL
    recipe is the LoRA baseline with every shared setting kept."""

    name: Literal["disel", "lora", "dora", "adalora", "full"] = "disel"
    """``dora``: ``LoraConfig(use_dora=True)``; ``full``: every parameter trained, no adapter."""
    r: PositiveInt = 8
    """Adapter rank (AdaLoRA: the target average rank)."""
    lora_alpha: PositiveFloat | None = None
    """s = lora_alpha / r. None: 2r (the published recipe), so overriding ``r`` keeps it."""
    lora_dropout: Fraction = 0.05
    target_modules: list[str] | str | None = None
    """Module names (suffix match) or a regex; None: PEFT's per-architecture default."""
    modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (a fresh head: ``[classifier]``)."""
    gate_bias_init: float | None = None
    gate_weight_init: Literal["kaiming", "zero"] | None = None
    gate_lr_ratio: PositiveFloat | None = None
    """Gate learning rate / ``training.learning_rate``."""
    gate_delay_steps: int | None = None
    """Optimizer steps with the gates held still."""
    adalora: AdaLoraSettings = AdaLoraSettings()

    @model_validator(mode="before")
    @classmethod
    def _drop_disel_keys_of_other_methods(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("name", "disel") != "disel":
            raw = {**raw, **dict.fromkeys(DISEL_ONLY_KEYS)}
        return raw

    @property
    def scaling_alpha(self) -> float:
        """``lora_alpha`` with its default (2r) filled in."""
        return float(2 * self.r if self.lora_alpha is None else self.lora_alpha)

    def disel_settings(self) -> dict[str, Any]:
        """The DISeL keys the recipe sets (the rest keep :class:`disel.DiselConfig`'s defaults); none for another
        method."""
        if self.name != "disel":
            return {}
        return {key: getattr(self, key) for key in DISEL_ONLY_KEYS if getattr(self, key) is not None}


@functools.cache
def training_section_model() -> type[BaseModel]:
    """A pydantic model with one field per ``transformers.TrainingArguments`` init field, same type and default
    (built once, on first use: importing transformers takes seconds)."""
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    fields: dict[str, Any] = {}
    for spec in dataclasses.fields(TrainingArguments):
        if spec.init:
            default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
            fields[spec.name] = (hints[spec.name], None if default is dataclasses.MISSING else default)
    config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True, arbitrary_types_allowed=True)
    return create_model("TrainingArguments", __config__=config, **fields)


class ExperimentConfig(_Section):
    """One training run: model, data, method, training (``TrainingArguments`` fields), and an optional name."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    method: MethodConfig = MethodConfig()
    training: Any = Field(None, validate_default=True)
    """A model of :func:`training_section_model` with :data:`TRAINING_DEFAULTS` (attributes as on
    ``TrainingArguments``)."""
    name: str | None = None

    @field_validator("training", mode="before")
    @classmethod
    def _training_section(cls, value: Any) -> BaseModel:
        if value is None or isinstance(value, dict):  # else a training section model, or an error
            value = {**TRAINING_DEFAULTS, **(value or {})}
        return training_section_model().model_validate(value)

    def to_dict(self, with_defaults: bool = False) -> dict[str, Any]:
        """A plain, JSON-serialisable dict; ``config_from_dict(c.to_dict())`` rebuilds an equal config.
        ``with_defaults``: also the ``training`` values the recipe left at ``TrainingArguments``' defaults."""
        result = self.model_dump(mode="json", exclude={"training"})
        result["training"] = self.training.model_dump(mode="json", exclude_unset=not with_defaults)
        return result

    def validate_values(self, source: str = "<config>") -> ExperimentConfig:
        """Check that the values fit together (beyond their types); raise :class:`ConfigError`; return self."""

        def fail(key: str, message: str) -> None:
            raise ConfigError(f"{key} in {source}: {message}")

        model, data, method, training = self.model, self.data, self.method, self.training
        if not model.path:
            fail("model.path", "required: a local directory holding the model (disel never downloads)")
        if model.task_type == "sequence_classification":
            if model.num_labels is None:
                fail("model.num_labels", "required for sequence_classification (a positive int)")
            if data.label_names is not None and len(data.label_names) != model.num_labels:
                fail(
                    "data.label_names", f"has {len(data.label_names)} names but model.num_labels is {model.num_labels}"
                )
        if not data.train_files and data.dataset is None:
            fail(
                "data.train_files", "give local training files, or data.dataset (a locally available `datasets` source)"
            )
        if data.train_files and data.dataset is not None:
            fail("data.dataset", "give either data.train_files or data.dataset, not both")
        if data.validation_fraction > 0 and (data.validation_files or data.dataset_validation_split):
            fail("data.validation_fraction", "hold out a fraction OR give validation files/split, not both")

        ada = method.adalora
        if method.name == "adalora":
            if ada.tinit_ratio is not None and ada.tinit:
                fail("method.adalora.tinit_ratio", "give tinit or tinit_ratio, not both")
            if ada.tfinal_ratio is not None and ada.tfinal:
                fail("method.adalora.tfinal_ratio", "give tfinal or tfinal_ratio, not both")
            if ada.init_r is not None and ada.init_r < method.r:
                fail("method.adalora.init_r", f"must be >= the target rank method.r={method.r}, got {ada.init_r}")

        if not training.output_dir:
            fail("training.output_dir", "required: the directory for checkpoints and train_result.json")
        for key, reason in _SET_BY_DISEL.items():
            if key in training.model_fields_set:
                fail(f"training.{key}", f"is set by disel ({reason}); remove it from the recipe")
        return self


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def read_recipe(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw dict of a YAML/JSON recipe with its ``base`` resolved: one recipe file, or a list of them (e.g. a
    setting and a method overlay), paths relative to this file; the recipe's own keys win."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {str(path)!r}: its base chain comes back to itself")
    raw = read_mapping(path)
    bases = raw.pop("base", None)
    bases = [bases] if isinstance(bases, str) else [] if bases is None else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"base in {path}: expected a recipe file path or a list of them, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:  # later bases overlay earlier ones, and the recipe overlays them all
        merged = merge(merged, read_recipe(path.parent / base, (*_seen, path.resolve())))
    return merge(merged, raw)


def read_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML or JSON (``.json``) file (empty: ``{}``); ConfigError naming the file otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = json.loads(text) if str(path).lower().endswith(".json") else yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001 — re-raised with the file name
        raise ConfigError(f"cannot parse config file {str(path)!r}: {error}") from error
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(raw).__name__}")
    return raw


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``overlay``, nested dicts merged key by key (lists and scalars replaced)."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML or JSON (``.json``) recipe, resolve its base, apply ``"section.key=value"`` overrides (values
    parsed as YAML: ``10`` → int, ``[a,b]`` → list, ``null`` → None), validate; :class:`ConfigError` otherwise."""
    return config_from_dict(apply_overrides(read_recipe(path), overrides), source=str(path))


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``"a.b.c=value"`` set (value parsed as YAML). Unknown keys are caught later."""
    overlay: dict[str, Any] = {}
    for override in overrides:
        key, sep, value_text = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {override!r} must have the form section.key=value")
        try:
            value = yaml.safe_load(value_text)  # an empty value is None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {override!r}: cannot parse the value: {error}") from error
        *sections, leaf = key.split(".")
        for depth in range(1, len(sections) + 1):
            node = functools.reduce(lambda d, k: d.get(k) if isinstance(d, dict) else None, sections[:depth], raw)
            if node is not None and not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {'.'.join(sections[:depth])} is not a section")
        functools.reduce(lambda d, k: d.setdefault(k, {}), sections, overlay)[leaf] = value
    return merge(raw, overlay)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a nested dict (``source`` names it in errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level in {source}: expected a mapping of recipe sections, got {raw!r}")
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise _config_error(error, source) from None
    return config.validate_values(source)


_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping",
    "finite_number": "a finite number",
    "model": "a mapping of fields",
}


def _config_error(error: ValidationError, source: str) -> ConfigError:
    """pydantic's first error in this module's words: the dotted key, the file, what was expected (for a
    union, every member's expectation)."""
    errors = error.errors()
    location = _field_location(errors[0]["loc"])
    key = ".".join(str(part) for part in location).replace(".[", "[")
    if errors[0]["type"] == "extra_forbidden":
        known = _section_model(location[:-1]).model_fields
        label = ".".join(location[:-1]) or "the top level"
        near = difflib.get_close_matches(location[-1], known, n=3)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        return ConfigError(f"unknown key {key!r} in {source}; {hint}the keys of {label} are: {', '.join(known)}")
    same_field = [e for e in errors if _field_location(e["loc"]) == location]
    expected = " or ".join(dict.fromkeys(_expected(e) for e in same_field))
    return ConfigError(f"{key} in {source}: expected {expected}, got {errors[0]['input']!r}")


def _field_location(loc: tuple) -> tuple:
    """``loc`` without pydantic's union-member tags (``list[str]``, ``str`` ...); list indices as ``[i]``."""
    tags = {"str", "int", "float", "bool", "dict", "list", "none"}
    return tuple(
        f"[{part}]" if isinstance(part, int) else part
        for part in loc
        if not (isinstance(part, str) and ("[" in part or part in tags))
    )


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _expected(error: dict[str, Any]) -> str:
    if error["type"] == "literal_error":
        return f"one of {error['ctx']['expected']}"
    if error["type"] in _BOUNDS:
        return f"a number {_BOUNDS[error['type']]} {next(iter(error['ctx'].values()))}"
    return next((text for name, text in _EXPECTED.items() if error["type"].startswith(name)), error["msg"])


def _section_model(location: tuple[str, ...]) -> type[BaseModel]:
    """The model of the section at ``location``; sections nest only as models (extra keys inside a
    ``training`` value are not refused, so an unknown key never lies deeper than the training section)."""
    model: type[BaseModel] = ExperimentConfig
    for part in location:
        model = training_section_model() if part == "training" else model.model_fields[part].annotation
    return model
