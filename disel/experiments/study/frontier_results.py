"""The frontier study's results file (issue 17): every point, the front comparisons, best accuracies, the proxy R².

One :class:`FrontierResults` holds, per run (:class:`PointRun`: method, configuration, its settings, seed), the
checkpoint steps (step 0 = the base model, first in every run), per-problem correctness of each checkpoint
and, per text domain (``english``, ``code``, ``task``: the task's own held-out prompts), the per-text sums
:class:`~.task_kl.PerTextForgetting` records, so every interval can be recomputed with texts resampled.
:func:`analyse_frontier` adds the front differences per measure, each method's best accuracy and the R² of
task-input KL against English and code KL (:mod:`.fronts`).

JSON has no NaN: non-finite numbers are written as ``null`` and read back as NaN; correctness rows are strings
of ``0``/``1``, one character per test problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, ConfigDict

from ..schemas import ResultFile
from .fronts import (
    BestAccuracy,
    FrontDifference,
    FrontierRun,
    FrontSettings,
    ProxyFit,
    compare_fronts,
    front_shares,
    r_squared,
)

__all__ = [
    "DOMAINS",
    "MEASURES",
    "FrontierResults",
    "MeasureComparison",
    "PointRun",
    "TextRecord",
    "analyse_frontier",
    "frontier_summary",
    "frontier_verdict",
    "load_frontier_results",
]

SCHEMA = "disel.frontier/1"
DOMAINS = ("english", "code", "task")
# (kind, domain) of every forgetting measure compared; the figures' panels are the first three.
MEASURES: tuple[tuple[str, str], ...] = (
    ("kl", "english"),
    ("kl", "code"),
    ("perplexity", "english"),
    ("perplexity", "code"),
    ("kl", "task"),
)
KINDS = ("kl", "perplexity")


def _nan_for_null(value: Any) -> Any:
    """null (how a NaN is written) as NaN: a value, or each value of a record."""
    if isinstance(value, dict):
        return {key: _nan_for_null(item) for key, item in value.items()}
    return math.nan if value is None else value


Number = Annotated[float, BeforeValidator(_nan_for_null)]


@dataclass(frozen=True)
class TextRecord:
    """One domain's texts in one run: ``tokens`` (T,) scored per text; ``kl_sums`` and ``nll_sums`` (K, T), one
    row per checkpoint (summed token KL from the base / NLL of the real next tokens, per text)."""

    tokens: list[float]
    kl_sums: list[list[Number]]
    nll_sums: list[list[Number]]

    def sums(self, kind: str) -> np.ndarray:
        """(K, T) ``kl_sums`` (kind ``kl``) or ``nll_sums`` (kind ``perplexity``)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return np.asarray(self.kl_sums if kind == "kl" else self.nll_sums, dtype=np.float64)

    def measure(self, kind: str) -> np.ndarray:
        """(K,) token-mean KL, or perplexity ``exp`` (token-mean NLL), over all the texts."""
        mean = self.sums(kind).sum(axis=1) / float(np.sum(self.tokens))
        return mean if kind == "kl" else np.exp(mean)


@dataclass(frozen=True)
class PointRun:
    """One (method, configuration, seed) run: ``settings`` the numbers behind ``configuration`` (e.g.
    ``{"learning_rate": 5e-4}``; a post-hoc arm adds its own, e.g. ``mitigation_lambda``); ``source`` the
    trained run a post-hoc arm transformed (else None); ``steps`` (K,) from 0; ``correct`` K strings of 0/1;
    ``texts`` domain → :class:`TextRecord`; ``timing`` name → seconds."""

    method: str
    configuration: str
    seed: int
    steps: list[int]
    correct: list[str]
    texts: dict[str, TextRecord]
    settings: dict[str, Number] = field(default_factory=dict)
    source: str | None = None
    timing: dict[str, Number] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where, k = f"run {self.method}/{self.configuration}/seed {self.seed}", len(self.steps)
        if k == 0 or self.steps[0] != 0 or self.steps != sorted(set(self.steps)):
            raise ValueError(f"{where}: steps must start at 0 (the base) and increase, got {self.steps}")
        if len(self.correct) != k or len({len(row) for row in self.correct}) != 1:
            raise ValueError(f"{where}: correct must hold {k} rows (one per step) of one length")
        if not all(set(row) <= {"0", "1"} for row in self.correct):
            raise ValueError(f"{where}: correct rows must be strings of 0/1 characters")
        for domain, record in self.texts.items():
            rows = (record.kl_sums, record.nll_sums)
            if any(len(r) != k or any(len(row) != len(record.tokens) for row in r) for r in rows):
                raise ValueError(f"{where}: texts[{domain!r}] must have {k} rows of {len(record.tokens)} per-text sums")

    @property
    def label(self) -> str:
        return f"{self.method}/{self.configuration}/seed{self.seed}"

    @property
    def exact_match(self) -> np.ndarray:
        """(K,) fraction of test problems correct at each checkpoint."""
        return np.array([row.count("1") / len(row) for row in self.correct])

    def text(self, domain: str) -> TextRecord:
        if domain not in self.texts:
            raise ValueError(f"run {self.label} has no texts of domain {domain!r} (has {sorted(self.texts)})")
        return self.texts[domain]

    def frontier_run(self, kind: str, domain: str) -> FrontierRun:
        """The run as :class:`~.fronts.FrontierRun` with the forgetting measure ``kind`` on ``domain``."""
        record = self.text(domain)
        return FrontierRun(
            self.method,
            self.configuration,
            self.seed,
            steps=np.array(self.steps),
            correct=np.array([[c == "1" for c in row] for row in self.correct]),
            text_sums=record.sums(kind),
            text_tokens=np.asarray(record.tokens, dtype=np.float64),
        )


