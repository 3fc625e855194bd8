"""Issue 11, item 6: how far can the evidence run's SmolLM2 DISeL adapter be pruned or partly merged before
exact match or retention moves? A study recipe (:class:`CompressionConfig`, ``kind: compression``), resumable:

    disel-study --recipe recipes/evidence/smollm2_compression.yaml

Steps (each cached as a JSON file in ``out``, skipped when present; delete a file to redo it):

1. ``statistics.json``: :func:`disel.component_statistics` (with gate correlations) of the adapter on
   three domains: ``math`` = training problems in the training prompt format (``data/train.jsonl``
   of the evidence folder), ``english`` and ``code`` = texts of the evidence retention pools *not* among the
   retention texts that perplexity and KL are scored on (:func:`.stages.retention_pools`), so the
   components are chosen on data disjoint from the evaluation. ``statistics_aligned.json``: the same
   after :func:`disel.align_components`, and how many groups it aligned.
2. ``levels/reference.json``: the unpruned adapter; ``levels/<operation>-<level>.json`` per level, each on
   a freshly loaded model: ``prune`` (remove the fraction ``level`` of all components, smallest
   contribution first), ``prune_aligned`` (the same after aligning components that share one gate; skipped
   when alignment finds no group), ``merge_static`` (fold components whose gate std is below ``level`` on
   every domain). Each is scored by the evidence's own :func:`.stages.evaluate_model` (exact match on the
   held-out problems, perplexity and KL to the *original* base on English and code), with the
   fraction of components removed or merged, the adapter parameters left, and the output change the
   operation measured on the first ``change_texts`` statistics texts per domain.
3. ``timing.json``: one forward pass on the same tokens, repetitions interleaved over the models (base,
   unpruned DISeL, LoRA, and each operation's largest acceptable reduction), medians and their ratios.
4. ``compression.json`` (:class:`CompressionResults`) and ``compression.md`` (table); the figure is
   ``python -m paper_figs.evidence_compression --results <out>/compression.json --out <out>``.

**Acceptable** (stated once, applied to every level): exact match at or above the lower end of the
unpruned adapter's 95% bootstrap interval (over test problems), and retention unchanged: in English and
in code, KL to the base at most ``kl_tolerance`` (relative, default 10%) above the unpruned adapter's and
perplexity at most ``perplexity_tolerance`` (default 1%) above. The same texts are scored at every level,
so these are paired differences, not sampling noise.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

from disel.io import read_json, write_json_atomic, write_text_atomic

from ..models import force_offline, load_model_for_eval, model_path_or_smollm2, portable_path, recorded_path
from . import stages
from .records import CheckpointEval, DataManifest, plain
from .results import CompressionResults, LevelResult, load_compression_results
from .stats import exact_match_interval

__all__ = [
    "CompressionResults",
    "CompressionConfig",
    "LevelResult",
    "check_compression",
    "load_compression_results",
    "run_compression",
]

OPERATIONS = ("prune", "prune_aligned", "merge_static")
RESULTS_FILE, TABLE_FILE = "compression.json", "compression.md"


class CompressionConfig(BaseModel):
    """The compression study's recipe (``recipes/evidence/smollm2_compression.yaml``; module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    kind: Literal["compression"]
    evidence_dir: str = "runs/evidence"  # a disel-study output folder (with data/manifest.json)
    adapter: str  # the DISeL adapter folder, e.g. runs/evidence/runs/disel_paper-seed0
    out: str  # output folder (cached steps, results, table)
    fractions: list[Annotated[float, Field(ge=0, lt=1)]] = [0, 0.25, 0.5, 0.75, 0.9]  # of all components to prune
    merge_std: list[NonNegativeFloat] = [0.005, 0.01, 0.02, 0.05]  # gate std thresholds of the static merge
    operations: list[Literal["prune", "prune_aligned", "merge_static"]] = list(OPERATIONS)
    lora_adapter: str | None = None  # LoRA adapter to time against (default: the reference arm's, same seed)
    evidence_recipe: str | None = None  # the evidence study recipe (default: the one in <evidence_dir>/results.json)
    evidence_overrides: list[str] = []  # keys of that recipe
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: str = "float32"
    stats_texts: PositiveInt = 16  # texts per domain for the statistics
    change_texts: PositiveInt = 4  # of those, texts per domain each level measures its output change on (2 passes)
    stats_batch_size: PositiveInt = 4  # sequences per statistics batch (the output change holds float64 logits)
    kl_tolerance: NonNegativeFloat = 0.1  # relative KL rise still counted as retention unchanged
    perplexity_tolerance: NonNegativeFloat = 0.01  # relative perplexity rise still counted as retention unchanged
    bootstrap_replicates: PositiveInt = 2000  # replicates of the exact-match intervals
    timing_repetitions: PositiveInt = 10  # interleaved timed rounds over the models
    timing_tokens: PositiveInt = 128  # tokens per timed sequence
    timing_batch: PositiveInt = 1  # sequences per timed forward pass


