"""Optimizer parameter groups for DISeL: two learning rates, no weight decay on gates (THEORY.md §1).

The gate ``(W_g, b_g)`` solves a different problem from ``(A, B)`` (deciding *when* to apply the update,
not *what* it is) and the paper trains it with a larger learning rate: 1e-3 against 2e-4 for Llama and
Mistral, i.e. 5×. The gate learning rate is the plasticity/retention knob: larger opens more gates.
Gate parameters get no weight decay, since decay pulls ``W_g`` to 0 and with it the gate's input
dependence.

* :func:`param_groups` builds AdamW-ready groups for any model containing :class:`~disel.layers.DiselGate`
  modules (the standalone :class:`~disel.layers.DiselLinear` or the PEFT model).
* :class:`DiselOptimizerMixin` builds a trainer's optimizer from those groups; it composes with any
  ``transformers.Trainer`` subclass (TRL's ``SFTTrainer``, ``DPOTrainer``, ...). :class:`DiselTrainer` is the
  mixin + ``Trainer``, so a Trainer recipe needs no hand-written optimizer.
* :func:`watch_gate_groups` warns once when a DISeL model is trained by an optimizer without the gate group.
"""

from __future__ import annotations

import math
import warnings
import weakref
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ._validate import check_non_negative_finite
from .layers import DiselGate

__all__ = [
    "DEFAULT_GATE_LR_RATIO",
    "DiselGateGroupWarning",
    "DiselOptimizerMixin",
    "DiselTrainer",  # noqa: F822 (built on first access by the module __getattr__ below)
    "delay_gate_updates",
    "gate_lr_ratio_from_config",
    "param_groups",
    "watch_gate_groups",
]

# Published ratio of the gate learning rate to the LoRA learning rate (1e-3 / 2e-4, Llama/Mistral runs).
DEFAULT_GATE_LR_RATIO = 5.0

# Normalisation layers whose parameters never take weight decay. transformers' RMSNorm classes are
# model-specific (LlamaRMSNorm, ...) and not listed; their weight is 1-D, which the rule below catches.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, InstanceNorm*d
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),  # torch >= 2.4
)


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {name}={value!r}")
    return float(value)


def gate_lr_ratio_from_config(model: nn.Module) -> float | None:
    """The ``gate_lr_ratio`` stored in a PEFT model's DISeL config, or ``None`` if there is none.

    Read by duck typing: ``model.peft_config`` (a dict adapter name → config on ``PeftModel`` and on PEFT
    tuner models) entries that have a ``gate_lr_ratio`` attribute. Raises ``ValueError`` if the
    adapters disagree (one optimizer cannot follow two ratios; pass ``gate_lr`` explicitly).
    """
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return None
    ratios = {
        name: config.gate_lr_ratio
        for name, config in configs.items()
        if getattr(config, "gate_lr_ratio", None) is not None
    }
    if not ratios:
        return None
    if len(set(ratios.values())) > 1:
        raise ValueError(
            f"the model's DISeL adapters have different gate_lr_ratio values {ratios}; pass gate_lr or "
            "gate_lr_ratio explicitly"
        )
    return _check_positive("gate_lr_ratio (from the PEFT config)", next(iter(ratios.values())))