@dataclass(frozen=True)
class MeasureComparison:
    """Front differences with ``kind`` (``kl`` / ``perplexity``) on ``domain`` as the forgetting measure."""

    kind: str
    domain: str
    differences: list[Annotated[FrontDifference, BeforeValidator(_nan_for_null)]]


class _FrontierFile(ResultFile):
    __pydantic_config__ = ConfigDict()  # lax, and NaN allowed (null reads back as NaN where a number is expected)


@dataclass(frozen=True)
class FrontierResults(_FrontierFile, schema=SCHEMA, made_by="the frontier study (disel.experiments.study)"):
    """The whole study. ``model``, ``task``; ``n_test_problems``; ``runs`` (every point); ``comparisons`` per measure;
    ``best_accuracy`` per method; ``proxy`` domain → fit of that domain's KL on task-input KL over every point;
    ``analysis`` the settings of the analysis (pairs, replicates, split seed); ``recipe`` (free-form)."""

    model: str
    task: str
    n_test_problems: int
    runs: list[PointRun]
    comparisons: list[MeasureComparison] = field(default_factory=list)
    best_accuracy: list[Annotated[BestAccuracy, BeforeValidator(_nan_for_null)]] = field(default_factory=list)
    proxy: dict[str, ProxyFit] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    path: str | None = field(default=None, compare=False)  # where it was read from (not written)

    def __post_init__(self) -> None:
        labels = [run.label for run in self.runs]
        if len(labels) != len(set(labels)):
            raise ValueError(f"two runs share a method/configuration/seed: {sorted(labels)}")
        for run in self.runs:
            if len(run.correct[0]) != self.n_test_problems:
                raise ValueError(
                    f"run {run.label} is scored on {len(run.correct[0])} problems, not {self.n_test_problems}"
                )

    @property
    def methods(self) -> list[str]:
        """Methods in run order."""
        return list(dict.fromkeys(run.method for run in self.runs))


load_frontier_results = FrontierResults.read


def _proxy_fits(runs: Sequence[PointRun]) -> dict[str, ProxyFit]:
    """Domain → R² of its KL on task-input KL over every checkpoint after step 0, plus the base once."""
    fits = {}
    for domain in ("english", "code"):
        task = [0.0] + [v for run in runs for v in run.text("task").measure("kl")[1:]]
        other = [0.0] + [v for run in runs for v in run.text(domain).measure("kl")[1:]]
        fits[domain] = r_squared(task, other)
    return fits


def analyse_frontier(
    results: FrontierResults,
    pairs: Sequence[tuple[str, str]],
    seed: int = 0,
    settings: FrontSettings | None = None,
) -> FrontierResults:
    """``results`` with comparisons for every measure of :data:`MEASURES` whose domain every run has, each
    method's best accuracy and the proxy fits (when every run has ``task`` texts). One generator seeded with
    ``seed`` draws the halves and the bootstrap of each measure in turn, so the analysis is reproducible."""
    settings = settings or FrontSettings()
    rng = np.random.default_rng(seed)
    comparisons, best = [], []
    for kind, domain in MEASURES:
        if not all(domain in run.texts for run in results.runs):
            continue
        compared = compare_fronts([run.frontier_run(kind, domain) for run in results.runs], pairs, rng, settings)
        comparisons.append(MeasureComparison(kind, domain, compared.differences))
        best = best or compared.best  # accuracy does not depend on the measure: the first one's
    has_task = all({"task", "english", "code"} <= set(run.texts) for run in results.runs)
    analysis = {"pairs": [list(p) for p in pairs], "seed": seed, "settings": asdict(settings)}
    proxy = _proxy_fits(results.runs) if has_task else {}
    return replace(results, comparisons=comparisons, best_accuracy=best, proxy=proxy, analysis=analysis)