# ----------------------------------------------------------------------------------------------- inputs


def check_compression(settings: CompressionConfig):
    """Every input checked before a model is loaded (the numbers by :class:`CompressionConfig`): ValueError
    naming the recipe key for inputs that cannot work, or ConfigError; the evidence study's recipe."""
    from ..cli import preflight
    from ..models import is_adapter_dir

    adapter = Path(settings.adapter)
    if not is_adapter_dir(adapter):
        raise ValueError(
            f"adapter {settings.adapter!r} is not a saved adapter folder (no adapter_config.json); the "
            "evidence run's are runs/<arm>-seed<k>/ of its output folder (and <figures_dir>/adapters/<arm>-seed<k>/)"
        )
    if not (Path(settings.evidence_dir) / "data" / "manifest.json").is_file():
        raise ValueError(
            f"evidence_dir {settings.evidence_dir!r} holds no data/manifest.json (not a disel-study "
            "output folder, or its data stage has not run)"
        )
    if Path(settings.out).resolve() == adapter.resolve():
        raise ValueError("out must be a folder of its own, not the adapter folder")
    preflight.check_output_dir(settings.out, "out")
    config = _evidence_config(settings)
    _check_settings(settings)
    return config


def _evidence_config(settings: CompressionConfig):
    """The evidence recipe: ``evidence_recipe`` if given, else the one recorded in ``<evidence_dir>/results.json``."""
    from ..config import apply_overrides
    from .config import StudyConfig, load_study_config

    if settings.evidence_recipe is not None:
        return load_study_config(settings.evidence_recipe, settings.evidence_overrides, device=settings.device)
    results = Path(settings.evidence_dir) / "results.json"
    if not results.is_file():
        raise ValueError(
            f"evidence_dir {settings.evidence_dir!r} has no results.json to read the recipe from "
            "(the run has not finished); set evidence_recipe"
        )
    raw = apply_overrides(read_json(results)["recipe"]["evidence"], settings.evidence_overrides)
    paths = {key: recorded_path(raw[key]) for key in ("model_path", "training_recipe") if raw.get(key)}
    return StudyConfig.model_validate({**raw, **paths, "device": settings.device})


def _evidence_run(settings: CompressionConfig, reference_arm: str) -> tuple[dict | None, str | None]:
    """(the evidence run's final-checkpoint record of this adapter, the LoRA adapter of the same seed): the
    run whose label names the adapter folder (``copy_final_adapters`` names them so); (None, None) if none."""
    from .results import load_results

    results = Path(settings.evidence_dir) / "results.json"
    runs = {f"{r.arm}-seed{r.seed}": r for r in load_results(results).runs} if results.is_file() else {}
    run = runs.get(Path(settings.adapter).name)
    if run is None:
        return None, None
    lora = Path(settings.adapter).parent / f"{reference_arm}-seed{run.seed}"
    return asdict(run.checkpoints[-1]), str(lora) if lora.is_dir() else None


# ------------------------------------------------------------------------------------------ models, data