def delay_gate_updates(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Hold the gates still for the first ``steps`` optimizer steps: the ``"gate"`` group's learning rate is 0
    there, then follows the scheduler's own factor. Returns ``scheduler``, changed in place.

    Adam's moment estimates still update during the delay (the step runs, with learning rate 0), so the gates
    start moving with warm moments, as in the toy's recipe. ``LambdaLR`` keeps one factor per parameter
    group; only the gate group's is wrapped. The group is the one :func:`param_groups` names ``"gate"``.
    Works with a manual loop as with :class:`DiselTrainer` (which calls it with ``DiselConfig.gate_delay_steps``).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got steps={steps!r}")
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        raise TypeError(f"scheduler must be a torch LambdaLR (one factor per group), got {type(scheduler).__name__}")
    groups = scheduler.optimizer.param_groups
    gate = [i for i, group in enumerate(groups) if group.get("name") == "gate"]
    if not gate:
        raise ValueError("the optimizer has no param group named 'gate' (build it from disel.param_groups)")
    for i in gate:
        factor = scheduler.lr_lambdas[i]
        scheduler.lr_lambdas[i] = lambda step, factor=factor: 0.0 if step < steps else factor(step)
        groups[i]["lr"] = scheduler.base_lrs[i] * scheduler.lr_lambdas[i](scheduler.last_epoch)
    return scheduler


def param_groups(
    model: nn.Module,
    lr: float,
    gate_lr: float | None = None,
    weight_decay: float = 0.0,
    gate_lr_ratio: float | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim.AdamW(param_groups(model, lr=...))``.

    Groups (each a dict with ``params``, ``lr``, ``weight_decay`` and a ``name``; empty ones are dropped):

    * ``"decay"``: trainable parameters with two or more dimensions (``A``, ``B``, a trained head) at ``lr``
      and ``weight_decay``;
    * ``"no_decay"``: trainable biases, norm weights and other 1-D parameters, and every parameter of a
      normalisation module, at ``lr`` without weight decay;
    * ``"gate"``: the parameters of every :class:`~disel.layers.DiselGate` (found by type, never by
      name), at ``gate_lr`` without weight decay.

    Args:
        model: any module; only parameters with ``requires_grad`` are included, each exactly once (tied
            parameters are deduplicated).
        lr: learning rate of ``A``, ``B`` and any other trainable parameter.
        gate_lr: learning rate of the gate parameters. Default ``lr * gate_lr_ratio``.
        weight_decay: weight decay of the ``"decay"`` group (≥ 0).
        gate_lr_ratio: used when ``gate_lr`` is not given. Default: the PEFT config's ``gate_lr_ratio``
            if ``model`` is a PEFT model with a DISeL config (see :func:`gate_lr_ratio_from_config`),
            else :data:`DEFAULT_GATE_LR_RATIO` (5.0, the published 1e-3 / 2e-4).

    Raises:
        ValueError: a non-positive or non-finite ``lr``, ``gate_lr`` or ``gate_lr_ratio``; a negative
            ``weight_decay``; both ``gate_lr`` and ``gate_lr_ratio`` given; no trainable parameters.
    """
    lr = _check_positive("lr", lr)
    weight_decay = check_non_negative_finite("param_groups", "weight_decay", weight_decay)
    gate_lr = _resolve_gate_lr(model, lr, gate_lr, gate_lr_ratio)
    gate, decay, no_decay = _split_trainable(model)
    groups = [
        {"name": "decay", "params": decay, "lr": lr, "weight_decay": float(weight_decay)},
        {"name": "no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0},
        {"name": "gate", "params": gate, "lr": gate_lr, "weight_decay": 0.0},
    ]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError(f"model has no trainable parameters (none with requires_grad); got a {type(model).__name__}")
    return groups


def _resolve_gate_lr(model: nn.Module, lr: float, gate_lr: float | None, gate_lr_ratio: float | None) -> float:
    """The gate learning rate: ``gate_lr`` if given, else ``lr`` times the given, PEFT-config or default ratio."""
    if gate_lr is not None and gate_lr_ratio is not None:
        raise ValueError(
            f"give either gate_lr or gate_lr_ratio, not both (got gate_lr={gate_lr!r}, gate_lr_ratio={gate_lr_ratio!r})"
        )
    if gate_lr is not None:
        return _check_positive("gate_lr", gate_lr)
    if gate_lr_ratio is None:
        gate_lr_ratio = gate_lr_ratio_from_config(model)
    ratio = DEFAULT_GATE_LR_RATIO if gate_lr_ratio is None else _check_positive("gate_lr_ratio", gate_lr_ratio)
    return lr * ratio


def _split_trainable(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """``(gate, decay, no_decay)``, each trainable parameter once; gates go first, so a gate's bias stays a gate."""
    seen: set[int] = set()
    gate: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, DiselGate):
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    gate.append(p)

    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if is_norm or p.ndim < 2 else decay).append(p)
    return gate, decay, no_decay


