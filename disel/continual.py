"""Task branches for continual learning: a new gated branch per task, earlier ones frozen (issue 18).

::

    model = get_peft_model(base, disel.DiselConfig(r=8, lora_alpha=16, target_modules=[...]))
    train(model, task_1)
    disel.add_task_branch(model, r=8)        # or model.add_task_branch(r=8)
    train(model, task_2)                     # disel.param_groups / DiselTrainer see only the new branch
    model.save_pretrained(path)              # one adapter; PeftModel.from_pretrained rebuilds every branch

Each adapted layer then computes ``h = W0 x + Σ_k s_k · B_k diag(σ(W_g,k x + b_g,k)) A_k x`` over its
branches k (THEORY.md §1, eq. DISeL, once per branch), all active at inference: no task identity is
given, each branch's gates decide where it acts.

Design, and why it is exact:

* **Frozen branches are buffers** (:class:`~disel.layers.FrozenBranch`), not parameters with
  ``requires_grad=False`` or masked gradients. An optimizer never holds them, so Adam's moments, weight
  decay (which AdamW applies to every row of a parameter, gradient or not), ``model.requires_grad_(True)``
  and PEFT's ``set_adapter`` (which re-enables ``requires_grad`` on adapter modules) cannot move them.
  They are still in ``state_dict`` under the ``disel_`` prefix (``...q_proj.disel_frozen.<adapter>.<k>.A``),
  so PEFT's save and load plumbing handles them like any adapter tensor.
* **Each branch is its own** :func:`~disel.functional.disel_update` **call, summed in the order the
  branches were added**, the trainable one last. Freezing branch k reproduces the call it made while
  trainable, bit for bit, and the new branch starts with ``B = 0`` (update exactly 0), so adding a branch
  changes no output bit. (Concatenating all branches into one rank-Σr call could change the reduction
  order of the ``B`` matmul and with it the last bits.)
* **The config records the structure**: ``DiselConfig.frozen_branches`` lists each earlier branch's
  ``r``, ``lora_alpha``, ``rank_pattern`` and ``alpha_pattern``; ``r`` / ``lora_alpha`` / the patterns
  describe the trainable branch, as before. A reload builds zero branches of those shapes that the saved
  weights fill (a missing tensor is refused, see :func:`disel.tuner.model.check_saved_weights_land`).

Interplay: :func:`disel.record_gates` records every branch of a layer as one gate vector, earliest branch
first (slice it with :func:`task_branch_ranks`). The component tools of :mod:`disel.components`
(``component_statistics``, ``prune``, ``merge_static``) see the trainable branch only: frozen branches
are neither measured, pruned nor merged. ``add_weighted_adapter`` and merging refuse branched adapters.
Pruning or folding a layer's trainable branch down to rank 0 would remove the adapter from that layer, and
its frozen branches with it: ``prune`` and ``merge_static`` refuse that, naming the layer.
"""

from __future__ import annotations

from peft import PeftModel
from torch import nn

from .layers import DiselLinear
from .tuner.layer import DiselLayer
from .tuner.model import DiselModel

__all__ = ["add_task_branch", "task_branch_ranks"]


def _tuner(model: nn.Module) -> DiselModel | None:
    if isinstance(model, PeftModel):
        model = model.base_model
    return model if isinstance(model, DiselModel) else None


def add_task_branch(
    model: nn.Module, r: int | None = None, lora_alpha: float | None = None, adapter_name: str = "default"
) -> nn.Module:
    """Freeze every component of adapter ``adapter_name`` and add a new trainable gated branch to each layer.

    Args:
        model: a PEFT DISeL model (``get_peft_model(base, DiselConfig(...))`` or ``PeftModel.from_pretrained``
            with ``is_trainable=True``), or any module holding :class:`~disel.layers.DiselLinear` layers.
        r: rank of the new branch in every layer that holds the adapter. Default: the adapter's ``r``.
        lora_alpha: scaling numerator of the new branch (``s = lora_alpha / r``). Default: the adapter's
            scaling ``lora_alpha / r`` times the new ``r``, i.e. the same ``s``.
        adapter_name: the PEFT adapter to extend (ignored for ``DiselLinear`` layers).

    The new branch is initialised as the config says (``A`` and ``W_g`` Kaiming or zero, ``b_g`` the
    configured gate bias) with ``B = 0``, so outputs are exactly unchanged. Returns ``model``.

    Raises:
        ValueError: a non-positive ``r`` or ``lora_alpha``; an adapter the model does not hold; a model with
            no DISeL layer.
    """
    tuner = _tuner(model)
    if tuner is not None:
        tuner.add_task_branch(r=r, lora_alpha=lora_alpha, adapter_name=adapter_name)
        return model
    layers = [m for m in model.modules() if isinstance(m, DiselLinear)]
    if not layers:
        raise ValueError(
            f"add_task_branch needs a PEFT DISeL model or DiselLinear layers; got a {type(model).__name__}"
        )
    for layer in layers:
        layer.add_task_branch(r, lora_alpha)
    return model


def task_branch_ranks(model: nn.Module, adapter_name: str = "default") -> dict[str, list[int]]:
    """Per adapted layer (module path relative to the base model), the ranks of its branches, earliest first,
    the trainable one last. The gate vector :func:`disel.record_gates` records for a layer is these branches'
    gates in this order, so ``ranks`` gives the slice of each branch."""
    tuner = _tuner(model)
    root = model if tuner is None else tuner.model
    ranks = {}
    for path, layer in root.named_modules():
        if isinstance(layer, DiselLayer) and adapter_name in layer.disel_A:
            ranks[path] = [b.rank for b in layer.frozen_branches(adapter_name)] + [int(layer.r[adapter_name])]
        elif isinstance(layer, DiselLinear):
            ranks[path] = [b.rank for b in layer.disel_frozen] + [layer.r]
    return ranks
