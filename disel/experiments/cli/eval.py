"""``disel-eval <command> [flags]``: the evaluation command line, one small function per command.

Commands (each writes one JSON file atomically; ``--help`` on a command lists its flags):

* ``lm-eval``: lm-evaluation-harness on base + adapter (default: the paper's 14-benchmark suite).
* ``gsm8k``: GSM8K-style strict exact match from greedy generations over a JSONL file.
* ``humaneval``: HumanEval-style pass@1; runs generated code, so needs ``--allow-code-execution``.
* ``perplexity``: causal-LM perplexity over text files and/or the offline corpora.
* ``mlm-perplexity``: masked-LM perplexity of a fine-tuned RoBERTa encoder with the original MLM head.
* ``retention``: one evaluator over every ``checkpoint-*`` of a training output → one table (JSON + CSV).
* ``gates``: gate histograms of a DISeL model over domains (math / general / code).
* ``components``: per-component gate statistics of a DISeL adapter (for ``disel-prune`` / ``disel-merge-static``).
* ``smollm2``: convert the offline SmolLM2-135M-Instruct once and print its directory.

``--config FILE`` (JSON or YAML, keys as the flags with ``_`` or ``-``) sets a command's defaults;
flags given on the command line override it. ``gsm8k``, ``humaneval``, ``perplexity`` and ``lm-eval`` build
the same evaluator object (:mod:`disel.experiments.eval.evaluators`) as ``retention --evaluator ...``, so a
checkpoint scores the same either way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..schemas import MlmPerplexityResult, write_record
from . import preflight

__all__ = ["build_parser", "main"]


def _load_config_file(path: str) -> dict[str, Any]:
    data = preflight.read_mapping_file(path, "--config")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def _add_model_flags(parser: argparse.ArgumentParser, *, base_required: bool = True) -> None:
    parser.add_argument(
        "--base", required=base_required, help="pre-trained model directory (or a fully fine-tuned one)"
    )
    parser.add_argument(
        "--adapter", default=None, help="PEFT adapter directory (DISeL/LoRA/DoRA/AdaLoRA); omit for the base model"
    )
    parser.add_argument("--gguf-file", default=None, help="read the base weights from this GGUF file inside --base")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16"
    )
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")


def _add_lm_eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="paper-retention", help="paper-retention, or 'none' to run --tasks only")
    parser.add_argument("--tasks", nargs="*", default=[], help="extra tasks, each 'task' or 'task:metric,filter'")
    parser.add_argument("--include-path", nargs="*", default=[], help="folders with extra task YAMLs")
    parser.add_argument("--no-default-tasks", action="store_true", help="index only --include-path tasks (faster)")
    parser.add_argument("--num-fewshot", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=float, default=None, help="documents per task (smoke tests only)")


def _add_corpus_flags(parser: argparse.ArgumentParser, seed_flag: str) -> None:
    """The texts a perplexity is measured on; ``seed_flag`` names the flag that picks the offline texts."""
    parser.add_argument(
        "--text", nargs="*", default=[], help="text files (one text each) or .jsonl files ('text' field)"
    )
    parser.add_argument("--offline", nargs="*", default=[], choices=["english", "code"], help="offline corpora to add")
    parser.add_argument("--n", type=int, default=200, help="texts per offline corpus")
    parser.add_argument(seed_flag, type=int, default=1, help="seed choosing the offline texts")


def _add_evaluator_flags(parser: argparse.ArgumentParser, evaluator: str) -> None:
    """The flags a generation evaluator is built from (:func:`_evaluator`); ``retention`` takes them all."""
    parser.add_argument(
        "--data",
        required=evaluator != "retention",
        default=None,
        help="JSONL: question/answer (gsm8k) or task_id, prompt, test, entry_point (humaneval)",
    )
    parser.add_argument(
        "--template",
        default=None,
        help="prompt template (default: alpaca for gsm8k, magicoder for humaneval); its stop strings end answers",
    )
    parser.add_argument("--max-new-tokens", type=int, default=512)
    if evaluator in ("humaneval", "retention"):
        parser.add_argument(
            "--allow-code-execution", action="store_true", help="required: confirms running generated code"
        )
        parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HumanEval program")


def _subparser(commands, name: str, help_text: str, **defaults) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, allow_abbrev=False)
    parser.set_defaults(**defaults)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disel-eval", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--config", default=None, help="JSON/YAML file of flag values (flags override it)")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_one_model_commands(commands)
    _add_checkpoint_and_gate_commands(commands)
    _add_components_command(commands)
    return parser


def _add_one_model_commands(commands) -> None:
    """``lm-eval``, ``gsm8k``, ``humaneval``, ``perplexity``, ``mlm-perplexity``: one model, one JSON."""
    p = _subparser(
        commands,
        "lm-eval",
        "lm-evaluation-harness (the paper's retention suite by default)",
        handler=_cmd_evaluate,
        evaluator="lm-eval",
    )
    _add_model_flags(p)
    _add_lm_eval_flags(p)
    p.add_argument("--out", required=True, help="result JSON (schema disel.lm_eval/1)")
    for name, help_text in (
        ("gsm8k", "GSM8K-style strict exact match"),
        ("humaneval", "HumanEval-style pass@1 (executes generated code)"),
    ):
        p = _subparser(commands, name, help_text, handler=_cmd_evaluate, evaluator=name)
        _add_model_flags(p)
        _add_evaluator_flags(p, name)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--limit", type=int, default=None, help="only the first N rows (smoke tests)")
        p.add_argument("--out", required=True, help=f"result JSON (schema disel.{name}/1)")
    p = _subparser(
        commands, "perplexity", "causal-LM perplexity over texts", handler=_cmd_evaluate, evaluator="perplexity"
    )
    _add_model_flags(p)
    _add_corpus_flags(p, "--seed")
    p.add_argument("--stride", type=int, default=None, help="window step (default max_length // 2)")
    p.add_argument("--out", required=True, help="result JSON (schema disel.perplexity/1)")
    p = _subparser(
        commands, "mlm-perplexity", "masked-LM perplexity with the original MLM head", handler=_cmd_mlm_perplexity
    )
    _add_model_flags(p)
    p.add_argument("--pretrained-mlm", default=None, help="checkpoint with the original MLM head (default --base)")
    p.add_argument("--num-labels", type=int, default=None, help="classifier size (default: read from the adapter)")
    _add_corpus_flags(p, "--text-seed")
    p.add_argument("--seed", type=int, default=0, help="masking seed (the offline texts use --text-seed)")
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--out", required=True, help="result JSON (schema disel.mlm_perplexity/1)")
    for p in (commands.choices["perplexity"], commands.choices["mlm-perplexity"]):
        p.add_argument("--max-length", type=int, default=512)
        p.add_argument("--batch-size", type=int, default=8)


def _add_checkpoint_and_gate_commands(commands) -> None:
    """``retention`` (every checkpoint of a run), ``gates`` and ``smollm2``."""
    p = _subparser(
        commands, "retention", "evaluate every checkpoint-* of a training output into one table", handler=_cmd_retention
    )
    p.add_argument("--output-dir", required=True, help="training output directory with checkpoint-<step>/ folders")
    p.add_argument("--base", default=None, help="pre-trained model (default: from the adapter config)")
    p.add_argument("--evaluator", required=True, choices=["lm-eval", "perplexity", "gsm8k", "humaneval"])
    p.add_argument("--table", default=None, help="table JSON path (default <output-dir>/retention_<evaluator>.json)")
    p.add_argument("--no-base-row", action="store_true", help="do not evaluate the base model as step 0")
    p.add_argument("--no-resume", action="store_true", help="re-evaluate checkpoints already in the table")
    p.add_argument("--dtype", default="auto")
    _add_lm_eval_flags(p)  # also --max-length, --batch-size, --limit
    _add_corpus_flags(p, "--seed")
    p.add_argument("--stride", type=int, default=None)
    _add_evaluator_flags(p, "retention")

    p = _subparser(commands, "gates", "gate histograms over domains", handler=_cmd_gates)
    _add_model_flags(p)
    p.add_argument(
        "--domain",
        nargs="*",
        default=[],
        help="NAME=FILE.jsonl[:TEMPLATE]: rows with 'text' (all tokens), or instruction/output, question/answer "
        "(GSM8K) or prompt/canonical_solution (HumanEval): response tokens, prompt formatted with TEMPLATE "
        "(default alpaca). Without --domain: the offline math/general/code domains",
    )
    p.add_argument("--n", type=int, default=64, help="sequences per domain (the first N rows of a file)")
    p.add_argument(
        "--seed", type=int, default=12345, help="seed of the offline domains (keep it off the training seed)"
    )
    p.add_argument("--bins", type=int, default=20)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="result JSON (schema disel.gates/1)")

    p = _subparser(
        commands, "smollm2", "convert the offline SmolLM2-135M-Instruct once; print its directory", handler=_cmd_smollm2
    )
    p.add_argument("--cache-dir", default=None, help="default $DISEL_CACHE/... or <repo>/.cache/smollm2-135m-instruct")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    config_only = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config_only.add_argument("--config", default=None)
    config_path = config_only.parse_known_args(argv)[0].config
    if config_path is not None:
        values = _load_config_file(config_path)
        commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse has no public accessor)
        command = next((arg for arg in argv if arg in commands), None)
        if command is not None:
            subparser = commands[command]
            known = {action.dest for action in subparser._actions}  # noqa: SLF001
            unknown = sorted(set(values) - known)
            if unknown:
                raise preflight.UsageError(f"--config {config_path}: unknown keys for '{command}': {unknown}")
            # The config supplies defaults: a flag it sets is no longer required, and the command line still wins.
            for action in subparser._actions:  # noqa: SLF001
                if action.dest in values:
                    action.required = False
            subparser.set_defaults(**values)
    return parser.parse_args(argv)


def _dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    from ..models import resolve_dtype

    return resolve_dtype(name)


def _load(args: argparse.Namespace, **kwargs):
    from ..eval.generation import load_model_for_eval

    return load_model_for_eval(
        args.base, args.adapter, dtype=_dtype(args.dtype), gguf_file=args.gguf_file, device=args.device, **kwargs
    )


def _lm_eval_settings(args: argparse.Namespace):
    from ..eval.lm_eval_bridge import LmEvalSettings

    limit = args.limit
    if limit is not None and float(limit).is_integer() and limit >= 1:
        limit = int(limit)
    return LmEvalSettings(
        preset=None if args.preset in (None, "none", "") else args.preset,
        tasks=tuple(args.tasks),
        num_fewshot=args.num_fewshot,
        max_length=args.max_length,
        batch_size=args.batch_size,
        limit=limit,
        include_path=tuple(args.include_path),
        include_defaults=not args.no_default_tasks,
    )


def _corpora(args: argparse.Namespace, text_seed: int) -> dict[str, list[str]]:
    from ..data.offline_text import general_english_texts, python_code_texts
    from ..eval.perplexity import read_text_files

    corpora: dict[str, list[str]] = {}
    for path in args.text:
        corpora[Path(path).stem] = read_text_files([path])
    if "english" in args.offline:
        corpora["english"] = general_english_texts(args.n, text_seed)
    if "code" in args.offline:
        corpora["code"] = python_code_texts(args.n, text_seed)
    if not corpora:
        raise SystemExit("no texts: give --text FILE ... and/or --offline english code")
    return corpora


def _evaluator(args: argparse.Namespace, kind: str):
    """The evaluator ``kind`` built from the flags: the one definition behind both a standalone command and
    ``retention --evaluator kind``."""
    from disel.io import read_jsonl

    from ..eval import evaluators
    from ..eval.generation import GenerationSettings

    if kind == "lm-eval":
        return evaluators.LmEvalEvaluator(_lm_eval_settings(args))
    if kind == "perplexity":
        return evaluators.PerplexityEvaluator(
            _corpora(args, args.seed), max_length=args.max_length, stride=args.stride, batch_size=args.batch_size
        )
    if not args.data:
        raise SystemExit(f"{kind} needs --data FILE.jsonl")
    rows = read_jsonl(args.data, int(args.limit) if args.limit is not None else None)
    generation = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    template = {"template": args.template} if args.template else {}
    if kind == "gsm8k":
        return evaluators.Gsm8kEvaluator(rows, generation, **template)
    if not args.allow_code_execution:
        raise SystemExit("humaneval executes model-generated code: pass --allow-code-execution to confirm")
    return evaluators.HumanEvalEvaluator(
        rows, allow_code_execution=True, generation=generation, timeout_s=args.timeout, **template
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    """``lm-eval``, ``gsm8k``, ``humaneval``, ``perplexity``: one evaluator on one model, its record written."""
    evaluator = _evaluator(args, args.evaluator)
    outcome = evaluator(_load(args))
    record = dict(outcome.detail)
    if getattr(args, "data", None):
        record["data"] = str(args.data)
    print(_headline(evaluator.name, outcome.metrics, outcome.mean, outcome.detail.get("n")))
    _write(args.out, record)


def _headline(name: str, metrics: dict[str, float], mean: float, n: int | None = None) -> str:
    """One line of scores, e.g. ``gsm8k: exact_match=0.25, exact_match_flexible=0.3; mean=0.25 (n=8)``."""
    scores = ", ".join(f"{metric}={value:.4g}" for metric, value in metrics.items())
    return f"{name}: {scores}; mean={mean:.4g}" + (f" (n={n})" if n is not None else "")


def _cmd_mlm_perplexity(args: argparse.Namespace) -> None:
    from transformers import AutoModelForSequenceClassification

    from ..eval.generation import load_model_for_eval
    from ..eval.perplexity import masked_lm_perplexity, mlm_with_original_head

    num_labels = args.num_labels or (_num_labels_from_adapter(args.adapter) if args.adapter else None)

    class _Classifier:  # AutoModelForSequenceClassification with the classifier size of the adapter
        @staticmethod
        def from_pretrained(path, **kwargs):
            extra = {"num_labels": num_labels} if num_labels else {}
            return AutoModelForSequenceClassification.from_pretrained(path, **kwargs, **extra)

    loaded = load_model_for_eval(
        args.base,
        args.adapter,
        dtype=_dtype(args.dtype),
        device=args.device,
        model_class=_Classifier,
        padding_side="right",
    )
    mlm = mlm_with_original_head(args.pretrained_mlm or args.base, loaded.model)
    corpora = {
        name: masked_lm_perplexity(
            mlm,
            loaded.tokenizer,
            texts,
            mask_prob=args.mask_prob,
            seed=args.seed,
            max_length=args.max_length,
            batch_size=args.batch_size,
        )
        for name, texts in _corpora(args, args.text_seed).items()
    }
    metrics = {name: result["perplexity"] for name, result in corpora.items()}
    mean = sum(metrics.values()) / len(metrics)
    print(_headline("mlm-perplexity", metrics, mean))
    MlmPerplexityResult(
        dict(loaded.description), corpora, mean, pretrained_mlm=str(args.pretrained_mlm or args.base)
    ).write(args.out)
    print(f"wrote {args.out}")


def _cmd_retention(args: argparse.Namespace) -> None:
    from ..eval.progress import write_line
    from ..eval.retention import evaluate_checkpoints

    table = evaluate_checkpoints(
        args.output_dir,
        _evaluator(args, args.evaluator),
        base_path=args.base,
        table_path=args.table,
        include_base=not args.no_base_row,
        dtype=_dtype(args.dtype),
        resume=not args.no_resume,
        progress=write_line,  # the per-checkpoint lines, printed above the bar
    )
    print(f"{len(table['rows'])} rows; columns: {table['metric_columns']}")
    for row in table["rows"]:
        print(f"  {row['checkpoint']} (step {row['step']}): mean={row['mean']:.4g}")


def _cmd_gates(args: argparse.Namespace) -> None:
    from disel.io import read_jsonl

    from ..eval.gates import analyze_gates, default_offline_domains, domain_from_rows, save_gates

    domains = []
    for spec in args.domain:
        name, sep, rest = spec.partition("=")
        if not sep:
            raise SystemExit(f"--domain {spec!r}: expected NAME=FILE.jsonl[:TEMPLATE]")
        path, _, template = rest.partition(":")
        domains.append(domain_from_rows(name, read_jsonl(path, args.n), template or "alpaca"))
    if not domains:
        domains = default_offline_domains(args.n, args.seed)
    loaded = _load(args)
    result = analyze_gates(
        loaded.model,
        loaded.tokenizer,
        domains,
        bins=args.bins,
        batch_size=args.batch_size,
        max_length=args.max_length,
        description=loaded.description,
    )
    for name, domain in result["domains"].items():
        kinds = ", ".join(f"{kind}={stats['mean']:.3f}" for kind, stats in domain.get("by_kind", {}).items())
        print(f"gates {name}: mean gate {_mean_gate(domain['modules']):.3f} ({kinds}); {domain['sequences']} sequences")
    save_gates(result, args.out)
    print(f"wrote {args.out}")


def _mean_gate(modules: list[dict[str, Any]]) -> float:
    """Mean gate value over every recorded (token, rank component) of a domain's modules."""
    count = sum(m["count"] for m in modules)
    return sum(m["mean"] * m["count"] for m in modules) / count if count else float("nan")


