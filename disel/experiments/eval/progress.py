"""Progress bars of the evaluation loops, defined once and off unless asked for.

The loops (generation batches, perplexity windows, gate batches, checkpoints) wrap their iterables in
:func:`progress_bar`. Library calls stay quiet; ``with show_progress():`` (what ``disel-eval`` does) turns
the bars on for everything evaluated inside, so no evaluation function grows a flag for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

_ENABLED: ContextVar[bool] = ContextVar("disel_eval_progress", default=False)


@contextlib.contextmanager
def show_progress(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`progress_bar` draws tqdm bars on stderr (even when stderr is not a terminal)."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def progress_bar(iterable: Iterable, description: str, *, total: int | None = None, unit: str = "batch"):
    """``iterable`` inside a tqdm bar (iterate it, or call ``set_postfix_str`` on it); a silent pass-through bar
    outside :func:`show_progress`. A bar nested in another (batches inside a checkpoint) is cleared when done."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable, desc=description, total=total, unit=unit, disable=not _ENABLED.get(), leave=None, dynamic_ncols=True
    )
