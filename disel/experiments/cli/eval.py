"""``disel-eval <command> [flags]``: the evaluation command line, one small function per command.

``--config FILE`` (JSON or YAML, keys as the flags with ``_`` or ``-``) sets a command's defaults; flags on the
command line override it. ``gsm8k``, ``humaneval``, ``perplexity`` and ``lm-eval`` build the same evaluator object
(:mod:`disel.experiments.eval.evaluators`) as ``retention --evaluator ...``, so a checkpoint scores the same.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from ..schemas import MlmPerplexityResult, write_record
from . import compress, preflight
from ._args import DATA_FLAGS, MODEL_FLAGS


def _dtype(name: str | None):
    """``--dtype`` as :func:`~disel.experiments.models.resolve_dtype` reads it (``auto``: the checkpoint's own);
    not given: bfloat16 on CUDA, as in the paper's GPU evaluation, float32 on CPU."""
    import torch

    from ..models import resolve_dtype

    if name is None:
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return resolve_dtype(name)


def _load(args: argparse.Namespace, **kwargs):
    from ..models import load_model_for_eval

    return load_model_for_eval(
        args.base, args.adapter, dtype=_dtype(args.dtype), gguf_file=args.gguf_file, device=args.device, **kwargs
    )


def _corpora(args: argparse.Namespace, text_seed: int) -> dict[str, list[str]]:
    from ..data.offline_text import general_english_texts, python_code_texts
    from ..eval.perplexity import read_texts

    corpora = {Path(path).stem: read_texts(path) for path in args.text}
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
    from ..eval.lm_eval_bridge import LmEvalSettings

    if kind == "lm-eval":
        limit = args.limit
        if limit is not None and float(limit).is_integer() and limit >= 1:
            limit = int(limit)  # lm-eval reads a float below 1 as a fraction of the documents
        return evaluators.LmEvalEvaluator(
            LmEvalSettings(
                preset=None if args.preset in (None, "none", "") else args.preset,
                tasks=tuple(args.tasks),
                num_fewshot=args.num_fewshot,
                max_length=args.max_length,
                batch_size=args.batch_size,
                limit=limit,
                include_path=tuple(args.include_path),
                include_defaults=not args.no_default_tasks,
            )
        )
    if kind == "perplexity":
        return evaluators.PerplexityEvaluator(
            _corpora(args, args.seed), max_length=args.max_length, stride=args.stride, batch_size=args.batch_size
        )
    if not args.data:
        raise SystemExit(f"{kind} needs --data FILE.jsonl")
    rows = read_jsonl(args.data, int(args.limit) if args.limit is not None else None)
    generation = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    # --template, else the one the evaluated run was trained with (its run_config.yaml), else the task's own
    # (alpaca for gsm8k, magicoder for humaneval)
    trained = getattr(args, "adapter", None) or getattr(args, "output_dir", None)  # the run evaluated
    template = args.template or evaluators.training_template(trained)
    template = {"template": template} if template else {}
    if kind == "gsm8k":
        return evaluators.Gsm8kEvaluator(rows, generation, **template)
    if not args.allow_code_execution:
        raise SystemExit("humaneval executes model-generated code: pass --allow-code-execution to confirm")
    return evaluators.HumanEvalEvaluator(
        rows, allow_code_execution=True, generation=generation, timeout_s=args.timeout, **template
    )


def _headline(name: str, metrics: dict[str, float], mean: float, n: int | None = None) -> str:
    """One line of scores, e.g. ``gsm8k: exact_match=0.25, exact_match_flexible=0.3; mean=0.25 (n=8)``."""
    scores = ", ".join(f"{metric}={value:.4g}" for metric, value in metrics.items())
    return f"{name}: {scores}; mean={mean:.4g}" + (f" (n={n})" if n is not None else "")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    """``lm-eval``, ``gsm8k``, ``humaneval``, ``perplexity``: the command's evaluator on one model."""
    evaluator = _evaluator(args, args.command)
    outcome = evaluator(_load(args))
    print(_headline(evaluator.name, outcome.metrics, outcome.mean, outcome.detail.get("n")))
    data = {"data": str(args.data)} if getattr(args, "data", None) else {}
    write_record(args.out, {**outcome.detail, **data})  # checked and written through its class (schemas.EVAL_RECORDS)


def _cmd_mlm_perplexity(args: argparse.Namespace) -> None:
    from transformers import AutoModelForSequenceClassification

    from ..eval.perplexity import masked_lm_perplexity, mlm_with_original_head

    num_labels = args.num_labels or (_num_labels_from_adapter(args.adapter) if args.adapter else None)
    classifier_size = {"num_labels": num_labels} if num_labels else {}
    loaded = _load(args, model_class=AutoModelForSequenceClassification, **classifier_size)
    pretrained_mlm = str(args.pretrained_mlm or args.base)
    mlm = mlm_with_original_head(pretrained_mlm, loaded.model)
    masking = dict(mask_prob=args.mask_prob, seed=args.seed, max_length=args.max_length, batch_size=args.batch_size)
    corpora = {
        name: masked_lm_perplexity(mlm, loaded.tokenizer, texts, **masking)
        for name, texts in _corpora(args, args.text_seed).items()
    }
    metrics = {name: result["perplexity"] for name, result in corpora.items()}
    mean = sum(metrics.values()) / len(metrics)
    print(_headline("mlm-perplexity", metrics, mean))
    MlmPerplexityResult(dict(loaded.description), corpora, mean, pretrained_mlm=pretrained_mlm).write(args.out)


def _num_labels_from_adapter(adapter: str) -> int | None:
    """Rows of the saved classifier's output matrix (modules_to_save), or None if there is none."""
    from peft.utils import load_peft_weights

    for key, weight in load_peft_weights(adapter, device="cpu").items():
        if key.endswith(("classifier.out_proj.weight", "classifier.weight", "score.weight")):
            return int(weight.shape[0])
    return None


def _cmd_retention(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from ..eval.retention import evaluate_checkpoints

    table = evaluate_checkpoints(
        args.output_dir,
        _evaluator(args, args.evaluator),
        base_path=args.base,
        table_path=args.table,
        include_base=not args.no_base_row,
        dtype=_dtype(args.dtype),
        resume=not args.no_resume,
        progress=tqdm.write,  # the per-checkpoint lines, printed above the bar without breaking it
    )
    print(f"{len(table['rows'])} rows; columns: {table['metric_columns']}")
    for row in table["rows"]:
        print(f"  {row['checkpoint']} (step {row['step']}): mean={row['mean']:.4g}")


def _cmd_gates(args: argparse.Namespace) -> None:
    from ..eval.gates import analyze_gates, mean_gate, save_gates

    domains = compress.gate_domains(args)  # the --domain files (as disel-eval components reads them) or offline
    loaded = _load(args)
    sizes = dict(bins=args.bins, batch_size=args.batch_size, max_length=args.max_length)
    result = analyze_gates(loaded.model, loaded.tokenizer, domains, **sizes, description=loaded.description)
    for name, domain in result["domains"].items():
        kinds = ", ".join(f"{kind}={stats['mean']:.3f}" for kind, stats in domain.get("by_kind", {}).items())
        print(f"gates {name}: mean gate {mean_gate(domain):.3f} ({kinds}); {domain['sequences']} sequences")
    save_gates(result, args.out)


def _cmd_components(args: argparse.Namespace) -> None:
    """The statistics JSON that ``disel-prune`` / ``disel-merge-static --stats`` read."""
    stats, description = compress.measure_components(args, pairwise=args.pairwise)
    stats.save_json(args.out, model=description)
    for line in compress.statistics_headline(stats):
        print(f"components: {line}")


def _cmd_smollm2(args: argparse.Namespace) -> None:
    from ..models import smollm2_path

    print(smollm2_path(args.cache_dir))


# Every flag used by more than one command, declared once; a command's entry may replace its options.
_FLAGS: dict[str, dict[str, Any]] = {
    "--base": dict(required=True, help="pre-trained model directory (or a fully fine-tuned one)"),
    "--adapter": dict(help="PEFT adapter directory (DISeL/LoRA/DoRA/AdaLoRA); omit for the base model"),
    "--gguf-file": dict(help="read the base weights from this GGUF file inside --base"),
    "--dtype": dict(
        help="float32, bfloat16, float16 or auto (the checkpoint's own); default bfloat16 on CUDA, float32 on CPU"
    ),
    "--device": dict(help="cuda / cpu (default: cuda if available)"),
    "--out": dict(required=True),  # its help names the command's result schema (build_parser)
    "--max-length": dict(type=int, default=512),
    "--batch-size": dict(type=int, default=8),
    "--preset": dict(default="paper-retention", help="paper-retention, or 'none' to run --tasks only"),
    "--tasks": dict(nargs="*", default=[], help="extra tasks, each 'task' or 'task:metric,filter'"),
    "--include-path": dict(nargs="*", default=[], help="folders with extra task YAMLs"),
    "--no-default-tasks": dict(action="store_true", help="index only --include-path tasks (faster)"),
    "--num-fewshot": dict(type=int, default=0),
    "--limit": dict(type=float, help="documents per task (smoke tests only)"),
    "--text": dict(nargs="*", default=[], help="text files (one text each) or .jsonl files ('text' field)"),
    "--offline": dict(nargs="*", default=[], choices=["english", "code"], help="offline corpora to add"),
    "--n": dict(type=int, default=200, help="texts per offline corpus"),
    "--seed": dict(type=int, default=1, help="seed choosing the offline texts"),
    "--stride": dict(type=int, help="window step (default max_length // 2)"),
    "--data": dict(
        required=True, help="JSONL: question/answer (gsm8k) or task_id, prompt, test, entry_point (humaneval)"
    ),
    "--template": dict(
        help="prompt template (default: the one the adapter's run trained with, read from its run_config.yaml; "
        "else alpaca for gsm8k, magicoder for humaneval); its stop strings end answers"
    ),
    "--max-new-tokens": dict(type=int, default=512),
    "--allow-code-execution": dict(action="store_true", help="required: confirms running generated code"),
    "--timeout": dict(type=float, default=10.0, help="seconds per HumanEval program"),
}
_MODEL = "--base --adapter --gguf-file --dtype --device"
_LM_EVAL = "--preset --tasks --include-path --no-default-tasks --num-fewshot --max-length --batch-size --limit"
_TEXTS = "--text --offline --n --seed"
_ROWS = "--data --template --max-new-tokens --batch-size --limit"
_CODE = "--allow-code-execution --timeout"
_ROW_LIMIT = {"--limit": dict(type=int, help="only the first N rows (smoke tests)")}
_DOMAIN_HELP = (
    "NAME=FILE.jsonl[:TEMPLATE]: rows with 'text' (all tokens), or instruction/output, question/answer "
    "(GSM8K) or prompt/canonical_solution (HumanEval): response tokens, prompt formatted with TEMPLATE "
    "(default: the adapter's training template, else alpaca). Without --domain: the offline math/general/code domains"
)


class _Command(NamedTuple):
    """A subcommand of ``disel-eval``."""

    help: str
    handler: Callable[[argparse.Namespace], None]
    shared: str = ""  # the names of the flags it takes from _FLAGS
    own: Mapping[str, dict[str, Any]] = MappingProxyType({})  # its own flags: they replace a shared one of that name


_COMMANDS: dict[str, _Command] = {
    "lm-eval": _Command(
        "lm-evaluation-harness (the paper's retention suite by default)", _cmd_evaluate, f"{_MODEL} {_LM_EVAL} --out"
    ),
    "gsm8k": _Command("GSM8K-style strict exact match", _cmd_evaluate, f"{_MODEL} {_ROWS} --out", _ROW_LIMIT),
    "humaneval": _Command(
        "HumanEval-style pass@1 (executes generated code)", _cmd_evaluate, f"{_MODEL} {_ROWS} {_CODE} --out", _ROW_LIMIT
    ),
    "perplexity": _Command(
        "causal-LM perplexity over texts", _cmd_evaluate, f"{_MODEL} {_TEXTS} --stride --max-length --batch-size --out"
    ),
    "mlm-perplexity": _Command(
        "masked-LM perplexity with the original MLM head",
        _cmd_mlm_perplexity,
        f"{_MODEL} {_TEXTS} --max-length --batch-size --out",
        {
            "--pretrained-mlm": dict(help="checkpoint with the original MLM head (default --base)"),
            "--num-labels": dict(type=int, help="classifier size (default: read from the adapter)"),
            "--text-seed": _FLAGS["--seed"],
            "--seed": dict(type=int, default=0, help="masking seed (the offline texts use --text-seed)"),
            "--mask-prob": dict(type=float, default=0.15),
        },
    ),
    "retention": _Command(
        "evaluate every checkpoint-* of a training output into one table",
        _cmd_retention,
        f"--dtype {_LM_EVAL} {_TEXTS} --stride {_ROWS} {_CODE}",
        {
            "--output-dir": dict(required=True, help="training output directory with checkpoint-<step>/ folders"),
            "--base": dict(help="pre-trained model (default: from the adapter config)"),
            "--evaluator": dict(required=True, choices=["lm-eval", "perplexity", "gsm8k", "humaneval"]),
            "--table": dict(help="table JSON path (default <output-dir>/retention_<evaluator>.json)"),
            "--no-base-row": dict(action="store_true", help="do not evaluate the base model as step 0"),
            "--no-resume": dict(action="store_true", help="re-evaluate checkpoints already in the table"),
            "--data": {**_FLAGS["--data"], "required": False},
        },
    ),
    "gates": _Command(
        "gate histograms over domains",
        _cmd_gates,
        f"{_MODEL} --n --seed --max-length --batch-size --out",
        {
            "--domain": dict(nargs="*", default=[], help=_DOMAIN_HELP),
            "--n": dict(type=int, default=64, help="sequences per domain (the first N rows of a file)"),
            "--seed": dict(type=int, default=12345, help="seed of the offline domains (keep it off the training seed)"),
            "--bins": dict(type=int, default=20),
        },
    ),
    "smollm2": _Command(
        "convert the offline SmolLM2-135M-Instruct once; print its directory",
        _cmd_smollm2,
        own={"--cache-dir": dict(help="default $DISEL_CACHE/... or <repo>/.cache/smollm2-135m-instruct")},
    ),
    "components": _Command(  # with disel-prune's model and data flags, so the statistics are measured alike
        "per-component gate statistics of a DISeL adapter (issue 11)",
        _cmd_components,
        own={
            **MODEL_FLAGS,
            **DATA_FLAGS,
            "--pairwise": dict(action="store_true", help="also record gate correlations (r x r per layer)"),
            "--out": dict(required=True, help="statistics JSON (disel.ComponentStatistics.load_json reads it)"),
        },
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disel-eval", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--config", help="JSON/YAML file of flag values (flags override it)")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, (help_text, handler, shared, own) in _COMMANDS.items():
        subparser = commands.add_parser(command, help=help_text, allow_abbrev=False)
        subparser.set_defaults(handler=handler)
        for name in dict.fromkeys([*shared.split(), *own]):  # in order, each once
            options = own.get(name) or _FLAGS[name]
            if name == "--out":
                options = {"help": f"result JSON (schema disel.{command.replace('-', '_')}/1)", **options}
            subparser.add_argument(name, **options)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    from ..config import read_mapping

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    config_only = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config_only.add_argument("--config")
    config_path = config_only.parse_known_args(argv)[0].config
    command = next((arg for arg in argv if arg in _COMMANDS), None)
    if config_path is None or command is None:  # without a command, argparse refuses the command line
        return parser.parse_args(argv)
    values = preflight.as_usage_error(read_mapping, config_path, prefix="--config: ")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    subparser = parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001 (no public accessor)
    unknown = sorted(set(values) - {action.dest for action in subparser._actions})  # noqa: SLF001
    if unknown:
        raise preflight.UsageError(f"--config {config_path}: unknown keys for '{command}': {unknown}")
    # The config supplies defaults: a flag it sets is no longer required, and the command line still wins.
    for action in subparser._actions:  # noqa: SLF001
        action.required = action.required and action.dest not in values
    subparser.set_defaults(**values)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
        preflight.check_arguments(args)  # before any model is loaded
    except preflight.UsageError as error:
        return preflight.report("disel-eval", error)
    from ..eval.progress import show_progress

    with show_progress():  # the command line draws the evaluation loops' bars; library calls stay quiet
        args.handler(args)
    if getattr(args, "out", None) is not None:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
