"""``results.json`` and ``summary.md`` of a continual study (:mod:`.continual_run`), from its per-phase records.

``results.json`` (schema ``disel.study.continual/1``)::

    {"schema", "name", "tasks", "orders": {order: [task, ...]}, "base": {task: accuracy},
     "learning_rates": {method: {"chosen", "held_out": {rate: accuracy}}},
     "arms": {arm: {"phases", "method", "learning_rate",
                    "runs": [{"seed", "order", "tasks", "R": (T, T) accuracies (null: not scored),
                              "train_loss": [each phase's mean training loss]}],
                    "AA" | "BWT" | "forgetting": {"value", "low", "high", "per_order"} (null where undefined),
                    "kl": {domain: {"mean", "per_run"}}, "gates": {"branches", "tasks", "mean"} | null}},
     "cost": {"selection_s", "train_s", "score_s", "final_s", "worker_hours"}}

AA, BWT and forgetting come from :func:`~.continual_metrics.continual_summary` (95% bootstrap over test
examples and orders). A multitask arm has one phase: only its last row, so AA alone is defined (BWT and
forgetting are null). The gate table is averaged over runs by (task the branch learned, task of the inputs),
so rows and columns follow ``tasks`` whatever the order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunSpec, StudyConfig, fixes_learning_rate
from .continual_metrics import MEASURES, OrderRun, continual_summary

__all__ = [
    "SCHEMA",
    "aggregate_continual",
    "build_continual_results",
    "chosen_learning_rates",
    "format_continual_table",
    "read_continual_results",
]

SCHEMA = "disel.study.continual/1"


def _finite(value: Any) -> Any:
    """NaN → None, recursively (strict JSON)."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _order_run(phases, order: list[str]) -> OrderRun:
    """The (T, n) correctness per task of one run, NaN rows where a task was not scored; a one-phase (multitask)
    run fills only the last row."""
    t = len(order)
    correct = {}
    for task in order:
        n = next(len(p.correct[task]) for p in phases if task in p.correct)
        values = np.full((t, n), np.nan)
        for p in phases:
            if task in p.correct:
                values[t - len(phases) + p.phase] = p.correct[task]
        correct[task] = values
    return OrderRun(tuple(order), correct)


def _arm_results(config: StudyConfig, specs: list[RunSpec], rate: float, out: Path) -> dict[str, Any] | None:
    """One arm's entry from its finished runs (None when none has finished)."""
    from .records import FinalRecord, PhaseScores

    runs, finals, gates = [], [], []
    spec = specs[0]
    multitask = spec.arm_config.phases == "multitask"
    orders = config.continual.orders
    for s in specs:
        for name, order in orders.items():
            folder = s.run_dir / ("multitask" if multitask else name)
            if not (folder / "final.json").is_file():
                continue
            phases = [PhaseScores.read(p) for p in sorted(folder.glob("phase-*/scores.json"))]
            runs.append((s.seed, folder.name, _order_run(phases, order), [p.train_loss for p in phases]))
            finals.append(FinalRecord.read(folder / "final.json"))
            if finals[-1].gates is not None:
                gates.append(finals[-1].gates)
            if multitask:
                break
    if not runs:
        return None
    summary = continual_summary([r for _, _, r, _ in runs], replicates=config.evaluation.bootstrap_replicates)
    entry = {
        "phases": spec.arm_config.phases,
        "method": spec.config.method.name,
        "learning_rate": rate,
        "runs": [
            {"seed": seed, "order": name, "tasks": list(r.tasks), "R": r.matrix().tolist(), "train_loss": losses}
            for seed, name, r, losses in runs
        ],
        **{measure: summary[measure] for measure in MEASURES},
        "kl": {
            domain: {"mean": float(np.mean([f.kl[domain] for f in finals])), "per_run": [f.kl[domain] for f in finals]}
            for domain in finals[0].kl
        },
        "gates": _mean_gate_table(gates, config.continual.tasks) if gates else None,
    }
    return entry


def _mean_gate_table(tables: list[dict], tasks: list[str]) -> dict[str, Any]:
    """The runs' gate tables averaged, rows and columns in ``tasks`` order (one row "all" for a one-branch model)."""
    branches = list(tasks) if tables[0]["branches"][0] != "all" else ["all"]
    mean = np.zeros((len(branches), len(tasks)))
    for table in tables:
        for k, branch in enumerate(table["branches"]):
            for j, task in enumerate(table["tasks"]):
                mean[branches.index(branch), tasks.index(task)] += table["mean"][k][j] / len(tables)
    return {"branches": branches, "tasks": list(tasks), "mean": mean.tolist(), "runs": len(tables)}


def build_continual_results(
    config: StudyConfig, specs: dict[str, RunSpec], base, rates: dict[str, float], out: Path
) -> dict[str, Any]:
    """The whole ``results.json`` (module docstring) from the records under ``out``."""
    from .records import SelectionScores

    settings = config.continual
    held_out: dict[str, dict[str, float]] = {}
    seconds = {"selection": 0.0}
    for path in sorted((out / "selection").glob("*.json")):
        record = SelectionScores.read(path)
        held_out.setdefault(record.method, {})[f"{record.learning_rate:g}"] = record.accuracy
        seconds["selection"] += record.train_s + record.score_s
    arms = {}
    for arm in config.arms:
        arm_specs = [s for s in specs.values() if s.arm == arm]
        spec = arm_specs[0]
        rate = (
            spec.config.training.learning_rate
            if fixes_learning_rate(spec.arm_config)
            else rates[spec.config.method.name]
        )
        entry = _arm_results(config, arm_specs, rate, out)
        if entry is not None:
            arms[arm] = entry
    return _finite(
        {
            "schema": SCHEMA,
            "name": config.name,
            "tasks": list(settings.tasks),
            "orders": {name: list(order) for name, order in settings.orders.items()},
            "base": {task: float(np.mean(c)) for task, c in base.correct.items()},
            "learning_rates": {m: {"chosen": rate, "held_out": held_out.get(m, {})} for m, rate in rates.items()},
            "arms": arms,
            "cost": _cost(seconds, out),
        }
    )