@dataclass
class Study:
    """Everything a level needs: this study's recipe, the evidence study's recipe and manifest, the base model's
    path and the base model (the KL reference), the statistics data and the statistics."""

    settings: CompressionConfig
    config: Any
    manifest: DataManifest
    model_path: str
    base: Any = None
    batches: dict[str, list] = field(default_factory=dict)
    change_batches: dict[str, list] = field(default_factory=dict)
    stats: Any = None
    aligned_stats: Any = None
    aligned_groups: int = 0

    @property
    def out(self) -> Path:
        return Path(self.settings.out)

    def load(self, adapter: str | None = None):
        """A fresh (model, tokenizer, description) with ``adapter`` (default: the study's), as the evidence run
        loads a checkpoint."""
        adapter = adapter or self.settings.adapter
        return load_model_for_eval(self.model_path, adapter, dtype=self.settings.dtype, device=self.config.device)


def _statistics_texts(study: Study, n: int) -> dict[str, list[str]]:
    """Per domain, ``n`` texts disjoint from the evaluation (module docstring, step 1)."""
    from disel.io import read_jsonl

    from ..data.templates import get_template

    template = get_template(stages.training_template(study.config))
    # The manifest's train_file is relative to where the evidence ran; the folder layout is fixed.
    rows = read_jsonl(Path(study.settings.evidence_dir) / "data" / "train.jsonl", n)
    texts = {"math": [template.format_prompt(r["instruction"]) + r["output"] for r in rows]}
    for domain, pool in stages.retention_pools(study.config).items():
        scored = set(study.manifest.retention[domain])
        texts[domain] = [t for t in pool if t not in scored][:n]
        if not texts[domain]:
            raise RuntimeError(f"no {domain} text is left outside the retention texts for the statistics")
    return texts


def _input_batches(study: Study, tokenizer: Any, texts: list[str], max_length: int, size: int) -> list[dict]:
    """Token batches of ``texts`` (:func:`.stages.token_batches`) on the base's device, without labels: the
    statistics and the timing read outputs, not losses."""
    return [
        {k: v.to(study.base.device) for k, v in batch.items() if k != "labels"}
        for batch in stages.token_batches(tokenizer, texts, max_length, size)
    ]


def _prepare_statistics(study: Study, tokenizer: Any) -> None:
    """Batches (for the statistics; their first ``change_texts`` texts per domain for the output change) and
    statistics (plain and aligned), from ``statistics*.json`` when present."""
    import disel

    settings = study.settings
    length, size = study.config.evaluation.retention_max_length, settings.stats_batch_size
    texts = _statistics_texts(study, settings.stats_texts)
    study.batches = {d: _input_batches(study, tokenizer, t, length, size) for d, t in texts.items()}
    study.change_batches = {
        d: _input_batches(study, tokenizer, t[: settings.change_texts], length, size) for d, t in texts.items()
    }
    path, aligned_path = study.out / "statistics.json", study.out / "statistics_aligned.json"
    if not path.is_file():
        model = study.load().model
        disel.component_statistics(model, study.batches, pairwise=True).save_json(path, adapter=settings.adapter)
    study.stats = disel.ComponentStatistics.load_json(path)
    if "prune_aligned" not in settings.operations:
        return
    if not aligned_path.is_file():  # after align_components; the plain statistics when no component shares a gate
        model = study.load().model
        groups = sum(len(layer) for layer in disel.align_components(model, study.stats).groups.values())
        aligned = disel.component_statistics(model, study.batches, pairwise=True) if groups else study.stats
        aligned.save_json(aligned_path, adapter=settings.adapter, aligned_groups=groups)
    study.aligned_stats = disel.ComponentStatistics.load_json(aligned_path)
    study.aligned_groups = read_json(aligned_path)["aligned_groups"]


def _check_settings(settings: CompressionConfig) -> None:
    """``out/settings.json``: what the cached steps depend on; ValueError if ``out`` was made with others."""
    depends_on = {
        "adapter": str(Path(settings.adapter).resolve()),
        "dtype": settings.dtype,
        "stats_texts": settings.stats_texts,
        "change_texts": settings.change_texts,
        "recipe": settings.evidence_recipe,
        "override": list(settings.evidence_overrides),
    }
    path = Path(settings.out) / "settings.json"
    if path.is_file() and read_json(path) != depends_on:
        raise ValueError(
            f"out {str(path.parent)!r} holds steps made with other settings ({read_json(path)}); give a new "
            "out, or delete that folder to start over"
        )
    write_json_atomic(path, depends_on)


