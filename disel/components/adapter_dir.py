"""Saved adapters in, for :func:`~disel.components.prune_adapter_dir` and
:func:`~disel.components.merge_static_adapter_dir`: the checks that need no model, then the model."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .statistics import ComponentStatistics

__all__ = ["check_statistics_match", "load_adapter_dir", "saved_ranks"]

ADAPTER_NAME = "default"  # the name PeftModel.from_pretrained gives the loaded adapter (and its statistics)
_A_SUFFIX = ".disel_A.weight"
_PREFIX = "base_model.model."


def saved_ranks(adapter_dir: str | os.PathLike) -> dict[str, int] | None:
    """``{module path relative to the base model: rank}`` of a saved DISeL adapter, read from the
    ``adapter_model.safetensors`` header (no tensor is loaded); None when the adapter is saved otherwise."""
    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    ranks = {}
    with safe_open(os.fspath(path), "pt") as saved:
        for key in saved.keys():
            if key.endswith(_A_SUFFIX):
                module = key[: -len(_A_SUFFIX)].removeprefix(_PREFIX)
                ranks[module] = int(saved.get_slice(key).get_shape()[0])
    return ranks


def check_statistics_match(stats: ComponentStatistics, adapter_dir: str | os.PathLike) -> None:
    """``ValueError`` unless ``stats`` cover exactly the layers of the saved adapter, at its ranks (statistics
    of another adapter, or measured before a prune, would prune or fold the wrong components)."""
    ranks = saved_ranks(adapter_dir)
    if ranks is None:
        return  # not safetensors: matched_branches checks the loaded model instead
    where = f"the adapter in {os.fspath(adapter_dir)!r}"
    measured = {e.module: e.rank for e in stats.layers if e.adapter == ADAPTER_NAME}
    if not measured:
        names = sorted({e.adapter for e in stats.layers})
        raise ValueError(f"the statistics hold no layer of adapter {ADAPTER_NAME!r} (they name {names})")
    advice = "measure this adapter's statistics (`disel-eval components`, or component_statistics)"
    unknown = sorted(set(measured) - set(ranks))
    if unknown:
        raise ValueError(
            f"the statistics name {len(unknown)} layer(s) that {where} does not hold (e.g. {unknown[0]!r}): "
            f"they belong to another adapter; {advice}"
        )
    unmeasured = sorted(set(ranks) - set(measured))
    if unmeasured:
        raise ValueError(
            f"{where} has {len(unmeasured)} layer(s) the statistics do not cover (e.g. {unmeasured[0]!r}): "
            f"they belong to another adapter; {advice}"
        )
    differ = sorted(m for m in measured if measured[m] != ranks[m])
    if differ:
        first = differ[0]
        raise ValueError(
            f"the statistics cover {measured[first]} components of {first!r} but {where} has rank {ranks[first]} "
            f"there ({len(differ)} layer(s) differ): they belong to another adapter, or to this one before a "
            f"prune; {advice}"
        )


def load_adapter_dir(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    stats: ComponentStatistics | str | os.PathLike,
    base_model: nn.Module | None,
):
    """(the PEFT model of ``adapter_dir``, the statistics), after checking that ``out_dir`` can be written and
    that the statistics match the saved adapter (:func:`check_statistics_match`), both before any model is
    loaded. ``base_model`` defaults to ``AutoModelForCausalLM.from_pretrained`` of the adapter config's
    ``base_model_name_or_path`` (a local path; nothing is downloaded)."""
    from peft import PeftConfig, PeftModel

    if Path(adapter_dir).resolve() == Path(out_dir).resolve():
        raise ValueError(f"out_dir must differ from adapter_dir (got {os.fspath(out_dir)!r} for both)")
    if os.path.isfile(out_dir):
        raise ValueError(f"out_dir must be a directory, got the file {os.fspath(out_dir)!r}")
    if not isinstance(stats, ComponentStatistics):
        stats = ComponentStatistics.load_json(stats)
    check_statistics_match(stats, adapter_dir)
    if base_model is None:
        from transformers import AutoModelForCausalLM

        base_path = PeftConfig.from_pretrained(os.fspath(adapter_dir)).base_model_name_or_path
        base_model = AutoModelForCausalLM.from_pretrained(base_path, local_files_only=True)
    return PeftModel.from_pretrained(base_model, os.fspath(adapter_dir)), stats