def _cost(seconds: dict[str, float], out: Path) -> dict[str, float]:
    """Measured seconds of the finished stages (wall clock of each stage in its process; the base model's scoring
    is not timed), and their sum in worker-hours: the study's measured cost."""
    from .records import FinalRecord, PhaseScores

    seconds.update(train=0.0, score=0.0, final=0.0)
    for path in (out / "runs").glob("*/*/phase-*/scores.json"):
        record = PhaseScores.read(path)
        seconds["train"] += record.train_s
        seconds["score"] += record.score_s
    for path in (out / "runs").glob("*/*/final.json"):
        seconds["final"] += FinalRecord.read(path).seconds
    return {**{f"{k}_s": v for k, v in seconds.items()}, "worker_hours": sum(seconds.values()) / 3600}


def read_continual_results(path: str | Path) -> dict[str, Any]:
    """A ``results.json`` of a continual study; a ResultFileError naming the file when it is missing or not one."""
    from ..schemas import MalformedResultFileError, MissingResultFileError

    path = Path(path)
    if not path.is_file():
        raise MissingResultFileError(path, "does not exist; expected a continual study's results.json (disel-study)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MalformedResultFileError(path, f"not valid JSON ({error})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        found = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
        raise MalformedResultFileError(path, f"expected schema {SCHEMA!r} (disel-study, continual), found {found!r}")
    return raw


def _interval(measure: dict[str, Any]) -> str:
    if measure["value"] is None:
        return "–"
    if measure["low"] is None:
        return f"{measure['value']:.3f}"
    return f"{measure['value']:.3f} [{measure['low']:.3f}, {measure['high']:.3f}]"


def format_continual_table(results: dict[str, Any]) -> tuple[str, str]:
    """The markdown table (one row per arm) and a one-line statement of which sequential arm has the highest AA."""
    lines = [
        "| arm | phases | lr | runs | AA [95%] | BWT [95%] | forgetting [95%] | KL English | KL code |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, entry in results["arms"].items():
        kl = entry["kl"]
        lines.append(
            f"| {arm} | {entry['phases']} | {entry['learning_rate']:g} | {len(entry['runs'])} | "
            f"{_interval(entry['AA'])} | {_interval(entry['BWT'])} | {_interval(entry['forgetting'])} | "
            f"{kl['english']['mean']:.4f} | {kl['code']['mean']:.4f} |"
        )
    sequential = {a: e for a, e in results["arms"].items() if e["phases"] != "multitask"}
    if not sequential:
        return "\n".join(lines), "No sequential arm has finished yet."
    best = max(sequential, key=lambda a: sequential[a]["AA"]["value"])
    entry = sequential[best]
    sentence = (
        f"Highest average accuracy after the last task among the sequential arms: {best} "
        f"(AA {_interval(entry['AA'])}, over {len(entry['runs'])} runs)."
    )
    return "\n".join(lines), sentence


def chosen_learning_rates(config: StudyConfig, specs: dict[str, RunSpec], out: Path) -> dict[str, float]:
    """Each method's rate as the runner chose it: by the rule from the ``selection/`` records when every candidate
    has one, else the recipe's rate (a method whose selection has not finished has no finished run either)."""
    from .continual_metrics import choose_learning_rate
    from .records import SelectionScores

    selection = config.continual.learning_rates
    rates = {}
    for spec in specs.values():
        if fixes_learning_rate(spec.arm_config):
            continue
        method = spec.config.method.name
        rates[method] = spec.config.training.learning_rate
        grid = [] if selection is None else selection.grids.get(method, [])
        paths = {rate: out / "selection" / f"{method}-lr{rate:g}.json" for rate in grid}
        if grid and all(path.is_file() for path in paths.values()):
            rates[method] = choose_learning_rate({r: SelectionScores.read(p).accuracy for r, p in paths.items()})
    return rates


def aggregate_continual(config: StudyConfig, output_dir: str | Path) -> dict[str, Any]:
    """``results.json`` and ``summary.md`` from the records under ``output_dir`` (every finished run; no model is
    loaded, so it can refresh them while the study runs on). Returns ``{"results", "table", "verdict"}``."""
    from disel.io import write_json_atomic, write_text_atomic

    from .records import BaseScores

    out = Path(output_dir)
    specs = {s.label: s for s in config.run_specs("<model_path>", out / "data" / "rows-in-memory.jsonl", out)}
    results = build_continual_results(
        config, specs, BaseScores.read(out / "base.json"), chosen_learning_rates(config, specs, out), out
    )
    write_json_atomic(out / "results.json", results)
    table, verdict = format_continual_table(results)
    write_text_atomic(out / "summary.md", f"{table}\n{verdict}\n")
    return {"results": results, "table": table, "verdict": verdict}
