"""Keep two known notices of our dependencies out of every command and test, and nothing else.

bitsandbytes (the ``qlora`` extra) logs "Failed to load CPU gemm_4bit_forward from kernels-community: No module
named 'kernels' …" at import on CPUs with AVX-512 BF16 when the optional ``kernels`` package is absent; it then
uses its own CPU kernel, so nothing is wrong. PEFT and transformers import bitsandbytes, so every command
printed it before doing anything. Importing this module (``disel`` does so first) calls :func:`install`, which
drops exactly that record (that logger, that message, the
``kernels`` package missing); any other bitsandbytes message, the same notice with any other cause (``kernels``
installed but failing), and every exception still surface.

The second: peft 0.21 reads ``model.is_gradient_checkpointing`` in ``get_peft_model`` and when loading an adapter,
a property transformers 5 deprecated, so every DISeL or LoRA model built printed a ``FutureWarning`` that the user
can do nothing about. :func:`install` ignores exactly that warning (its message, its category, raised from
``transformers.modeling_utils``); every other warning keeps Python's default handling.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["BNB_CPU_LOGGER", "KernelsMissingNotice", "install"]

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
_PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"


class KernelsMissingNotice(logging.Filter):
    """Drops the gemm_4bit_forward notice when its cause is the missing optional ``kernels`` package."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(_NOTICE):
            return True
        cause = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not (isinstance(cause, ModuleNotFoundError) and (cause.name or "").split(".")[0] == "kernels")


def install() -> None:
    """Put the filter on bitsandbytes' CPU logger (created now if bitsandbytes is not imported yet; the
    same logger object is the one bitsandbytes gets later). Idempotent."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, KernelsMissingNotice) for f in logger.filters):
        logger.addFilter(KernelsMissingNotice())
    warnings.filterwarnings(  # filterwarnings drops an identical earlier entry: idempotent too
        "ignore", message=_PEFT_DEPRECATION, category=FutureWarning, module="transformers.modeling_utils"
    )


install()