class DiselOptimizerMixin:
    """Gives any ``transformers.Trainer`` subclass the DISeL optimizer groups (:func:`param_groups`).

    Put it first among the bases, so its ``create_optimizer`` runs before the trainer's::

        from trl import SFTTrainer

        class DiselSFTTrainer(DiselOptimizerMixin, SFTTrainer):
            pass

        trainer = DiselSFTTrainer(model=..., args=..., train_dataset=..., peft_config=disel.DiselConfig(...))

    The optimizer class and its settings come from the ``TrainingArguments`` exactly as in ``Trainer``
    (``optim``, default AdamW, with ``learning_rate``, ``adam_beta1``/``adam_beta2``, ``adam_epsilon``);
    the parameters are grouped by :func:`param_groups` with ``lr = args.learning_rate``,
    ``weight_decay = args.weight_decay`` and the gate learning rate from ``gate_lr`` / ``gate_lr_ratio``
    (default: the PEFT config's ``gate_lr_ratio``, else 5×). The scheduler then scales every group's
    learning rate by the same factor, so the ratio holds throughout training. An optimizer passed as
    ``optimizers=(optimizer, scheduler)`` is used as given. The groups are built from the model the trainer
    trains, so a trainer that wraps the model itself (TRL's ``peft_config=``) is covered.

    Args (keyword-only, beyond the trainer's own):
        gate_lr: absolute learning rate of the gate parameters.
        gate_lr_ratio: gate learning rate / ``args.learning_rate`` (not together with ``gate_lr``).
    """

    def __init__(
        self, *args: Any, gate_lr: float | None = None, gate_lr_ratio: float | None = None, **kwargs: Any
    ) -> None:
        if gate_lr is not None and gate_lr_ratio is not None:
            raise ValueError(
                f"give either gate_lr or gate_lr_ratio, not both (got gate_lr={gate_lr!r}, "
                f"gate_lr_ratio={gate_lr_ratio!r})"
            )
        if gate_lr is not None:
            _check_positive("gate_lr", gate_lr)
        if gate_lr_ratio is not None:
            _check_positive("gate_lr_ratio", gate_lr_ratio)
        self.gate_lr = gate_lr
        self.gate_lr_ratio = gate_lr_ratio
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        opt_model = self.model if model is None else model
        if self.optimizer is not None:
            return self._finish_optimizer(model)
        given = getattr(self, "optimizer_cls_and_kwargs", None)  # Trainer(optimizer_cls_and_kwargs=...)
        if given is not None:
            optimizer_cls, optimizer_kwargs = given
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        special = {"params", "model", "optimizer_dict"} & optimizer_kwargs.keys()
        if special or not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
            raise ValueError(
                f"{type(self).__name__} groups parameters for a standard torch optimizer, but "
                f"args.optim={self.args.optim!r} builds its own parameter layout; use optim='adamw_torch' (or "
                "another plain optimizer), or pass optimizers=(optimizer, scheduler) built from disel.param_groups"
            )
        groups = param_groups(
            opt_model,
            lr=self.args.learning_rate,
            gate_lr=self.gate_lr,
            weight_decay=self.args.weight_decay,
            gate_lr_ratio=self.gate_lr_ratio,
        )
        optimizer_kwargs.pop("weight_decay", None)  # per group, set above
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self._finish_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        # DiselConfig.gate_delay_steps: the gate group's learning rate is 0 for the first steps.
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        configs = getattr(self.model, "peft_config", None)
        delays = {getattr(c, "gate_delay_steps", 0) for c in configs.values()} if isinstance(configs, dict) else set()
        if len(delays) > 1:
            raise ValueError(f"the model's DISeL adapters have different gate_delay_steps values {sorted(delays)}")
        if delays and max(delays) > 0:
            delay_gate_updates(scheduler, max(delays))
        return scheduler

    def _finish_optimizer(self, model: nn.Module | None) -> torch.optim.Optimizer:
        # Trainer's create_optimizer with self.optimizer set only applies its own wrapping (SageMaker
        # model parallelism). transformers < 4.48 has create_optimizer(self), without the model argument.
        return super().create_optimizer() if model is None else super().create_optimizer(model)


