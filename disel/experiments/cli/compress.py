"""``disel-prune`` and ``disel-merge-static``: compress a trained DISeL adapter with its gate statistics.

Two steps (issue 11; the methods are :mod:`disel.components`)::

    disel-eval components --base BASE --adapter ADAPTER --out stats.json     # statistics on the data
    disel-prune --base BASE --adapter ADAPTER --stats stats.json --keep-fraction 0.5 --out pruned/
    disel-merge-static --base BASE --adapter ADAPTER --stats stats.json --std-threshold 1e-3 --out merged/

``disel-prune`` writes a smaller adapter (ranks in ``rank_pattern``; plain PEFT calls load it) and
``prune_report.json`` into ``--out``. ``disel-merge-static`` writes ``--out/merged_base/`` (the base model
with the static components folded in, and its tokenizer), the gated rest as an adapter on that base in
``--out`` (none if every component was static), and ``merge_report.json``. Both measure the output change on
the data (by default the offline math / general / code domains; ``--domain`` for files) unless
``--no-measure``. A bad argument (missing folder, used output folder, value out of range) prints one line
``disel-…: error: …`` and exits with status 2, before any model is loaded; so does a ``--stats`` file whose
layers or ranks are not the adapter's (read from the adapter file's header).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ._args import DATA_FLAGS, MODEL_FLAGS, OFFLINE_DOMAINS, add_flags
from .preflight import UsageError, as_usage_error, check_arguments, domain_specs, report

__all__ = ["gate_domains", "main_merge_static", "main_prune", "measure_components", "statistics_headline"]


def gate_domains(args: argparse.Namespace) -> list:
    """The data (``disel.experiments.eval.gates`` domains): each ``--domain`` file (its first ``--n`` rows), then
    the ``--offline`` domains (all three when neither is given; a command without ``--offline``: when no
    ``--domain`` is given)."""
    from disel.io import read_jsonl

    from ..eval.gates import default_offline_domains, domain_from_rows

    domains = [
        domain_from_rows(name, read_jsonl(path, args.n), template) for name, path, template in domain_specs(args)
    ]
    offline = getattr(args, "offline", None)
    offline = offline if offline is not None else ([] if domains else list(OFFLINE_DOMAINS))
    if offline:
        by_name = {domain.name: domain for domain in default_offline_domains(args.n, args.seed)}
        domains += [by_name[name] for name in offline]
    return domains


def _data(args: argparse.Namespace, tokenizer: Any, device: Any) -> dict[str, list[dict]]:
    """Per domain, right-padded batches ``{"input_ids", "attention_mask"}`` (padding is not counted) of its texts:
    raw text, or an instruction example's formatted prompt + response."""
    batches: dict[str, list[dict]] = {}
    for domain in gate_domains(args):
        texts = domain.texts or [domain.format_prompt(e["instruction"]) + e["output"] for e in domain.examples]
        batches[domain.name] = []
        for start in range(0, len(texts), args.batch_size):
            chunk = list(texts[start : start + args.batch_size])
            encoded = tokenizer(chunk, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
            batches[domain.name].append({k: encoded[k].to(device) for k in ("input_ids", "attention_mask")})
    return batches


@contextmanager
def _progress(batches: dict[str, list[dict]], description: str) -> Iterator[dict[str, Iterator[dict]]]:
    """The same batches, advancing one tqdm bar (on stderr) over all domains; the bar is closed on leaving,
    whether the work finished or stopped with an error."""
    from tqdm.auto import tqdm

    def run(domain_batches: list[dict]) -> Iterator[dict]:
        for batch in domain_batches:
            yield batch
            bar.update(1)

    with tqdm(total=sum(len(b) for b in batches.values()), desc=description, unit="batch") as bar:
        yield {name: run(domain_batches) for name, domain_batches in batches.items()}


def _load_base(args: argparse.Namespace):
    """(base model on its device, tokenizer, device), through the experiment path's one loader."""
    import torch

    from ..models import load_model, load_tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.base, dtype=args.dtype, what="--base").to(device).eval()
    return model, load_tokenizer(args.base, padding_side="right"), device


