"""Checks every command line runs on its arguments before any heavy work (loading a model, training, evaluating).

A bad argument becomes one :class:`UsageError` whose message starts with the argument's name; each entry
(``disel-train``, ``disel-eval``, ``disel-study``, ``disel-prune``, ...) prints it with :func:`report` as one line
``<prog>: error: <message>`` and exits with status 2, argparse's status for a usage error. Nothing here
loads weights: the target-module check builds the model on the ``meta`` device from its ``config.json``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from disel import io


class UsageError(ValueError):
    """A command-line argument that cannot work; the message starts with the argument's name."""


def report(prog: str, error: BaseException) -> int:
    """Print ``error`` as the single line ``<prog>: error: <message>`` on stderr (a pydantic ValidationError as
    'field: message (got value)'; every run of whitespace made one space); return the exit status 2."""
    from pydantic import ValidationError

    message = str(error)
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "the input"
        message = f"{field}: {first['msg']} (got {first.get('input')!r})"
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def as_usage_error(check: Callable[..., Any], *args: Any, prefix: str = "", **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``; a refusal of the library's (``ValueError``, ``FileNotFoundError``: its message
    names the argument) becomes a :class:`UsageError` whose message starts with ``prefix``."""
    try:
        return check(*args, **kwargs)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(f"{prefix}{error}") from None


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """:func:`disel.io.check_output_dir`, its refusal as a :class:`UsageError`."""
    return as_usage_error(io.check_output_dir, path, what)


def check_input_files(paths: Iterable[str | os.PathLike], what: str) -> None:
    """Every path is an existing file."""
    for path in paths:
        if not Path(path).expanduser().is_file():
            raise UsageError(f"{what} {str(path)!r} does not exist or is not a file")


def check_model_dir(
    path: str | os.PathLike,
    what: str,
    *,
    gguf_file: str | None = None,
    tokenizer_dirs: Iterable[str | os.PathLike] = (),
) -> None:
    """``path`` is a local transformers checkpoint (``config.json``, or ``gguf_file`` in it), and a tokenizer is
    found in it or in one of ``tokenizer_dirs`` (a GGUF file carries its own)."""
    from ..models import TOKENIZER_FILES, has_tokenizer
    from ..models import check_model_dir as check_local_model

    as_usage_error(check_local_model, path, gguf_file, what=what)
    if gguf_file is None and not any(has_tokenizer(folder) for folder in (path, *tokenizer_dirs)):
        raise UsageError(
            f"{what} {str(path)!r} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer next to the model (tokenizer.save_pretrained)"
        )


def check_positive(value: Any, what: str) -> None:
    """``value`` is a positive integer (None is allowed: the setting is unused)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"{what} must be a positive integer, got {value!r}")


def check_training(config: Any) -> None:
    """Everything ``disel-train`` can check about ``config`` (an ``ExperimentConfig``) without loading
    weights: the output directory, the model and its tokenizer, the batch sizes, and that
    ``method.target_modules`` name modules of ``model.path``'s architecture that the method can adapt (the
    adapter is attached to the model built on the ``meta`` device: no weights are read)."""
    training, model, method = config.training, config.model, config.method
    check_output_dir(training.output_dir, "training.output_dir")
    check_model_dir(model.path, "model.path", gguf_file=model.gguf_file)
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        check_positive(getattr(training, key), f"training.{key}")
    if method.name == "full":
        return
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from ..train.run import build_peft_config

    head = {"num_labels": model.num_labels} if model.task_type == "sequence_classification" else {}  # a classifier's
    architecture = AutoConfig.from_pretrained(
        model.path, gguf_file=model.gguf_file, trust_remote_code=model.trust_remote_code, local_files_only=True, **head
    )
    model_class = AutoModelForSequenceClassification if head else AutoModelForCausalLM
    with torch.device("meta"):
        skeleton = model_class.from_config(architecture, trust_remote_code=model.trust_remote_code)
        try:
            get_peft_model(skeleton, build_peft_config(config))
        except (ValueError, TypeError) as error:
            raise UsageError(f"method.target_modules {method.target_modules!r} for {method.name}: {error}") from None


_POSITIVE_FLAGS = ("batch_size", "max_length", "max_new_tokens", "n", "bins")