# ----------------------------------------------------------------------------------------------- levels


def _apply(study: Study, model: Any, operation: str, level: float):
    """Apply ``operation`` at ``level`` in place; the report's output change (None for the reference)."""
    import disel

    if operation == "reference":
        return None
    if operation == "merge_static":
        return disel.merge_static(model, study.stats, std_threshold=level, batches=study.change_batches).output_change
    stats = study.stats
    if operation == "prune_aligned":
        disel.align_components(model, study.stats)
        stats = study.aligned_stats
    return disel.prune(model, stats, keep_fraction=1.0 - level, batches=study.change_batches).output_change


def _level_file(study: Study, operation: str, level: float) -> Path:
    name = "reference" if operation == "reference" else f"{operation}-{level:g}"
    return study.out / "levels" / f"{name}.json"


def _evaluate_level(study: Study, operation: str, level: float, total: int) -> dict[str, Any]:
    """A fresh model with the operation applied, scored by the evidence's evaluation; written to its file."""
    from disel.components.branches import find_branches

    loaded = study.load()
    change = _apply(study, loaded.model, operation, level)
    branches = find_branches(loaded.model)  # what is left gated after the operation
    gated, parameters = sum(b.rank for b in branches), sum(b.num_parameters() for b in branches)
    evaluation = stages.evaluate_model(
        loaded, study.config, study.manifest, is_base=False, is_disel=False, base_model=study.base
    )
    record = dict(
        plain(evaluation),
        operation=operation,
        level=level,
        gated_components=gated,
        adapter_parameters=parameters,
        fraction_reduced=1.0 - gated / total,
        output_change_rms=None if change is None else change.relative_rms,
    )
    write_json_atomic(_level_file(study, operation, level), record)
    return record


def _plan(study: Study) -> tuple[list[tuple[str, float]], list[str]]:
    """Every (operation, level) to evaluate, reference first; notes on what was left out and why."""
    settings = study.settings
    plan, notes = [("reference", 0.0)], []
    for operation in settings.operations:
        if operation == "prune_aligned" and study.aligned_groups == 0:
            notes.append(
                "prune_aligned skipped: no components share a gate (correlation >= 0.99), so alignment "
                "changes nothing and it equals prune"
            )
            continue
        levels = settings.merge_std if operation == "merge_static" else settings.fractions
        plan += [(operation, level) for level in levels]
    return plan, notes


def _run_levels(study: Study, plan: list[tuple[str, float]], echo=print) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    total = sum(entry.rank for entry in study.stats.layers)
    records = []
    for operation, level in tqdm(plan, desc="compression levels", unit="level", dynamic_ncols=True):
        path = _level_file(study, operation, level)
        if path.is_file():
            records.append(read_json(path))
            continue
        record = _evaluate_level(study, operation, level, total)
        records.append(record)
        headline = stages.headline(CheckpointEval.from_dict(record))  # the level's extra keys are ignored
        echo(f"[{path.stem}] reduced {record['fraction_reduced']:.3f}, {headline}, {record['seconds']:.0f} s")
    return records


# ----------------------------------------------------------------------------------------------- results


def _exact_match_interval(record: dict[str, Any], settings: CompressionConfig) -> tuple[float, float, float]:
    """(estimate, low, high) of a level's exact match: the bootstrap over its test problems, seeded alike."""
    return exact_match_interval(np.array(record["correct"]), np.random.default_rng(0), settings.bootstrap_replicates)


