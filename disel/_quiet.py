"""Keep one known import-time notice of bitsandbytes out of every command and test, and nothing else.

bitsandbytes (the ``qlora`` extra) logs "Failed to load CPU gemm_4bit_forward from kernels-community: No module
named 'kernels' …" at import on CPUs with AVX-512 BF16 when the optional ``kernels`` package is absent; it then
uses its own CPU kernel, so nothing is wrong. PEFT and transformers import bitsandbytes, so every command
printed it before doing anything. Importing this module (``disel`` does so first) calls :func:`install`, which
drops exactly that record (that logger, that message, the
``kernels`` package missing); any other bitsandbytes message, the same notice with any other cause (``kernels``
installed but failing), and every exception still surface.
"""

from __future__ import annotations

import logging

__all__ = ["BNB_CPU_LOGGER", "KernelsMissingNotice", "install"]

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


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


install()