def measure_components(args: argparse.Namespace, *, pairwise: bool = False):
    """(:class:`disel.ComponentStatistics` of ``--adapter`` on the data, a JSON-ready description)."""
    import peft

    import disel

    base, tokenizer, device = _load_base(args)
    model = peft.PeftModel.from_pretrained(base, args.adapter, is_trainable=False)
    batches = _data(args, tokenizer, device)
    with _progress(batches, "component statistics") as progress:
        stats = disel.component_statistics(model, progress, pairwise=pairwise)
    description = {
        "base": str(args.base),
        "adapter": str(args.adapter),
        "dtype": args.dtype,
        "device": str(device),
        "domains": {name: len(b) for name, b in batches.items()},
        "n": args.n,
        "seed": args.seed,
        "max_length": args.max_length,
    }
    return stats, description


def statistics_headline(stats, *, relative_contribution: float = 0.01, std: float = 0.01) -> list[str]:
    """A few lines summing up the statistics: size, tokens, how the contribution is spread, and how many gates
    are constant. Statistics only: whether a compression keeps accuracy is for a measurement to say (a
    component with a small contribution may still matter for the answers), so no line names a decision."""
    layers = stats.layers
    contributions = sorted(c for entry in layers for c in entry.contribution)
    total = len(contributions)
    largest = contributions[-1] if contributions else 0.0
    small = sum(c <= relative_contribution * largest for c in contributions)
    half = sum(contributions[: total // 2]) / sum(contributions) if sum(contributions) > 0 else 0.0
    static = sum(s < std for entry in layers for s in stats.max_gate_std(entry.module, entry.adapter))
    tokens = {name: entries[0].tokens for name, entries in stats.domains.items() if entries}
    return [
        f"{total} components in {len(layers)} adapted layers; tokens: "
        + (", ".join(f"{name}={count}" for name, count in tokens.items()) or str(layers[0].tokens if layers else 0)),
        f"contribution: the smaller half of the components carries {half:.1%} of the summed contribution; "
        f"{small}/{total} components are <= {relative_contribution:g} x the largest ({largest:.3g})",
        f"gate std < {std:g} on every domain: {static}/{total} components",
        "these are statistics, not a verdict: disel-prune / disel-merge-static measure the output change, "
        "and only an evaluation tells what a compression costs",
    ]


def _check_criterion(args: argparse.Namespace) -> None:
    """``--keep-fraction`` in (0, 1], ``--threshold`` / ``--std-threshold`` finite and >= 0 (each where given);
    UsageError otherwise."""
    fraction = getattr(args, "keep_fraction", None)
    if fraction is not None and not 0 < fraction <= 1:
        raise UsageError(f"--keep-fraction must be in (0, 1], got {fraction}")
    for dest in ("threshold", "std_threshold"):
        value = getattr(args, dest, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{dest.replace('_', '-')} must be a finite number >= 0, got {value}")


def _base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    add_flags(parser, MODEL_FLAGS)
    parser.add_argument("--stats", required=True, help="statistics JSON from `disel-eval components`")
    parser.add_argument("--out", required=True, help="new folder for the compressed adapter and its report")
    parser.add_argument("--no-measure", action="store_true", help="skip measuring the output change on the data")
    add_flags(parser, DATA_FLAGS)
    return parser


def _load_stats(path: str, adapter: str):
    """The statistics of ``--stats``, checked against the saved ``--adapter`` (its layers and ranks, read from
    the adapter file's header) before any model is loaded; UsageError otherwise."""
    import disel
    from disel.components.adapter_dir import check_statistics_match

    if not Path(path).is_file():
        raise UsageError(f"--stats {path!r} is not a file (write it with `disel-eval components`)")
    try:
        stats = disel.ComponentStatistics.load_json(path)
    except (ValueError, TypeError, KeyError) as error:
        raise UsageError(f"--stats {path!r} is not a component statistics JSON: {error}") from None
    as_usage_error(check_statistics_match, stats, adapter, prefix=f"--stats {path!r} does not fit --adapter: ")
    return stats


def _compress(parser: argparse.ArgumentParser, argv: Sequence[str] | None, act) -> int:
    """Parse ``argv``; check the criterion, the other inputs and whether ``--stats`` fits ``--adapter`` (a problem:
    one line, status 2, before any model is loaded); then load the base and the data and call
    ``act(args, stats, base, tokenizer, batches)`` (``batches`` None with ``--no-measure``). A refusal of the
    library's (a ``ValueError``) is one line and status 2 as well."""
    args = parser.parse_args(argv)
    try:
        _check_criterion(args)
        check_arguments(args, out_dir=True)
        stats = _load_stats(args.stats, args.adapter)
    except UsageError as problem:
        return report(parser.prog, problem)
    base, tokenizer, device = _load_base(args)
    try:
        measured = nullcontext(None) if args.no_measure else _progress(_data(args, tokenizer, device), "measuring")
        with measured as batches:
            act(args, stats, base, tokenizer, batches)
    except ValueError as problem:
        return report(parser.prog, problem)
    return 0


def main_prune(argv: Sequence[str] | None = None) -> int:
    """``disel-prune``: keep the components with the largest contributions; write the adapter + report."""
    parser = _base_parser("disel-prune", "Prune the components of a DISeL adapter by their contribution.")
    criterion = parser.add_mutually_exclusive_group(required=True)
    criterion.add_argument("--keep-fraction", type=float, help="keep this fraction of all components, largest first")
    criterion.add_argument("--threshold", type=float, help="keep the components contributing more than this")
    return _compress(parser, argv, _prune)


def _prune(args: argparse.Namespace, stats, base, tokenizer, batches) -> None:
    import disel

    report = disel.prune_adapter_dir(
        args.adapter,
        args.out,
        stats,
        base_model=base,
        threshold=args.threshold,
        keep_fraction=args.keep_fraction,
        batches=batches,
    )
    rank_before, rank_after = sum(report.rank_before.values()), sum(report.rank_after.values())
    print(
        f"disel-prune: components {rank_before} -> {rank_after}; adapter parameters "
        f"{report.parameters_before} -> {report.parameters_after}" + _change_text(report.output_change)
    )
    print(f"wrote {args.out} (adapter) and {Path(args.out) / 'prune_report.json'}")


def main_merge_static(argv: Sequence[str] | None = None) -> int:
    """``disel-merge-static``: fold the constant-gate components into the base; write base, adapter, report."""
    parser = _base_parser(
        "disel-merge-static",
        "Fold the components of a DISeL adapter whose gate is constant "
        "on the data into the base weights, keep the rest gated.",
    )
    parser.add_argument(
        "--std-threshold",
        type=float,
        required=True,
        help="fold the components whose gate std is below this on every domain",
    )
    return _compress(parser, argv, _merge_static)


def _merge_static(args: argparse.Namespace, stats, base, tokenizer, batches) -> None:
    import disel
    from disel.components.merge import MERGED_BASE_DIR

    report = disel.merge_static_adapter_dir(
        args.adapter, args.out, stats, base_model=base, std_threshold=args.std_threshold, batches=batches
    )
    merged_base = Path(args.out) / MERGED_BASE_DIR
    tokenizer.save_pretrained(merged_base)  # a complete model folder: the merged base loads on its own
    folded = sum(len(v) for v in report.merged.values())
    print(
        f"disel-merge-static: {folded} components folded, {sum(report.remaining_rank.values())} left gated"
        + _change_text(report.output_change)
    )
    where = "the merged base is the whole model" if report.fully_static else f"adapter in {args.out}"
    print(f"wrote {merged_base} ({where}) and {Path(args.out) / 'merge_report.json'}")


def _change_text(change) -> str:
    if change is None:
        return ""
    return f"; output change on the data: relative rms {change.relative_rms:.3g}, max |dy| {change.max_abs:.3g}"