# --- Warning when the gates are trained without their group -----------------------------------------------


class DiselGateGroupWarning(UserWarning):
    """A DISeL model's gate parameters are optimized without their own group (see :func:`watch_gate_groups`)."""


GATE_GROUP_WARNING = (
    "DISeL gate parameters (W_g, b_g) are being trained in an optimizer group shared with other parameters or "
    "with weight decay: one learning rate for gates and A, B, and decay pulling W_g to 0, unlike the published "
    "recipe (gate learning rate 5x, no decay). Fix: use disel.DiselTrainer, or mix disel.DiselOptimizerMixin into "
    "your trainer class (class MyTrainer(disel.DiselOptimizerMixin, SFTTrainer): ...), or build the optimizer "
    "from disel.param_groups(model, lr=...). Silence with warnings.filterwarnings('ignore', "
    "category=disel.optim.DiselGateGroupWarning)."
)

_watched_models: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_checked_optimizers: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
_hook_handle = None
_warned = False


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of every :class:`~disel.layers.DiselGate` in ``model`` (found by type)."""
    return [p for m in model.modules() if isinstance(m, DiselGate) for p in m.parameters() if p.requires_grad]


def has_gate_group(optimizer: torch.optim.Optimizer, gates: set[int]) -> bool:
    """Whether every group of ``optimizer`` that holds a gate parameter (ids in ``gates``) holds only gate
    parameters and has no weight decay. True also when the optimizer holds no gate parameter at all."""
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & gates and (ids - gates or group.get("weight_decay", 0.0)):
            return False
    return True


def _check_before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _hook_handle, _warned
    if optimizer in _checked_optimizers:
        return
    _checked_optimizers.add(optimizer)
    gates = {id(p) for model in list(_watched_models) for p in gate_parameters(model)}
    if gates and not has_gate_group(optimizer, gates):
        warnings.warn(GATE_GROUP_WARNING, DiselGateGroupWarning, stacklevel=3)
        _warned = True
        if _hook_handle is not None:  # warn once per process: the hook has done its job
            _hook_handle.remove()
            _hook_handle = None


def watch_gate_groups(model: nn.Module) -> None:
    """Warn (once per process) if an optimizer steps ``model``'s gate parameters without a gate group.

    Called by :class:`~disel.tuner.DiselModel` for every DISeL model, so a trainer that builds a plain
    optimizer (``transformers.Trainer``, TRL's trainers, a hand-made ``AdamW(model.parameters())``) is noticed
    whoever built it. A global optimizer step pre-hook checks each optimizer once, at its first step; after
    that its cost is one set lookup per step, and none after the warning.
    """
    global _hook_handle
    _watched_models.add(model)
    if _hook_handle is None and not _warned:
        _hook_handle = register_optimizer_step_pre_hook(_check_before_step)


def __getattr__(name: str):
    # ``DiselTrainer`` subclasses transformers.Trainer, whose import takes seconds: the class is built on
    # first access (PEP 562), so `from disel.optim import param_groups` does not pay for it.
    if name == "DiselTrainer":
        cls = _make_disel_trainer()
        globals()["DiselTrainer"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_disel_trainer() -> type:
    from transformers import Trainer

    class DiselTrainer(DiselOptimizerMixin, Trainer):
        """``transformers.Trainer`` with the DISeL optimizer groups: :class:`DiselOptimizerMixin` + ``Trainer``.

        Args (beyond ``Trainer``'s): ``gate_lr`` or ``gate_lr_ratio``, see :class:`DiselOptimizerMixin`.
        """

    DiselTrainer.__module__ = __name__
    DiselTrainer.__qualname__ = "DiselTrainer"
    return DiselTrainer
