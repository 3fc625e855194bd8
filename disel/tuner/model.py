"""``DiselModel``: the PEFT tuner that swaps target layers for :class:`DiselLinearLayer`.

Matching, freezing, saving, loading, several adapters, ``disable_adapter`` and ``unload`` are PEFT's
``BaseTuner`` machinery; this class only says which layer to build and refuses to merge.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from .._validate import check_positive_finite, check_rank
from ..optim import watch_gate_groups
from .combine import combine_cat
from .config import DiselConfig
from .layer import (
    MERGE_REFUSAL,
    SUPPORTED_BASE_LAYERS,
    DiselLayer,
    DiselLinearLayer,
    validate_config_in_use,
)

__all__ = ["DiselModel"]

# What merge_and_unload's refusal adds to the layer's: the way to the part of a merge the data allow.
STATIC_MERGE_HINT = (
    " To merge what the data allow: disel.component_statistics measures each component's gate, and "
    "disel.merge_static folds the components whose gate is constant into W0 (disel-merge-static for a saved "
    "adapter); once every gate of every layer is folded, merge_and_unload merges completely."
)


class DiselModel(BaseTuner):
    """Adds DISeL adapters (``h = W0 x + s · B diag(σ(W_g x + b_g)) A x``) to the layers a
    :class:`DiselConfig` targets. Use it through ``peft.get_peft_model(model, DiselConfig(...))``.

    ``merge_and_unload``, ``merge_adapter`` and layer ``merge`` raise ``NotImplementedError``: the update
    depends on the input, so it has no weight-space equivalent. ``unload`` returns the base model.
    """

    prefix: str = "disel_"
    tuner_layer_cls = DiselLayer
    # With target_modules=None, adapt what LoRA adapts by default for the architecture.
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(
        self,
        peft_config: DiselConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs,
    ) -> None:
        watch_gate_groups(self.model)  # warn if it is then trained without the gate optimizer group
        # rank_pattern / alpha_pattern resolved for this module, matched as PEFT's LoRA matches them.
        peft_config = peft_config.for_module(current_key)
        if isinstance(target, DiselLayer):
            target.update_layer(adapter_name, peft_config)
            return
        base_layer = target.get_base_layer() if hasattr(target, "get_base_layer") else target
        if not isinstance(base_layer, SUPPORTED_BASE_LAYERS):
            supported = ", ".join(cls.__module__ + "." + cls.__qualname__ for cls in SUPPORTED_BASE_LAYERS)
            raise TypeError(
                f"DISeL cannot adapt module '{current_key}' of type {type(base_layer).__module__}."
                f"{type(base_layer).__qualname__}: only {supported} are supported. Remove it from "
                "target_modules (or add it to exclude_modules)."
            )
        new_module = DiselLinearLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            # An adapter added next to the active one stays frozen until set_adapter activates it.
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self) -> None:
        # Allowed only for a fully static adapter: disel.merge_static folded every component into W0.
        layers = [layer for layer in self.model.modules() if isinstance(layer, DiselLayer)]
        if any(len(layer.disel_A) or len(layer.disel_frozen) for layer in layers):
            raise NotImplementedError(MERGE_REFUSAL + STATIC_MERGE_HINT)

    def add_task_branch(
        self, r: int | None = None, lora_alpha: float | None = None, adapter_name: str = "default"
    ) -> None:
        """Freeze adapter ``adapter_name``'s components and add a new trainable gated branch to every layer that
        holds it; see :mod:`disel.continual` (``peft_model.add_task_branch(r=8)`` reaches this method).

        The config's ``frozen_branches`` gains the current ``r`` / ``lora_alpha`` / patterns; ``r`` becomes
        the new branch's rank (default: unchanged) and ``lora_alpha`` its numerator (default: the same
        scaling ``lora_alpha / r``); each layer then freezes its branch and builds the new one with ``B = 0``.
        """
        owner = "add_task_branch"
        r = None if r is None else check_rank(owner, "r", r)
        lora_alpha = None if lora_alpha is None else check_positive_finite(owner, "lora_alpha", lora_alpha)
        if adapter_name not in self.peft_config:
            raise ValueError(
                f"adapter_name={adapter_name!r} is not an adapter of the model; it holds {sorted(self.peft_config)}"
            )
        config = self.peft_config[adapter_name]
        new_r = config.r if r is None else r
        frozen = {"r": config.r, "lora_alpha": config.lora_alpha}
        frozen |= {"rank_pattern": dict(config.rank_pattern), "alpha_pattern": dict(config.alpha_pattern)}
        config.frozen_branches = [*config.frozen_branches, frozen]
        config.lora_alpha = config.scaling * new_r if lora_alpha is None else lora_alpha
        config.r, config.rank_pattern, config.alpha_pattern = new_r, {}, {}
        config._validate()
        for path, layer in self.model.named_modules():
            if isinstance(layer, DiselLayer) and adapter_name in layer.disel_A:
                layer.add_task_branch(adapter_name, config.for_module(path))

    def add_weighted_adapter(
        self,
        adapters: list[str],
        weights: list[float],
        adapter_name: str,
        combination_type: str = "cat",
        **svd_and_density_options,
    ) -> None:
        """Add ``adapter_name`` = Σ_k weights[k] · adapters[k]. Only ``"cat"`` exists for DISeL, and it is
        exact: the components (rows of A, W_g, b_g; columns of B scaled by the weights) are stacked, each
        keeping its own gate. See :func:`disel.tuner.combine.combine_cat`."""
        combine_cat(self, adapters, weights, adapter_name, combination_type=combination_type, **svd_and_density_options)

    def _check_new_adapter_config(self, config: DiselConfig) -> None:
        # Before any layer is replaced, so a config changed after construction fails with the model untouched.
        validate_config_in_use(config)
        super()._check_new_adapter_config(config)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # PEFT drops the adapter name only as the second-to-last key component; a frozen task branch's tensors
        # sit one level deeper (...disel_frozen.<adapter>.<k>.A), so drop it there too. Loading inverts this
        # same mapping, so saving and loading stay symmetric.
        head, marker, tail = key.rpartition(f".disel_frozen.{adapter_name}.")
        if marker:
            return f"{head}.disel_frozen.{tail}"
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: DiselConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        # PEFT's one hook between reading the saved weights and loading them (set_peft_model_state_dict, used by
        # PeftModel.from_pretrained and load_adapter); it loads with strict=False, so check here that they fit.
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_saved_weights_land(model, adapter_name, remapped)
        return remapped


_PEFT_MODEL_PREFIX = "base_model.model."


def _adapter_parameter_keys(model: nn.Module, adapter_name: str) -> set[str]:
    """State-dict keys of adapter ``adapter_name``'s parameters on every DISeL layer, found by type."""
    keys = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, DiselLayer):
            continue
        for layer_name in (*module.adapter_layer_names, "disel_frozen"):
            per_adapter = getattr(module, layer_name)
            if adapter_name in per_adapter:
                entry = per_adapter[adapter_name]
                for tensor_name, _ in (*entry.named_parameters(), *entry.named_buffers()):
                    keys.add(f"{module_name}.{layer_name}.{adapter_name}.{tensor_name}".lstrip("."))
    return keys


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_saved_weights_land(model: nn.Module, adapter_name: str, remapped: dict[str, torch.Tensor]) -> None:
    """Refuse a load that would drop saved DISeL weights or leave DISeL parameters (or frozen-branch buffers) unset.

    ``remapped`` is the saved state dict with its keys already renamed to model keys (PEFT's remapping
    passes a key it cannot place through unchanged). A saved tensor whose key is not a model key would be
    dropped by PEFT's ``strict=False`` load; a ``disel_*`` parameter of adapter
    ``adapter_name`` that no saved tensor fills would keep its fresh initialisation. Either means the
    adapter_config.json does not describe the saved weights, and raises ``ValueError`` naming the tensors.
    """
    model_keys = set(model.state_dict())

    def model_key(key: str) -> str | None:
        # Without a PeftModel around (layers injected directly) the model keys lack the "base_model.model." prefix.
        for candidate in (key, key.removeprefix(_PEFT_MODEL_PREFIX)):
            if candidate in model_keys:
                return candidate
        return None

    # Every saved tensor must land: the DISeL ones and any other (trained biases with bias="all", a
    # modules_to_save head, already renamed to its wrapper's key by PEFT).
    dropped = sorted(key for key in remapped if model_key(key) is None)
    if dropped:
        raise ValueError(
            f"Loading DISeL adapter {adapter_name!r} would drop {len(dropped)} saved tensor(s) that match no "
            f"parameter of the model: {_listing(dropped)}. The adapter_config.json (target_modules, exclude_modules, "
            "layers_to_transform, modules_to_save) must describe the layers the weights were saved from."
        )
    loaded = {model_key(key) for key in remapped}
    unset = sorted(_adapter_parameter_keys(model, adapter_name) - loaded)
    if unset:
        raise ValueError(
            f"Loading DISeL adapter {adapter_name!r} would leave {len(unset)} DISeL parameter(s) of the model at their "
            f"fresh initialisation, with no saved value: {_listing(unset)}. The adapter_config.json (target_modules, "
            "exclude_modules, layers_to_transform) adapts layers the saved weights do not cover."
        )
