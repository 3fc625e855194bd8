"""The one figure style shared by every paper figure: rcParams, a colour and label per method, savefig.

Every ``paper_figs/figN_*.py`` draws inside :func:`paper_style` and writes with :func:`savefig`, so all
figures share fonts, sizes and the colour of each method. Colours are the Okabe–Ito palette (readable
with the common colour-vision deficiencies and in greyscale print by lightness); DISeL gets the most
saturated one because it is the method every figure is about.

Nothing here changes matplotlib's global state on import: :func:`paper_style` is a context manager.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never try to open a window (CI has no display)

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "DEPTH_COLORS",
    "DOMAIN_COLORS",
    "KIND_COLORS",
    "MODULE_COLORS",
    "METHOD_COLORS",
    "METHOD_LABELS",
    "METHOD_ORDER",
    "REFERENCE_COLORS",
    "RC_PARAMS",
    "TEXT_WIDTH_IN",
    "method_color",
    "method_label",
    "palette_color",
    "paper_style",
    "rank_colors",
    "savefig",
]

# Width of the paper's text block in inches (a NeurIPS-style single-column page); figures are sized as
# fractions of it so that their fonts print at the body size.
TEXT_WIDTH_IN = 5.5

# Method keys used throughout the project (``toy.train_method``'s ``method``, experiment configs).
METHOD_ORDER: tuple[str, ...] = ("full", "lora", "dora", "adalora", "disel")

METHOD_LABELS: dict[str, str] = {
    "full": "Full FT",
    "lora": "LoRA",
    "dora": "DoRA",
    "adalora": "AdaLoRA",
    "disel": "DISeL",
}

# Okabe–Ito colours. Fixed (input-agnostic) methods get the muted ones, DISeL the vermilion.
METHOD_COLORS: dict[str, str] = {
    "full": "#7f7f7f",  # grey: the unconstrained reference
    "lora": "#0072B2",  # blue
    "dora": "#56B4E9",  # sky blue
    "adalora": "#009E73",  # bluish green
    "disel": "#D55E00",  # vermilion
}

# Closed-form reference lines (toy figures): the best fixed correction and the Bayes-optimal one.
REFERENCE_COLORS: dict[str, str] = {
    "fixed": "#000000",
    "bayes": "#CC79A7",  # reddish purple
}

RC_PARAMS: dict[str, object] = {
    "figure.dpi": 100,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "font.family": "DejaVu Sans",  # ships with matplotlib: identical output on every machine
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 1.2,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # embed TrueType: text stays selectable and journals accept the PDF
    "ps.fonttype": 42,
    "svg.hashsalt": "disel",  # reproducible SVG ids
}


# Gate-analysis groups (Figures 4, 5, 10–14), also Okabe–Ito. Domains: the fine-tuning domains get the
# warm colours, general text the blue. Names not listed here get a colour from _FALLBACK in order.
DOMAIN_COLORS: dict[str, str] = {
    "math": "#E69F00",  # orange
    "code": "#009E73",  # bluish green
    "general": "#0072B2",  # blue
}
KIND_COLORS: dict[str, str] = {"attention": "#56B4E9", "mlp": "#E69F00", "other": "#7f7f7f"}
MODULE_COLORS: dict[str, str] = {
    "q_proj": "#56B4E9",
    "k_proj": "#0072B2",
    "v_proj": "#009E73",
    "o_proj": "#CC79A7",
    "gate_proj": "#F0E442",
    "up_proj": "#E69F00",
    "down_proj": "#D55E00",
}
# Depth thirds: one hue, darker with depth, so the order reads without the legend.
DEPTH_COLORS: dict[str, str] = {"early": "#9ecae1", "mid": "#4292c6", "late": "#08306b"}
_FALLBACK = ("#000000", "#7f7f7f", "#CC79A7", "#56B4E9", "#009E73", "#E69F00", "#0072B2", "#D55E00", "#F0E442")
# Ranks: a sequential colormap (viridis, readable in greyscale), low rank light, high rank dark.
RANK_COLORMAP = "viridis"


def palette_color(palette: dict[str, str], name: str, index: int = 0) -> str:
    """``palette[name]``, or for a name the palette does not list the ``index``-th fallback colour."""
    return palette.get(name, _FALLBACK[index % len(_FALLBACK)])


def rank_colors(ranks: Sequence[int | None]) -> dict[int | None, str]:
    """A colour per rank (sorted; ``None``, full FT, last) from :data:`RANK_COLORMAP`, light to dark."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    ordered = sorted(set(ranks), key=lambda r: (r is None, r or 0))
    cmap = colormaps[RANK_COLORMAP]
    # 0.85 → 0.05: skip viridis' palest yellow, which vanishes on white paper.
    spots = [0.45] if len(ordered) == 1 else [0.85 - 0.8 * i / (len(ordered) - 1) for i in range(len(ordered))]
    return {rank: to_hex(cmap(spot)) for rank, spot in zip(ordered, spots)}


def method_label(method: str) -> str:
    """Display name of a method key (``"disel"`` → ``"DISeL"``); raises ``KeyError`` naming the keys."""
    try:
        return METHOD_LABELS[method]
    except KeyError:
        raise KeyError(f"unknown method {method!r}; expected one of {METHOD_ORDER}") from None


def method_color(method: str) -> str:
    """Colour of a method key; raises ``KeyError`` naming the known keys."""
    try:
        return METHOD_COLORS[method]
    except KeyError:
        raise KeyError(f"unknown method {method!r}; expected one of {METHOD_ORDER}") from None


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Draw with the paper's rcParams inside the ``with`` block; the global settings are restored after."""
    with plt.rc_context(RC_PARAMS):
        yield


def savefig(fig: Figure, stem: str | os.PathLike, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.pdf`` (by default), each file atomically.

    Each format is rendered in memory and written with :func:`disel.io.write_bytes_atomic`,
    so a reader (or an interrupted run) never sees a half-written figure. The folder is created.
    PDFs carry no creation date, so a rerun with the same numbers writes the same bytes.

    Returns the written paths, in ``formats`` order.
    """
    from disel.io import write_bytes_atomic

    stem = Path(stem)
    if stem.suffix.lstrip(".") in formats:
        raise ValueError(f"stem must not carry a format suffix (formats are added), got stem={str(stem)!r}")
    written = []
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, metadata=metadata)
        written.append(write_bytes_atomic(target, buffer.getvalue()))
    return written
