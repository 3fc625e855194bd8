"""The model card (README.md) of a saved DISeL adapter: a ``disel`` tag and a note that loading needs ``disel``.

PEFT writes the card (``library_name: peft``, its tags, base model) in ``PeftModel.save_pretrained`` before it
saves the adapter configs, and tags LoRA adapters ``lora``; it has no hook for other methods. DISeL's config
calls :func:`note_disel_in_model_card` after saving itself, which adds the tag and a short "Loading" section
to that card, once (saving again changes nothing).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DISEL_CARD_HEADING", "DISEL_TAG", "note_disel_in_model_card"]

DISEL_TAG = "disel"  # the method tag, as PEFT tags LoRA adapters "lora"
DISEL_CARD_HEADING = "## Loading this DISeL adapter"
_NOTE = f"""{DISEL_CARD_HEADING}

This is a DISeL (Dynamic Input-Sensitive LoRA) adapter, a PEFT method that is not built into PEFT: loading it
needs the `disel` package installed next to `peft` (`pip install disel`). With `disel` installed, PEFT's loaders
work as for LoRA (installing `disel` registers the method when `peft` is imported; where that is switched off
with `DISEL_NO_AUTO_REGISTER=1`, `import disel` first):

```python
from peft import AutoPeftModelForCausalLM

model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/adapter")
```

The gated update depends on the input, so the adapter cannot be merged into the base weights.
"""


def _peft_card(path: Path):
    from huggingface_hub import ModelCard

    if not path.is_file():
        return None
    card = ModelCard.load(path)
    return card if card.data.get("library_name") == "peft" else None


def note_disel_in_model_card(config_dir: str | os.PathLike) -> Path | None:
    """Add the ``disel`` tag and the loading note to the PEFT model card of an adapter saved in ``config_dir``.

    The card is ``config_dir/README.md``, or the parent's for an adapter PEFT saved in a subdirectory
    (adapters other than ``"default"``). Only a card written by PEFT (``library_name: peft``) is changed;
    returns its path, or ``None`` if there is none (e.g. ``DiselConfig.save_pretrained`` called alone).
    """
    config_dir = Path(config_dir)
    for path in (config_dir / "README.md", config_dir.parent / "README.md"):
        card = _peft_card(path)
        if card is not None:
            break
    else:
        return None
    tags = list(card.data.get("tags") or [])
    changed = DISEL_TAG not in tags
    if changed:
        card.data["tags"] = sorted({*tags, DISEL_TAG})
    if DISEL_CARD_HEADING not in card.text:
        card.text = card.text.rstrip("\n") + "\n\n" + _NOTE
        changed = True
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        card.save(tmp)
        os.replace(tmp, path)  # atomic: a reader never sees half a card
    return path
