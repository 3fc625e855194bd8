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

from .preflight import UsageError, check_model_dir, check_output_dir, check_output_file, report

__all__ = [
    "add_data_flags",
    "add_model_flags",
    "check_inputs",
    "domain_specs",
    "gate_domains",
    "main_merge_static",
    "main_prune",
    "measure_components",
    "statistics_headline",
]

OFFLINE_DOMAINS = ("math", "general", "code")  # disel.experiments.eval.gates.default_offline_domains


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="pre-trained model directory the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="DISeL adapter directory (PeftModel.save_pretrained)")
    parser.add_argument(
        "--dtype",
        default="float32",
        help="float32 (default: folds and statistics at full precision), bfloat16, float16",
    )
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """The data the statistics are measured on (and prune / merge measure their output change on)."""
    parser.add_argument(
        "--domain",
        nargs="*",
        default=[],
        metavar="NAME=FILE.jsonl[:TEMPLATE]",
        help="rows with 'text', or instruction/output, question/answer or prompt/canonical_solution pairs "
        "(prompt in TEMPLATE, default the adapter run's training template, else alpaca, then the response; "
        "all tokens count)",
    )
    parser.add_argument(
        "--offline",
        nargs="*",
        default=None,
        choices=OFFLINE_DOMAINS,
        help="offline domains to add (default: all three when no --domain is given)",
    )
    parser.add_argument("--n", type=int, default=32, help="texts per domain (the first N rows of a file)")
    parser.add_argument(
        "--seed", type=int, default=12345, help="seed of the offline domains (keep it off the training seed)"
    )
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)


def domain_specs(args: argparse.Namespace) -> list[tuple[str, Path, str]]:
    """``(name, file, template)`` per ``--domain`` (template: the spec's, else the adapter's training run's);
    UsageError for a malformed spec or a missing file."""
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


def check_inputs(args: argparse.Namespace, *, out_dir: str | None = None, out_file: str | None = None) -> None:
    """Everything that can be checked before loading a model; UsageError naming the flag otherwise.
    Exactly one of ``out_dir`` (a new, empty folder) or ``out_file`` (a JSON file) is where results go."""
    from ..models import is_adapter_dir, resolve_dtype

    try:
        resolve_dtype(args.dtype)
    except ValueError as error:
        raise UsageError(f"--dtype: {error}") from None
    for flag in ("n", "max_length", "batch_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    domain_specs(args)
    check_model_dir(args.base, "--base", tokenizer_dirs=[args.adapter])
    if not is_adapter_dir(args.adapter):
        raise UsageError(f"--adapter {args.adapter!r} has no adapter_config.json (not a saved PEFT adapter)")
    if out_dir is not None:
        out = Path(out_dir)
        if out.resolve() == Path(args.adapter).resolve():
            raise UsageError("--out must be a new folder, not the --adapter folder")
        if out.is_dir() and any(out.iterdir()):
            raise UsageError(f"--out {out_dir!r} is not empty; give a new folder")
        check_output_dir(out_dir, "--out")
    else:
        check_output_file(out_file, "--out")


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

    bar = tqdm(total=sum(len(b) for b in batches.values()), desc=description, unit="batch")

    def run(domain_batches: list[dict]) -> Iterator[dict]:
        for batch in domain_batches:
            yield batch
            bar.update(1)

    try:
        yield {name: run(domain_batches) for name, domain_batches in batches.items()}
    finally:
        bar.close()


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


def _check_number(value: float | None, flag: str, *, at_most_one: bool = False) -> None:
    """``value`` (if given) finite and >= 0, or in (0, 1] with ``at_most_one``; UsageError otherwise."""
    if value is None:
        return
    if at_most_one and not 0 < value <= 1:
        raise UsageError(f"{flag} must be in (0, 1], got {value}")
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{flag} must be a finite number >= 0, got {value}")


def _base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    add_model_flags(parser)
    parser.add_argument("--stats", required=True, help="statistics JSON from `disel-eval components`")
    parser.add_argument("--out", required=True, help="new folder for the compressed adapter and its report")
    parser.add_argument("--no-measure", action="store_true", help="skip measuring the output change on the data")
    add_data_flags(parser)
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
    try:
        check_statistics_match(stats, adapter)
    except ValueError as error:
        raise UsageError(f"--stats {path!r} does not fit --adapter: {error}") from None
    return stats


def _compress(prog: str, args: argparse.Namespace, numbers: list[tuple[float | None, str, bool]], act) -> int:
    """Check the ``numbers`` ((value, flag, at_most_one) for :func:`_check_number`), the other inputs and
    whether ``--stats`` fits ``--adapter`` (a problem: one line, status 2, before any model is loaded); then
    load the base and the data and call ``act(stats, base, tokenizer, batches)`` (``batches`` None with
    ``--no-measure``). A refusal of the library's (a ``ValueError``) is one line and status 2 as well."""
    try:
        for value, flag, at_most_one in numbers:
            _check_number(value, flag, at_most_one=at_most_one)
        check_inputs(args, out_dir=args.out)
        stats = _load_stats(args.stats, args.adapter)
    except UsageError as problem:
        return report(prog, problem)
    base, tokenizer, device = _load_base(args)
    try:
        measured = nullcontext(None) if args.no_measure else _progress(_data(args, tokenizer, device), "measuring")
        with measured as batches:
            act(stats, base, tokenizer, batches)
    except ValueError as problem:
        return report(prog, problem)
    return 0


def main_prune(argv: Sequence[str] | None = None) -> int:
    """``disel-prune``: keep the components with the largest contributions; write the adapter + report."""
    parser = _base_parser("disel-prune", "Prune the components of a DISeL adapter by their contribution.")
    criterion = parser.add_mutually_exclusive_group(required=True)
    criterion.add_argument("--keep-fraction", type=float, help="keep this fraction of all components, largest first")
    criterion.add_argument("--threshold", type=float, help="keep the components contributing more than this")
    args = parser.parse_args(argv)

    def act(stats, base, tokenizer, batches) -> None:
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

    numbers = [(args.keep_fraction, "--keep-fraction", True), (args.threshold, "--threshold", False)]
    return _compress("disel-prune", args, numbers, act)


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
    args = parser.parse_args(argv)

    def act(stats, base, tokenizer, batches) -> None:
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

    return _compress("disel-merge-static", args, [(args.std_threshold, "--std-threshold", False)], act)


def _change_text(change) -> str:
    if change is None:
        return ""
    return f"; output change on the data: relative rms {change.relative_rms:.3g}, max |dy| {change.max_abs:.3g}"