def _level_result(
    record: dict[str, Any], reference: dict[str, Any], settings: CompressionConfig, reference_low: float
) -> dict[str, Any]:
    """One level's :class:`LevelResult` fields (a level file's keys), with its acceptability (module docstring)
    against ``reference``; :class:`CompressionResults` coerces them (e.g. a level ``0`` to ``0.0``)."""
    estimate, low, high = _exact_match_interval(record, settings)
    acceptable = estimate >= reference_low and all(
        record["kl"][d] <= reference["kl"][d] * (1 + settings.kl_tolerance)
        and record["perplexity"][d] <= reference["perplexity"][d] * (1 + settings.perplexity_tolerance)
        for d in stages.DOMAINS
    )
    return {
        **{f.name: record[f.name] for f in fields(LevelResult) if f.name in record},
        "exact_match": {"estimate": estimate, "low": low, "high": high},
        "correct": "".join(str(int(c)) for c in record["correct"]),
        "acceptable": bool(acceptable),
    }


def format_table(results: CompressionResults) -> str:
    """Markdown: one row per level (the reference first), then the largest acceptable reductions and timing."""
    header = (
        "| operation | level | reduced | gated | adapter params | exact match [95%] | ppl en / code | "
        "KL en / code | output change | acceptable |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in [results.reference, *results.levels]:
        em = r.exact_match
        change = "-" if r.output_change_rms is None else f"{r.output_change_rms:.3g}"
        lines.append(
            f"| {r.operation} | {r.level:g} | {r.fraction_reduced:.3f} | {r.gated_components} | "
            f"{r.adapter_parameters} | {em.estimate:.3f} [{em.low:.3f}, {em.high:.3f}] | "
            f"{r.perplexity['english']:.3f} / {r.perplexity['code']:.3f} | {r.kl['english']:.4f} / "
            f"{r.kl['code']:.4f} | {change} | {'yes' if r.acceptable else 'no'} |"
        )
    criterion = results.criterion
    lines += [
        "",
        (
            f"Acceptable: exact match >= the lower end of the unpruned adapter's 95% interval; KL at most "
            f"{criterion['kl_tolerance']:.0%} and perplexity at most {criterion['perplexity_tolerance']:.0%} "
            "above the unpruned adapter's, on English and on code."
        ),
    ]
    for op, best in results.best.items():
        lines.append(
            f"- {op}: largest acceptable reduction " + ("none" if best is None else f"{best:.3f} of the components")
        )
    reached = {op: best for op, best in results.best.items() if best is not None}
    if reached:
        op = max(reached, key=reached.get)
        lines.append(f"- largest acceptable reduction overall: {op}, {reached[op]:.3f} of the components")
    lines += [f"- note: {note}" for note in results.notes]
    if results.evidence_final is not None:
        final = results.evidence_final
        lines.append(
            f"- the evidence run's own evaluation of this adapter (step {final['step']}): exact match "
            f"{final['exact_match']['estimate']:.3f}, KL en / code {final['kl']['english']:.4f} / "
            f"{final['kl']['code']:.4f} (the reference row should match it)"
        )
    for name, ratio in results.timing.get("ratios", {}).items():
        lines.append(f"- inference time {name}: {ratio:.3f}")
    return "\n".join(lines) + "\n"


def _aggregate(study: Study, records: list[dict], notes: list[str], evidence_final: dict | None) -> CompressionResults:
    settings, reference = study.settings, records[0]
    _, reference_low, _ = _exact_match_interval(reference, settings)
    reference_result, *levels = [_level_result(r, reference, settings, reference_low) for r in records]
    operations = [op for op in OPERATIONS if any(r["operation"] == op for r in levels)]
    raw = {
        "adapter": portable_path(settings.adapter),
        "base_model": portable_path(study.model_path),
        "evidence_dir": portable_path(settings.evidence_dir),
        "total_components": sum(entry.rank for entry in study.stats.layers),
        "criterion": {
            "exact_match_low": reference_low,
            "kl_tolerance": settings.kl_tolerance,
            "perplexity_tolerance": settings.perplexity_tolerance,
            "confidence": 0.95,
        },
        "reference": reference_result,
        "levels": levels,
        # per operation, the largest acceptable fraction reduced (None: no level acceptable)
        "best": {
            op: max((r["fraction_reduced"] for r in levels if r["operation"] == op and r["acceptable"]), default=None)
            for op in operations
        },
        "notes": notes,
        "evidence_final": evidence_final,
    }
    return CompressionResults.from_dict(raw)


# ------------------------------------------------------------------------------------------------ timing


def _timed_adapters(results: CompressionResults, lora: str | None) -> dict[str, tuple[str | None, str, float]]:
    """name → (adapter (None: the study's), operation, level) of each adapted model to time: the unpruned
    adapter, LoRA (if found), each operation at its largest acceptable reduction (when above 0)."""
    adapters = {"disel": (None, "reference", 0.0)}
    if lora:
        adapters["lora"] = (lora, "reference", 0.0)
    for op, best in results.best.items():
        if best:
            level = next(r.level for r in results.levels if r.operation == op and r.fraction_reduced == best)
            adapters[f"{op}@{level:g}"] = (None, op, level)
    return adapters


def _median_forward_seconds(models: dict[str, Any], batch: dict[str, Any], repetitions: int) -> dict[str, float]:
    """Median seconds of one forward pass per model, the models interleaved within each repetition (so
    that a slow spell of a shared machine hits them all alike), after one warm-up pass each."""
    import torch

    times: dict[str, list[float]] = {name: [] for name in models}
    # GPU calls return before the work is done: time the work itself
    synchronize = torch.cuda.synchronize if next(iter(batch.values())).is_cuda else lambda: None
    with torch.inference_mode():
        for repetition in range(repetitions + 1):
            for name, model in models.items():
                synchronize()
                started = time.perf_counter()
                model(**batch)
                synchronize()
                if repetition:  # the first round warms up
                    times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _timing_stage(study: Study, results: CompressionResults, lora: str | None, tokenizer: Any) -> dict[str, Any]:
    """``timing.json`` (recomputed when the set of models to time changed): medians and ratios."""
    settings, path = study.settings, study.out / "timing.json"
    adapters = _timed_adapters(results, lora)
    if path.is_file() and read_json(path).get("models") == ["base", *adapters]:
        return read_json(path)
    texts = study.manifest.retention["english"][: settings.timing_batch]
    (batch,) = _input_batches(study, tokenizer, texts, settings.timing_tokens, len(texts))
    models = {"base": study.base}
    for name, (adapter, operation, level) in adapters.items():
        models[name] = study.load(adapter).model
        _apply(study, models[name], operation, level)
    median = _median_forward_seconds(models, batch, settings.timing_repetitions)
    ratios = {
        f"{name} / {ref}": median[name] / median[ref]
        for ref in ("disel", "lora", "base")
        if ref in median
        for name in median
        if name != ref
    }
    timing = {
        "models": list(models),
        "median_s": median,
        "ratios": ratios,
        "tokens": int(batch["attention_mask"].sum()),
        "repetitions": settings.timing_repetitions,
        "lora_adapter": lora and portable_path(lora),
    }
    write_json_atomic(path, timing)
    return timing


# ------------------------------------------------------------------------------------------------ study


def run_compression(settings: CompressionConfig, echo=print) -> CompressionResults:
    """The whole study (module docstring); resumes from the files in ``settings.out``. ValueError naming the
    recipe key for unusable inputs (checked before any model is loaded: :func:`check_compression`)."""
    force_offline()
    config = check_compression(settings)
    manifest = DataManifest.read(Path(settings.evidence_dir) / "data" / "manifest.json")
    study = Study(settings, config, manifest, model_path_or_smollm2(config.model_path))
    base = load_model_for_eval(study.model_path, None, dtype=settings.dtype, device=config.device)
    study.base = base.model
    _prepare_statistics(study, base.tokenizer)
    plan, notes = _plan(study)
    records = _run_levels(study, plan, echo)
    evidence_final, lora = _evidence_run(settings, config.reference_arm)
    results = _aggregate(study, records, notes, evidence_final)
    timing = _timing_stage(study, results, settings.lora_adapter or lora, base.tokenizer)
    results = replace(results, timing=timing)
    results.write(study.out / RESULTS_FILE)
    write_text_atomic(study.out / TABLE_FILE, format_table(results))
    return results
