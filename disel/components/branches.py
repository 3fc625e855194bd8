"""The adapter branches a model holds, and the edits pruning and merging make to them.

A branch is one adapter of one adapted layer: a standalone :class:`~disel.DiselLinear` or one adapter of a
PEFT :class:`~disel.tuner.DiselLayer`. Removing components rebuilds its ``A``, ``B`` and gate modules
smaller; :func:`sync_peft_config` then writes the ranks into the adapter config so plain PEFT calls save
and reload the result.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch.nn.functional as F
from peft import PeftModel
from torch import Tensor, nn

from ..functional import disel_update
from ..layers import DiselLinear
from ..tuner.layer import DiselLayer
from ..tuner.model import DiselModel

__all__ = [
    "Branch",
    "config_matches_layers",
    "find_branches",
    "keep_components",
    "refuse_emptying_branched_layers",
    "restore_modules",
    "root_model",
    "saved_modules",
    "sync_peft_config",
    "tuner_of",
]


@dataclass
class Branch:
    """One adapter of one adapted layer: a standalone :class:`DiselLinear` or one adapter of a PEFT layer."""

    path: str  # module path relative to the base model (the key rank_pattern matches)
    adapter: str
    layer: nn.Module

    @property
    def peft(self) -> bool:
        return isinstance(self.layer, DiselLayer)

    def module(self, name: str) -> nn.Module:
        """The branch's ``disel_A`` / ``disel_B`` / ``disel_gate`` / ``disel_dropout`` module."""
        return getattr(self.layer, name)[self.adapter] if self.peft else getattr(self.layer, name)

    @property
    def A(self) -> nn.Linear:  # (r, d) weight
        return self.module("disel_A")

    @property
    def B(self) -> nn.Linear:  # (m, r) weight
        return self.module("disel_B")

    @property
    def gate(self) -> nn.Linear:  # (r, d) weight, (r,) bias
        return self.module("disel_gate")

    @property
    def scaling(self) -> float:
        return float(self.layer.scaling[self.adapter] if self.peft else self.layer.scaling)

    @property
    def rank(self) -> int:
        return self.A.weight.shape[0]

    @property
    def base(self) -> nn.Module:
        return self.layer.get_base_layer() if self.peft else self.layer.base

    @property
    def name(self) -> str:
        """The key of this branch in reports: the module path, with ``/adapter`` unless it is ``default``."""
        return self.path if self.adapter == "default" else f"{self.path}/{self.adapter}"

    def adapter_input(self, x: Tensor) -> Tensor:
        """The layer input as the adapter reads it (eval mode: no dropout), in the adapter's dtype."""
        return x.to(self.gate.weight.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for m in (self.A, self.B, self.gate) for p in m.parameters())

    def update(self, x: Tensor, components: Tensor) -> Tensor:
        """``s · Σ_{i∈components} g_i(x) (a_iᵀx) b_i``: (..., d) → (..., m), for a subset of components."""
        gate = self.gate
        return disel_update(
            x,
            self.A.weight[components],
            self.B.weight[:, components],
            gate.weight[components],
            gate.bias[components],
            self.scaling,
        )

    def static_update(self, x: Tensor, components: Tensor, gate_means: Tensor) -> Tensor:
        """``s · Σ_{i∈components} ḡ_i (a_iᵀx) b_i``, the fixed linear map a static merge folds into W0."""
        b_scaled = self.B.weight[:, components] * gate_means.to(self.B.weight.dtype)  # (m, k)
        return F.linear(F.linear(x, self.A.weight[components]), b_scaled) * self.scaling  # (..., m)


def tuner_of(model: nn.Module) -> DiselModel | None:
    """The :class:`~disel.tuner.DiselModel` of a PEFT model (``None`` for a plain model with DiselLinear)."""
    if isinstance(model, PeftModel):
        model = model.base_model
    return model if isinstance(model, DiselModel) else None


def root_model(model: nn.Module) -> nn.Module:
    """The base model the adapter paths are relative to (PEFT's ``model.base_model.model``)."""
    tuner = tuner_of(model)
    return model if tuner is None else tuner.model


def find_branches(model: nn.Module, adapter_name: str | None = None, active_only: bool = False) -> list[Branch]:
    """Every adapter branch in ``model`` (optionally one adapter, or only those that act on the output)."""
    found = []
    for path, module in root_model(model).named_modules():
        if isinstance(module, DiselLayer):
            names = [n for n, _ in module.active_gates()] if active_only else list(module.disel_A.keys())
            found += [Branch(path, name, module) for name in names if adapter_name in (None, name)]
        elif isinstance(module, DiselLinear) and adapter_name in (None, "default"):
            found.append(Branch(path, "default", module))
    return found


