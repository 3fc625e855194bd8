"""``DiselModel``: the PEFT tuner that swaps target layers for :class:`DiselLinearLayer`.

Matching, freezing, saving, loading, several adapters, ``disable_adapter`` and ``unload`` are PEFT's
``BaseTuner`` machinery; this class only says which layer to build and refuses to merge.
"""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from .config import DiselConfig
from .layer import MERGE_REFUSAL, SUPPORTED_BASE_LAYERS, DiselLayer, DiselLinearLayer

__all__ = ["DiselModel"]


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
        if any(len(layer.disel_A) for layer in self.model.modules() if isinstance(layer, DiselLayer)):
            raise NotImplementedError(MERGE_REFUSAL)

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
        keeping its own gate. See :func:`disel.components.combine_cat`."""
        from ..components import combine_cat

        combine_cat(self, adapters, weights, adapter_name, combination_type=combination_type, **svd_and_density_options)

