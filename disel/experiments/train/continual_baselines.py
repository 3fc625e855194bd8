"""The continual-learning baselines of issue 18 as thin glue over peft: O-LoRA and peft's OSF.

**O-LoRA** (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning"): each task
gets a new LoRA adapter; earlier adapters stay frozen and every adapter stays active at inference (no task
identity), and training adds the orthogonality penalty

    L = L_task + λ · Σ_layers Σ_{old} Σ_{a,b} |(A_old A_newᵀ)[a, b]|,   λ = 0.5 (:data:`OLORA_LAMBDA`, published),

with A the (r, d_in) down-projections: the new task's input subspace is pushed away from every earlier one. It
is plain peft multi-adapter LoRA: :func:`add_task_adapter` adds adapter ``task<k>`` (LoRA's B = 0 start leaves
the outputs unchanged), :func:`orthogonality_loss` is the penalty written once, :class:`OLoRALossMixin` adds it
to a ``Trainer``'s loss. The whole model saves with ``model.save_pretrained(dir)`` (one sub-folder per adapter)
and reloads with ``PeftModel.from_pretrained`` + ``load_adapter`` (:func:`load_task_adapters`). O-LoRA's L2 term
on the new adapter is 0 in its published scripts and is left out.

**OSF** (peft's ``OSFConfig``, Nayak et al. 2025): each wrapped weight is split by SVD into its top
``effective_rank`` singular directions (frozen) and the rest (trainable, with gradients projected away from
the top directions). peft's guide for task sequences: between tasks, fold the trained weights back in and wrap
again, so the SVD sees the updated weights, preserving a growing share of the rank (task k of n preserves k/n
of each matrix's smaller dimension, :func:`osf_effective_rank`). :func:`start_osf_task` does this. The fold must
be ``merge_and_unload()``: the guide's ``unload()`` returns the base weights without the task's update (tested
here). The projection makes the protected subspace exact (to OSF's float32 SVD) for plain gradient steps; an
optimizer that rescales coordinates (Adam, which peft's OSF guide uses) puts part of each step inside it (more
than 1% of the update's norm on a tiny Llama, tested), so OSF under AdamW protects approximately.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "OLORA_LAMBDA",
    "OLoRALossMixin",
    "add_task_adapter",
    "load_task_adapters",
    "olora_trainer_class",
    "orthogonality_loss",
    "osf_effective_rank",
    "start_osf_task",
    "task_adapter_name",
]

OLORA_LAMBDA = 0.5
"""λ of the orthogonality penalty, as published (O-LoRA's scripts: ``lamda_1 = 0.5``)."""


def task_adapter_name(index: int) -> str:
    """The adapter name of task ``index`` (0-based position in the order): ``task0``, ``task1``, ..."""
    return f"task{index}"


def _lora_layers(model: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def add_task_adapter(model: Any, config: Any, name: str | None = None) -> Any:
    """Add a LoRA adapter for the next task, freeze every earlier one, keep all active.

    Args:
        model: a ``transformers`` model (the first task: wrapped with ``get_peft_model``) or a ``PeftModel``
            holding the earlier tasks' adapters.
        config: the ``peft.LoraConfig`` of the new adapter.
        name: its name; default ``task<k>`` with k the number of adapters already present.

    Returns the ``PeftModel``; only the new adapter's parameters require gradients.
    """
    from peft import PeftModel, get_peft_model

    if not isinstance(model, PeftModel):
        model = get_peft_model(model, config, adapter_name=name or task_adapter_name(0))
    else:
        model.add_adapter(name or task_adapter_name(len(model.peft_config)), config)
    names = list(model.peft_config)
    model.base_model.set_adapter(names)  # every branch active; peft marks the active ones trainable ...
    for layer in _lora_layers(model):  # ... so freeze all but the newest
        for old in names[:-1]:
            if old in layer.lora_A:
                layer.lora_A[old].requires_grad_(False)
                layer.lora_B[old].requires_grad_(False)
    return model


def orthogonality_loss(model: torch.nn.Module, new: str, old: Sequence[str]) -> torch.Tensor:
    """Σ over LoRA layers and ``old`` adapters of Σ_{a,b} |A_old A_newᵀ| (entries of an (r_old, r_new) matrix).

    Zero (a 0-d tensor) when ``old`` is empty. Gradients reach the new adapter only when the old are frozen.
    """
    total = torch.zeros(())
    for layer in _lora_layers(model):
        if new not in layer.lora_A:
            continue
        a_new = layer.lora_A[new].weight  # (r_new, d_in)
        for name in old:
            if name in layer.lora_A:
                a_old = layer.lora_A[name].weight  # (r_old, d_in)
                total = total.to(a_new) + (a_old @ a_new.T).abs().sum()  # (r_old, r_new) → scalar
    return total


class OLoRALossMixin:
    """Put before ``transformers.Trainer``: the loss gains ``olora_lambda · orthogonality_loss`` between the newest
    adapter (the last in ``model.peft_config``) and every earlier one."""

    olora_lambda: float = OLORA_LAMBDA

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        loss, outputs = result if return_outputs else (result, None)
        peft_model = getattr(model, "module", model)  # DDP wraps the model
        names = list(peft_model.peft_config)
        penalty = self.olora_lambda * orthogonality_loss(peft_model, names[-1], names[:-1])
        if getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None:
            # the Trainer then sums micro-batch losses unscaled: count the penalty once per optimizer step
            penalty = penalty / self.args.gradient_accumulation_steps
        loss = loss + penalty.to(loss)
        return (loss, outputs) if return_outputs else loss


def olora_trainer_class(base: type | None = None) -> type:
    """``OLoRATrainer``: :class:`OLoRALossMixin` + ``base`` (default ``transformers.Trainer``)."""
    if base is None:
        from transformers import Trainer

        base = Trainer
    return type("OLoRATrainer", (OLoRALossMixin, base), {"__module__": __name__})


def load_task_adapters(base_model: torch.nn.Module, directory: str, names: Sequence[str]) -> Any:
    """Reload what ``save_pretrained(directory)`` wrote for adapters ``names`` (plain peft calls), all active.

    peft writes each non-default adapter to ``directory/<name>``.
    """
    from peft import PeftModel

    if not names:
        raise ValueError("names must list at least one adapter saved in the directory")
    model = PeftModel.from_pretrained(base_model, f"{directory}/{names[0]}", adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(f"{directory}/{name}", adapter_name=name)
    model.base_model.set_adapter(list(names), inference_mode=True)
    return model


def osf_effective_rank(task_index: int, n_tasks: int) -> int | float:
    """The preserved rank of task ``task_index`` of ``n_tasks`` (peft's progressive budget: k/n of each matrix's
    smaller dimension, a float fraction for ``OSFConfig``). Task 0 preserves the single top direction: OSF
    refuses an effective rank of 0."""
    if not 0 <= task_index < n_tasks:
        raise ValueError(f"task_index must lie in [0, n_tasks={n_tasks}), got {task_index}")
    return 1 if task_index == 0 else task_index / n_tasks


def start_osf_task(model: Any, task_index: int, n_tasks: int, target_modules: Sequence[str]) -> Any:
    """Wrap ``model`` with OSF for task ``task_index``: a ``PeftModel`` (the previous task's OSF) is first folded
    into its weights with ``merge_and_unload``, so the new SVD and the protected subspace reflect them."""
    from peft import OSFConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    config = OSFConfig(effective_rank=osf_effective_rank(task_index, n_tasks), target_modules=list(target_modules))
    return get_peft_model(model, config)