def check_arguments(args: Any, *, out_dir: bool = False) -> None:
    """Everything ``disel-eval <command>``, ``disel-prune`` and ``disel-merge-static`` can check about their parsed
    flags before loading a model, each check where the command has the flag: sizes, the dtype, the ``--domain``
    files, the output (a file, or with ``out_dir`` a new, empty folder), the model, adapter and tokenizer
    directories, and the input files."""
    from ..models import check_adapter_dir, resolve_dtype

    for dest in _POSITIVE_FLAGS:  # None where the command has no such flag
        check_positive(getattr(args, dest, None), "--" + dest.replace("_", "-"))
    if getattr(args, "dtype", None) is not None:
        as_usage_error(resolve_dtype, args.dtype, prefix="--dtype: ")
    if hasattr(args, "domain"):
        domain_specs(args)
    out = Path(args.out) if getattr(args, "out", None) is not None else None
    if out_dir:  # a new or empty folder, not the adapter's
        if out.resolve() == Path(args.adapter).resolve():
            raise UsageError("--out must be a new folder, not the --adapter folder")
        if out.is_dir() and any(out.iterdir()):
            raise UsageError(f"--out {args.out!r} is not empty; give a new folder")
        check_output_dir(out, "--out")
    elif out is not None:
        as_usage_error(io.check_output_file, out, "--out")
    tokenizer_dirs = _check_retention_output(args) if getattr(args, "command", None) == "retention" else []
    if out_dir:  # a compression names a bad --base before a bad --adapter, in its command line's order
        check_model_dir(args.base, "--base", tokenizer_dirs=[args.adapter])
    if getattr(args, "adapter", None) is not None:
        tokenizer_dirs.append(as_usage_error(check_adapter_dir, args.adapter, "--adapter"))
    if getattr(args, "base", None) is not None and not out_dir:
        check_model_dir(args.base, "--base", gguf_file=getattr(args, "gguf_file", None), tokenizer_dirs=tokenizer_dirs)
    if getattr(args, "pretrained_mlm", None) is not None:
        check_model_dir(args.pretrained_mlm, "--pretrained-mlm")
    if getattr(args, "data", None) is not None:
        check_input_files([args.data], "--data")
    check_input_files(getattr(args, "text", None) or [], "--text")


def domain_specs(args: Any) -> list[tuple[str, Path, str]]:
    """``(name, file, template)`` per ``--domain`` (template: the spec's, else the adapter's training run's);
    UsageError for a malformed spec, a missing or empty file, or a domain named twice (with ``--offline``)."""
    from ..data.templates import DEFAULT_TEMPLATE
    from ..eval.evaluators import training_template

    specs = []
    for spec in args.domain:
        name, sep, rest = spec.partition("=")
        path, _, template = rest.partition(":")
        if not sep or not name or not path:
            raise UsageError(f"--domain {spec!r}: expected NAME=FILE.jsonl[:TEMPLATE]")
        if not Path(path).is_file():
            raise UsageError(f"--domain {spec!r}: {path!r} is not a file")
        with open(path, encoding="utf-8") as stream:
            if not any(line.strip() for line in stream):  # statistics over no data would measure nothing
                raise UsageError(f"--domain {spec!r}: {path!r} holds no rows")
        specs.append(
            (name, Path(path), template or training_template(getattr(args, "adapter", None)) or DEFAULT_TEMPLATE)
        )
    names = [name for name, _, _ in specs] + list(getattr(args, "offline", None) or ())
    if len(set(names)) != len(names):
        raise UsageError(f"--domain / --offline name the same domain twice: {names}")
    return specs


def _check_retention_output(args: Any) -> list[Path]:
    """``retention``: the training output holds checkpoints, its table can be written, and the base model
    (``--base``, else the one the adapters name) is a local model; returns the folders a tokenizer may be in."""
    from ..eval.retention import _base_model_path, list_checkpoints

    output_dir = Path(args.output_dir)
    checkpoints = as_usage_error(list_checkpoints, output_dir, prefix="--output-dir (a training output): ")
    if not checkpoints:
        raise UsageError(f"--output-dir {args.output_dir!r} holds no checkpoint-<step> folders")
    if args.table is not None:
        as_usage_error(io.check_output_file, args.table, "--table")
    else:
        check_output_dir(output_dir, "--output-dir")
    tokenizer_dirs = [output_dir, *(path for _, path in checkpoints)]
    if args.base is None:
        default_base = as_usage_error(_base_model_path, checkpoints, prefix="--base: not given, and ")
        check_model_dir(
            default_base, "--base (from the adapters' base_model_name_or_path)", tokenizer_dirs=tokenizer_dirs
        )
    return tokenizer_dirs