def _add_components_command(commands) -> None:
    """``components``: the statistics JSON that ``disel-prune`` / ``disel-merge-static --stats`` read."""
    from .compress import add_data_flags, add_model_flags

    p = _subparser(
        commands, "components", "per-component gate statistics of a DISeL adapter (issue 11)", handler=_cmd_components
    )
    add_model_flags(p)
    add_data_flags(p)
    p.add_argument("--pairwise", action="store_true", help="also record gate correlations (r x r per layer)")
    p.add_argument("--out", required=True, help="statistics JSON (disel.ComponentStatistics.load_json reads it)")


def _cmd_components(args: argparse.Namespace) -> None:
    from .compress import UsageError, check_inputs, measure_components, statistics_headline

    try:
        check_inputs(args, out_file=args.out)
    except UsageError as problem:
        print(f"disel-eval: error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    stats, description = measure_components(args, pairwise=args.pairwise)
    stats.save_json(args.out, model=description)
    for line in statistics_headline(stats):
        print(f"components: {line}")
    print(f"wrote {args.out}")


def _cmd_smollm2(args: argparse.Namespace) -> None:
    from ..models import smollm2_path

    print(smollm2_path(args.cache_dir))


def _write(path: str, record: dict[str, Any]) -> None:
    write_record(path, record)  # checked and written through the record's typed class (schemas.EVAL_RECORDS)
    print(f"wrote {path}")


def _num_labels_from_adapter(adapter: str) -> int | None:
    """Rows of the saved classifier's output matrix (modules_to_save), or None if there is none."""
    from safetensors import safe_open

    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if key.endswith(("classifier.out_proj.weight", "classifier.weight", "score.weight")):
                return int(handle.get_slice(key).get_shape()[0])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
        preflight.check_evaluation(args)  # before any model is loaded
    except preflight.UsageError as error:
        return preflight.report("disel-eval", error)
    from ..eval.progress import show_progress

    with show_progress():  # the command line draws the evaluation loops' bars; library calls stay quiet
        args.handler(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