def _interval_text(estimate: float, low: float, high: float, digits: int = 4) -> str:
    return f"{estimate:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _finding(d: FrontDifference) -> str:
    """less / more / no clear difference, by whether the interval excludes 0 (negative: ``method`` forgets less);
    undefined where the observed cross-fitted front is; flagged where many replicates are undefined (the
    interval then describes only the replicates where both fronts reach the level)."""
    if not math.isfinite(d.estimate):
        return "undefined (a chosen configuration does not reach this level on the other half)"
    finding = "forgets LESS" if d.high < 0 else "forgets MORE" if d.low > 0 else "no clear difference"
    if d.defined_fraction < 0.95:
        finding += f", defined in {d.defined_fraction:.0%} of replicates"
    return finding


def frontier_verdict(results: FrontierResults) -> list[str]:
    """Plain sentences from the numbers: per pair, the English-KL front difference at each level with its
    finding; then whether each method's best accuracy reaches the reference's (cross-fitted intervals)."""
    best = {b.method: b for b in results.best_accuracy}
    lines = []
    for comparison in results.comparisons:
        if (comparison.kind, comparison.domain) != ("kl", "english"):
            continue
        for method, reference in dict.fromkeys((d.method, d.reference) for d in comparison.differences):
            at = [d for d in comparison.differences if (d.method, d.reference) == (method, reference)]
            levels = "; ".join(
                f"at exact match {d.level:.3f}: {_finding(d)} ({_interval_text(d.estimate, d.low, d.high)})" for d in at
            )
            lines.append(f"{method} − {reference}, KL from the base on English at equal exact match: {levels}.")
    for method, reference in results.analysis.get("pairs", []):
        if method in best and reference in best:
            ours, theirs = best[method], best[reference]
            if ours.high < theirs.low:
                finding = f"{method} does NOT reach {reference}'s best accuracy"
            elif ours.low > theirs.high:
                finding = f"{method}'s best accuracy is HIGHER than {reference}'s"
            else:
                finding = f"no clear difference between {method}'s and {reference}'s best accuracy"
            lines.append(
                f"{finding}: {ours.estimate:.3f} [{ours.low:.3f}, {ours.high:.3f}] against "
                f"{theirs.estimate:.3f} [{theirs.low:.3f}, {theirs.high:.3f}] (cross-fitted, 95%)."
            )
    return lines


def frontier_summary(results: FrontierResults) -> str:
    """Markdown: best accuracy per method, every front difference per measure, the proxy fits, the verdict."""
    points = sum(len(run.steps) - 1 for run in results.runs)
    lines = [
        f"# Learning–forgetting fronts: {results.model}, {results.task}",
        "",
        f"{len(results.runs)} runs, {points} checkpoints, {results.n_test_problems} test problems. Front estimates "
        "are cross-fitted (configuration chosen on one half of the problems and texts, scored on the other); "
        "95% percentile intervals resample problems, texts and seeds; `naive` is the whole-front bootstrap.",
        "",
        "| method | best exact match (cross-fitted) [95%] | observed max | configuration | step |",
        "|---|---|---|---|---|",
    ]
    for b in results.best_accuracy:
        lines.append(
            f"| {b.method} | {b.estimate:.3f} [{b.low:.3f}, {b.high:.3f}] | {b.naive:.3f} | {b.configuration} "
            f"| {b.step} |"
        )
    lines += ["", "| measure | method − reference | exact-match level | difference [95%] | defined | naive [95%] |"]
    lines.append("|---|---|---|---|---|---|")
    for comparison in results.comparisons:
        for d in comparison.differences:
            lines.append(
                f"| {comparison.kind} {comparison.domain} | {d.method} − {d.reference} | {d.level:.3f} | "
                f"{_interval_text(d.estimate, d.low, d.high)} | {d.defined_fraction:.2f} | "
                f"{_interval_text(d.naive, d.naive_low, d.naive_high)} |"
            )
    if results.proxy:
        lines += ["", "| KL on | R² on task-input KL | Spearman ρ | points |", "|---|---|---|---|"]
        for domain, fit in results.proxy.items():
            lines.append(f"| {domain} | {fit.r_squared:.3f} | {fit.spearman:.3f} | {fit.n} |")
    return "\n".join([*lines, "", *frontier_verdict(results), "", *_second_seeds(results)]) + "\n"


def _second_seeds(results: FrontierResults) -> list[str]:
    """Which configurations make each method's English-KL front (observed; :func:`~.fronts.front_shares`), and
    the two largest: where the study's second seeds go (recipes/frontier/README.md, phase 2)."""
    if not results.runs or not all("english" in run.texts for run in results.runs):
        return []
    lines = ["Share of each method's accuracy range where a configuration gives its English-KL front (observed):"]
    for method, shares in front_shares([run.frontier_run("kl", "english") for run in results.runs]).items():
        ranked = sorted(shares.items(), key=lambda item: -item[1])
        listing = ", ".join(f"{name} {share:.0%}" for name, share in ranked)
        lines.append(f"- {method}: {listing}; second seeds: {', '.join(name for name, _ in ranked[:2])}.")
    return lines
