"""The one training entry of the experiment path: :func:`train` (config → trained adapter + result file).

Built on ``transformers.Trainer``: DISeL trains with :class:`disel.DiselTrainer` (a separate, larger gate
learning rate, no weight decay on gates); LoRA, DoRA, AdaLoRA (PEFT's own) and full fine-tuning with the plain
``Trainer``. Several processes (``accelerate launch`` / ``torchrun``) train data-parallel with no change; the
result file records the world size and a hash of every rank's trainable parameters (equal: the replicas
stayed identical).

Files written to ``training.output_dir``: ``run_config.yaml`` (the resolved config, at the start; a resume
refuses changed keys), the Trainer's ``checkpoint-<step>/`` folders (AdaLoRA adds ``adalora_state.pt``; a
resume falls back past a damaged one: :mod:`.checkpoints`), the final adapter (the whole model for ``full``)
and tokenizer, and last, atomically, ``train_result.json`` (:class:`~disel.experiments.schemas.TrainResult`):
its presence means the run finished and the final adapter beside it is complete.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import math
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback

from disel import DiselConfig, DiselTrainer
from disel.io import write_bytes_atomic, write_yaml_atomic

from ..config import ConfigError, ExperimentConfig
from ..data.collator import CausalLMCollator
from ..data.datasets import PreparedData, prepare_data
from ..models import check_model_dir, force_offline, load_model, load_tokenizer, portable_base_name
from ..schemas import TRAIN_RESULT_FILE as RESULT_FILE
from ..schemas import TrainResult
from .checkpoints import (
    RUN_CONFIG_FILE,
    CheckpointRecordCallback,
    check_config_unchanged,
    complete_checkpoints,
    resolve_resume,
)

_ADALORA_STATE = "adalora_state.pt"
_ALLOCATOR_STATISTICS = ("ipt", "exp_avg_ipt", "exp_avg_unc")


# AdaLoRA's schedule length until AdaLoraScheduleCallback sets the Trainer's own count when training starts
# (the adapter's shape does not depend on it; a recipe's epochs are turned into steps by the Trainer alone).
_PLACEHOLDER_TOTAL_STEP = 1_000_000


def build_peft_config(config: ExperimentConfig):
    """The PEFT config of ``config.method`` (None for ``full``)."""
    method = config.method
    if method.name == "full":
        return None
    common = {
        "lora_alpha": method.scaling_alpha,
        "lora_dropout": method.lora_dropout,
        "target_modules": method.target_modules,
        "modules_to_save": method.modules_to_save,
        "task_type": "CAUSAL_LM" if config.model.task_type == "causal_lm" else "SEQ_CLS",
    }
    if method.name == "disel":
        return DiselConfig(r=method.r, **method.disel_settings(), **common)
    if method.name in ("lora", "dora"):
        return LoraConfig(r=method.r, use_dora=method.name == "dora", **common)
    settings = method.adalora
    total = settings.total_step or _PLACEHOLDER_TOTAL_STEP
    tinit, tfinal = _adalora_phases(settings, total)
    schedule = settings.model_dump(include={"deltaT", "beta1", "beta2", "orth_reg_weight"})
    init_r = settings.init_r or math.ceil(1.5 * method.r)
    return AdaLoraConfig(
        target_r=method.r, init_r=init_r, tinit=tinit, tfinal=tfinal, total_step=total, **schedule, **common
    )


def _adalora_phases(settings, total: int) -> tuple[int, int]:
    tinit = round(settings.tinit_ratio * total) if settings.tinit_ratio is not None else settings.tinit
    tfinal = round(settings.tfinal_ratio * total) if settings.tfinal_ratio is not None else settings.tfinal
    if tinit >= total - tfinal:
        raise ConfigError(
            f"method.adalora: tinit={tinit} must be below total_step - tfinal = {total} - {tfinal}; the pruning "
            "phase would be empty (shorten tinit/tfinal or train longer)"
        )
    return tinit, tfinal


class AdaLoraScheduleCallback(TrainerCallback):
    """Runs AdaLoRA's budget schedule inside ``transformers.Trainer``, and makes it resumable.

    * ``on_train_begin``: sets the schedule's ``total_step`` to the Trainer's exact ``max_steps`` (unless the
      config fixed it) and restores the importance statistics saved in the checkpoint being resumed.
    * ``on_optimizer_step``: ``update_and_allocate(global_step)`` after the optimizer step and before
      ``zero_grad`` (the importance scores read the gradients), as PEFT documents.
    * ``on_save``: saves the importance statistics and rank pattern into the checkpoint (``adalora_state.pt``);
      PEFT keeps them only in memory, so a resumed run would otherwise restart them from zero and prune differently.
    """

    def __init__(self, settings, resume_from: str | None = None):
        self.settings = settings
        self.resume_from = resume_from

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        tuner = model.base_model
        peft_config = tuner.peft_config[tuner.trainable_adapter_name]
        if self.settings.total_step is None:
            peft_config.total_step = state.max_steps
            peft_config.tinit, peft_config.tfinal = _adalora_phases(self.settings, state.max_steps)
        path = None if self.resume_from is None else Path(self.resume_from) / _ADALORA_STATE
        if path is not None and path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            for key in _ALLOCATOR_STATISTICS:  # the allocator reads them through these attributes only
                setattr(tuner.rankallocator, key, {k: v.to(args.device) for k, v in saved[key].items()})
            peft_config.rank_pattern = saved["rank_pattern"]

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            tuner = model.base_model
            saved = {
                key: {k: v.detach().cpu() for k, v in getattr(tuner.rankallocator, key).items()}
                for key in _ALLOCATOR_STATISTICS
            }
            saved["rank_pattern"] = tuner.peft_config[tuner.trainable_adapter_name].rank_pattern
            buffer = io.BytesIO()
            torch.save(saved, buffer)
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # the Trainer has just written it
            write_bytes_atomic(checkpoint / _ADALORA_STATE, buffer.getvalue())


class AdaLoraTrainer(Trainer):
    """``Trainer`` whose checkpoints hold AdaLoRA's full-size (masked, not yet pruned) matrices.

    PEFT saves an AdaLoRA adapter with a rank pattern already cut down to the kept ranks, which cannot be
    loaded back into the ``init_r``-sized modules being trained, so a resume would fail. Checkpoints are
    therefore written without the rank pattern (pruned components are zero in ``lora_E``: the same function);
    the pattern travels in ``adalora_state.pt``. The final adapter is PEFT's usual, pruned format.
    """

    def _save_checkpoint(self, model, trial):
        peft_config = self.model.peft_config[self.model.active_adapter]
        rank_pattern, peft_config.rank_pattern = peft_config.rank_pattern, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            peft_config.rank_pattern = rank_pattern


def training_arguments(config: ExperimentConfig, has_validation: bool):
    """The recipe's ``training`` section as ``transformers.TrainingArguments``, validated by transformers.

    Filled in where the recipe leaves them unset: evaluation each epoch when there is validation data,
    ``ddp_find_unused_parameters=False`` for adapters (every trainable parameter takes part in every step),
    loss-only evaluation for causal LMs (gathering (batch, length, vocab) logits would only cost memory),
    non-reentrant activation checkpointing (the embeddings are frozen, so no input requires grad).
    """
    from transformers import TrainingArguments

    values = config.training.model_dump(exclude_unset=True)
    values.setdefault("eval_strategy", "epoch" if has_validation else "no")
    if values["eval_strategy"] != "no" and not has_validation:
        raise ConfigError(
            f"training.eval_strategy in the recipe is {values['eval_strategy']!r} but there is no validation data"
        )
    if config.method.name != "full":
        values.setdefault("ddp_find_unused_parameters", False)
    values.setdefault("prediction_loss_only", config.model.task_type == "causal_lm")
    for prefix in ("gradient_checkpointing", "activation_checkpointing"):
        if values.get(prefix):
            values.setdefault(f"{prefix}_kwargs", {"use_reentrant": False})
    values.update(remove_unused_columns=False, label_names=["labels"])
    try:
        return TrainingArguments(**values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"training in the recipe: transformers.TrainingArguments refused it: {error}") from error


def _accuracy(eval_prediction) -> dict[str, float]:
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((logits.argmax(-1) == eval_prediction.label_ids).mean())}


def _build_trainer(config, args, model, tokenizer, data: PreparedData, callbacks, resume_from) -> Trainer:
    """The Trainer of ``config.method``: DISeL's reads the gate learning rate from the model's ``DiselConfig``."""
    from transformers import DataCollatorWithPadding

    causal = config.model.task_type == "causal_lm"
    callbacks = list(callbacks)
    if config.method.name == "adalora":
        callbacks.insert(0, AdaLoraScheduleCallback(config.method.adalora, resume_from))
    trainer_class = {"adalora": AdaLoraTrainer, "disel": DiselTrainer}.get(config.method.name, Trainer)
    return trainer_class(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=CausalLMCollator(int(tokenizer.pad_token_id)) if causal else DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=None if causal else _accuracy,
        callbacks=callbacks,
    )


def _parameter_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", "peft", "accelerate", "disel")
    return {name: importlib.import_module(name).__version__ for name in names}


def _final_evaluation(trainer) -> dict[str, Any]:
    """Metrics at the final step: the evaluation the schedule already ran there, else a new one."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), {})
    return dict(last) if last.get("step") == trainer.state.global_step else trainer.evaluate()


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _prepare(config: ExperimentConfig, callbacks, resume_from: str | None, reseed):
    """Tokenizer, data, training arguments, model with its adapter, and the Trainer, in that order: data and
    arguments before the model, so a malformed row or setting surfaces in seconds, not after loading 7B
    parameters."""
    from transformers import AutoModelForSequenceClassification

    model_config = config.model
    check_model_dir(model_config.path, model_config.gguf_file)
    tokenizer = load_tokenizer(
        model_config.path, gguf_file=model_config.gguf_file, trust_remote_code=model_config.trust_remote_code
    )
    data = prepare_data(config.data, tokenizer, model_config.task_type, model_config.num_labels)
    args = training_arguments(config, data.validation is not None)
    loading = {"dtype", "gguf_file", "attn_implementation", "trust_remote_code"}  # unset ones: transformers' default
    kwargs = model_config.model_dump(include=loading, exclude_none=True)
    if model_config.task_type == "sequence_classification":  # a fresh num_labels head
        kwargs.update(model_class=AutoModelForSequenceClassification, num_labels=model_config.num_labels)
    model = load_model(model_config.path, **kwargs)
    if model.config.pad_token_id is None:  # decoder classifiers find the last token through the pad id
        model.config.pad_token_id = tokenizer.pad_token_id
    reseed()  # the adapter's initialisation must not depend on what model loading drew
    if config.method.name == "full":
        model.requires_grad_(True)
    else:
        model = get_peft_model(model, build_peft_config(config))
    return _build_trainer(config, args, model, tokenizer, data, callbacks, resume_from), data


