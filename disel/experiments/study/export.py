"""The export stage: a study's per-checkpoint records as the files ``paper_figs`` reads (recipe ``export:``).

* per trained run, ``runs/<arm>-seed<k>/retention_{perplexity,kl,gsm8k}.json`` (``disel.retention/1``: the
  base row, then one row per checkpoint; columns ``english`` and ``code``, or ``exact_match``), next to the
  run's ``train_result.json``, so ``--runs-dir <out>/runs`` draws Figures 6 and 7;
* ``tradeoff_llm_english.json`` and ``tradeoff_llm_code.json`` (``disel.tradeoff/1``, Figure 3): exact match
  against perplexity at every run's final checkpoint;
* ``gates_math.json`` (``disel.gates/1``, Figures 4, 5, 10, 11): the final checkpoint of ``export.gates_arm``'s
  first seed, on math / English / code as the gate means are measured (:mod:`.stages`).

Everything is rewritten from the records on every call (cheap; no model is loaded).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..schemas import RETENTION_SCHEMA, RetentionTable, TradeoffRow, write_tradeoff_table
from .aggregate import checkpoint_evals
from .config import RunSpec, StudyConfig
from .records import CheckpointEval
from .stages import DOMAINS

__all__ = ["export_for_figures"]

_TEXT = {"english": "general English", "code": "Python code"}


def _retention_table(
    spec: RunSpec, base: CheckpointEval, records: list[CheckpointEval], evaluator: str, columns: dict
) -> Path:
    """``retention_<evaluator>.json`` of one run; ``columns``: column name → function of a record."""
    rows = []
    for step, checkpoint, record in [(0, "base", base), *((r.step, f"checkpoint-{r.step}", r) for r in records)]:
        values = {name: value(record) for name, value in columns.items()}
        rows.append({"step": step, "checkpoint": checkpoint, **values, "mean": sum(values.values()) / len(values)})
    raw = {
        "schema": RETENTION_SCHEMA,
        "evaluator": evaluator,
        "metric_columns": list(columns),
        "rows": rows,
        "settings": {"made_by": "disel-study export", "run": spec.label},
        "output_dir": str(spec.run_dir),
    }
    path = spec.run_dir / f"retention_{evaluator}.json"
    return RetentionTable.from_dict(raw, path).write(path)


def export_for_figures(config: StudyConfig, specs: list[RunSpec], out: Path, base: CheckpointEval) -> list[Path]:
    """Write the module docstring's files; returns their paths. FileNotFoundError if the gate record is missing."""
    written, finals = [], []
    for spec in specs:
        records = checkpoint_evals(spec)
        finals.append((spec, records[-1]))
        if spec.arm_config.from_arm is not None:
            continue  # no train_result.json of its own: the figures of runs read only trained runs
        for evaluator, columns in (
            ("perplexity", {d: (lambda r, d=d: r.perplexity[d]) for d in DOMAINS}),
            ("kl", {d: (lambda r, d=d: r.kl[d]) for d in DOMAINS}),
            ("gsm8k", {"exact_match": lambda r: r.exact_match}),
        ):
            written.append(_retention_table(spec, base, records, evaluator, columns))
    for domain in DOMAINS:
        rows = [
            TradeoffRow(*_method_and_rank(spec), spec.seed, final.exact_match, final.perplexity[domain])
            for spec, final in finals
        ]
        written.append(
            write_tradeoff_table(
                out / f"tradeoff_llm_{domain}.json",
                ft_metric="exact match (held-out arithmetic)",
                retention_metric=f"perplexity ({_TEXT[domain]})",
                retention_higher_is_better=False,
                base_retention=base.perplexity[domain],
                base_ft_score=base.exact_match,
                title=f"retention on {_TEXT[domain]}",
                rows=rows,
            )
        )
    gates_spec, final = next((spec, final) for spec, final in finals if spec.arm == config.export.gates_arm)
    source = gates_spec.run_dir / "gates" / f"step-{final.step}.json"
    if not source.is_file():
        raise FileNotFoundError(f"export.gates_arm={config.export.gates_arm!r}: {source} is missing (not a DISeL arm?)")
    written.append(Path(shutil.copy2(source, out / "gates_math.json")))
    return written


def _method_and_rank(spec: RunSpec) -> tuple[str, int | None]:
    """A tradeoff row's method (a post-hoc arm: its arm's name) and rank (full fine-tuning: none)."""
    method = spec.config.method.name
    return spec.arm if spec.arm_config.from_arm else method, None if method == "full" else spec.config.method.r