def _sliced(module: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new module of the same type holding ``weight[rows]`` / ``weight[:, cols]`` (and ``bias[rows]``)."""
    weight = module.weight.detach()
    weight = weight[rows] if rows is not None else weight[:, cols]
    has_bias = module.bias is not None
    out_features, in_features = weight.shape
    with warnings.catch_warnings():  # a rank-0 module's init warns that it initialises nothing
        warnings.simplefilter("ignore", UserWarning)
        new = type(module)(in_features, out_features, bias=has_bias, device="meta")
    new.weight = nn.Parameter(weight.clone(), requires_grad=module.weight.requires_grad)
    if has_bias:
        bias = module.bias.detach()
        new.bias = nn.Parameter(
            (bias[rows] if rows is not None else bias).clone(), requires_grad=module.bias.requires_grad
        )
    return new


def saved_modules(branch: Branch) -> dict[str, nn.Module]:
    """The branch's modules by attribute name, to put back with :func:`restore_modules`."""
    names = ("disel_A", "disel_B", "disel_gate") + (("disel_dropout",) if branch.peft else ())
    return {name: branch.module(name) for name in names}


def keep_components(branch: Branch, keep: Tensor) -> None:
    """Keep only components ``keep`` (sorted indices) of the branch. A PEFT layer left with none loses the
    adapter (its forward skips adapters it does not hold); a standalone layer keeps a rank-0 branch (update 0)."""
    layer, name = branch.layer, branch.adapter
    if branch.peft and keep.numel() == 0:
        for attribute in ("disel_A", "disel_B", "disel_gate", "disel_dropout"):
            del getattr(layer, attribute)[name]
        layer.r.pop(name, None)
        layer.scaling.pop(name, None)
        return
    new = {
        "disel_A": _sliced(branch.A, rows=keep),
        "disel_B": _sliced(branch.B, cols=keep),
        "disel_gate": _sliced(branch.gate, rows=keep),
    }
    if branch.peft:
        for attribute, module in new.items():
            getattr(layer, attribute)[name] = module
        layer.r[name] = int(keep.numel())
    else:
        for attribute, module in new.items():
            setattr(layer, attribute, module)
        layer.r = int(keep.numel())


def refuse_emptying_branched_layers(owner: str, remaining: Iterable[tuple[Branch, int]]) -> None:
    """``remaining``: (branch, components it would keep). A PEFT layer left with none loses the adapter, and
    with it the frozen task branches (:mod:`disel.continual`) the adapter holds there: refuse before any change."""
    emptied = [
        branch.name
        for branch, kept in remaining
        if branch.peft and kept == 0 and branch.layer.frozen_branches(branch.adapter)
    ]
    if emptied:
        raise ValueError(
            f"{owner}: would remove every trainable component of {len(emptied)} layer(s) that hold frozen task "
            f"branches (first: {emptied[0]}), and with them those branches; keep at least one component there"
        )


def restore_modules(branch: Branch, modules: dict[str, nn.Module], rank: int, scaling: float) -> None:
    """Put back the modules :func:`saved_modules` returned, with the rank and scaling they had."""
    layer, name = branch.layer, branch.adapter
    if branch.peft:
        for attribute, module in modules.items():
            getattr(layer, attribute)[name] = module
        layer.r[name], layer.scaling[name] = rank, scaling
    else:
        for attribute, module in modules.items():
            setattr(layer, attribute, module)
        layer.r = rank


def sync_peft_config(model: nn.Module, adapters: Iterable[str]) -> None:
    """Write each adapter's current per-layer ranks into its config: one exact ``rank_pattern`` /
    ``alpha_pattern`` entry per layer (alpha = s · r, so the layer keeps its scaling), and layers that lost
    the adapter into ``exclude_modules`` — so ``save_pretrained`` + ``PeftModel.from_pretrained`` rebuild it."""
    tuner = tuner_of(model)
    if tuner is None:
        return
    layers = [(path, m) for path, m in tuner.model.named_modules() if isinstance(m, DiselLayer)]
    for adapter in set(adapters):
        config = tuner.peft_config[adapter]
        ranks, alphas, excluded = {}, {}, []
        for path, layer in layers:
            key = "^" + re.escape(path)  # matches exactly this module under PEFT's get_pattern_key
            if adapter in layer.disel_A:
                ranks[key] = int(layer.r[adapter])
                alphas[key] = float(layer.scaling[adapter]) * int(layer.r[adapter])
            else:
                excluded.append(path)
        # Exact entries first: get_pattern_key takes the first key that matches.
        config.rank_pattern = {**ranks, **{k: v for k, v in config.rank_pattern.items() if k not in ranks}}
        config.alpha_pattern = {**alphas, **{k: v for k, v in config.alpha_pattern.items() if k not in alphas}}
        if excluded:
            if isinstance(config.exclude_modules, str):
                config.exclude_modules = "|".join([f"(?:{config.exclude_modules})"] + [re.escape(p) for p in excluded])
            else:
                config.exclude_modules = set(config.exclude_modules or ()) | set(excluded)


def config_matches_layers(tuner: DiselModel, adapter: str) -> bool:
    """Whether ``adapter``'s config gives every layer holding it the rank and scaling it has now."""
    config = tuner.peft_config[adapter]
    for path, layer in tuner.model.named_modules():
        if isinstance(layer, DiselLayer) and adapter in layer.disel_A:
            r, alpha = config.rank_and_alpha(path)
            if r != layer.r[adapter] or not math.isclose(alpha / r, layer.scaling[adapter], rel_tol=1e-12):
                return False
    return True