def _result(config: ExperimentConfig, trainer, data, train_output, eval_metrics, resume_from, runtime_s) -> TrainResult:
    """The :class:`TrainResult` of a finished run (gathers every rank's parameter hash: call on all ranks)."""
    from accelerate.utils import gather_object

    sha_per_rank = gather_object([_parameter_sha256(trainer.model)])
    state, output_dir = trainer.state, Path(config.training.output_dir)
    log_history = list(state.log_history)
    parameters = list(trainer.model.parameters())
    recipe = config.to_dict()  # the base recorded as it is named everywhere (the SmolLM2 conversion: its hub name)
    recipe["model"]["path"] = portable_base_name(config.model.path)
    return TrainResult(
        name=config.name,
        method=config.method.name,
        rank=None if config.method.name == "full" else config.method.r,
        task_type=config.model.task_type,
        model_path=recipe["model"]["path"],
        config=recipe,
        output_dir=str(output_dir),
        world_size=trainer.args.world_size,
        global_step=state.global_step,
        epoch=_float_or_none(state.epoch),
        final_train_loss=next((_float_or_none(e["loss"]) for e in reversed(log_history) if "loss" in e), None),
        train_loss=_float_or_none(train_output.training_loss),
        eval={k: float(v) for k, v in eval_metrics.items() if isinstance(v, (int, float))},
        loss_history=[[e["step"], float(e["loss"])] for e in log_history if "loss" in e],
        eval_history=[e for e in log_history if any(k.startswith("eval_") for k in e)],
        log_history=log_history,
        checkpoints=[
            {"path": path.name, "step": int(path.name.removeprefix("checkpoint-"))}
            for path in complete_checkpoints(output_dir)
        ],
        resumed_from=resume_from,
        runtime_s=runtime_s,
        data=dict(data.stats),
        parameters={
            "trainable": sum(p.numel() for p in parameters if p.requires_grad),
            "total": sum(p.numel() for p in parameters),
        },
        parameter_sha256_per_rank=list(sha_per_rank),
        versions=_versions(),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def train(
    config: ExperimentConfig, *, callbacks: Sequence[Any] = (), allow_config_change: Sequence[str] = ()
) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data`` with ``config.method``; return (and save) the result.

    Every process of a data-parallel launch calls this; the main process writes the files. Seeds are set
    before the adapter is created, so a run is reproducible from its config, and a resumed run continues
    exactly where it stopped (the Trainer restores weights, optimizer, scheduler, RNG and data order).

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (progress reporting, tests).
    ``allow_config_change``: dotted config keys (wildcards allowed) that may differ from the saved
    ``run_config.yaml`` when resuming; any other change is refused.

    Raises:
        ConfigError: inconsistent settings, an ``output_dir`` holding a run but no ``resume``, or a changed config.
        DamagedCheckpointError: no intact checkpoint to resume from (the message names the damaged file).
        FileNotFoundError: ``model.path`` is not a local model.
        disel.experiments.data.datasets.DataFormatError: a missing file or a malformed row (file, line, expected key).
    """
    from transformers import enable_full_determinism, set_seed

    started = time.time()
    config.validate_values()
    force_offline()
    training = config.training
    resume_from = resolve_resume(training)
    if resume_from is not None:  # before run_config.yaml is replaced by this config
        check_config_unchanged(config, allow_config_change, resume_from)
    seed_everything = enable_full_determinism if training.full_determinism else set_seed
    seed_everything(training.seed)
    callbacks = [*callbacks, CheckpointRecordCallback(config.to_dict())]  # each checkpoint keeps its recipe
    trainer, data = _prepare(config, callbacks, resume_from, reseed=lambda: seed_everything(training.seed))
    is_main = trainer.is_world_process_zero()
    output_dir = Path(training.output_dir)
    if is_main:
        write_yaml_atomic(output_dir / RUN_CONFIG_FILE, config.to_dict())

    train_output = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.is_fsdp_enabled:  # the final adapter / model as one full state dict, not per-rank shards
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(output_dir))
    eval_metrics = _final_evaluation(trainer) if data.validation is not None else {}
    result = _result(config, trainer, data, train_output, eval_metrics, resume_from, time.time() - started)
    if is_main:
        result.write(output_dir / RESULT_FILE)
    trainer.accelerator.wait_for_everyone()
    return result
