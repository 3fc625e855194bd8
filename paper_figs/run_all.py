"""Regenerate every paper figure from result files: ``python -m paper_figs.run_all --results DIR --out DIR``.

Each figure is drawn by its own script's ``main`` (``paper_figs/figN_*.py``); this entry only finds the
inputs and passes them on. Inputs are looked up in ``--results DIR`` under the names below, and any of
them can be given explicitly instead (the flag wins)::

    DIR/figure1.json            Figure 1           --figure1-json FILE   (python -m toy figure1)
    DIR/tradeoff_glue.json      Figure 2           --glue-tradeoff FILE  (disel.tradeoff/1)
    DIR/tradeoff_llm*.json      Figure 3           --tradeoff FILE ...   (disel.tradeoff/1, one panel each)
    DIR/gates_math.json         Figures 4, 5, 10, 11   --gates FILE      (disel.gates/1, math-tuned model)
    DIR/gates_code.json         Figures 12, 13, 14     --gates-code FILE (disel.gates/1, code-tuned model)
    DIR/runs_math/<run>/        Figures 6, 7       --runs-dir DIR        (train_result.json + retention_*.json)
    DIR/runs_code/<run>/        Figures 8, 9       --runs-dir-code DIR

The SmolLM2 studies' own figures are drawn when their file is given (``--only evidence`` draws those alone)::

    --evidence results.json         the evidence figures (paper_figs.evidence_all; disel-study results)
    --compression compression.json  the compression figure (paper_figs.evidence_compression)
    --continual results.json        the continual study's figures (paper_figs.continual_all)
    --frontier frontier.json        the learning-forgetting frontier figures (paper_figs.frontier_all)

If an input is missing the command stops before drawing anything and lists every missing input, unless
``--allow-missing``: then the figures whose inputs are missing are skipped, each with a line saying
which input it lacks. A malformed file always fails (exit status 2), never skips.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._cli import DEFAULT_OUT

__all__ = ["FIGURES", "FigureJob", "build_jobs", "main"]

# The SmolLM2 studies' figure sets → their script (drawn from the flag of the same name).
STUDY_FIGURES: dict[str, str] = {
    "evidence": "evidence_all",
    "compression": "evidence_compression",
    "continual": "continual_all",
    "frontier": "frontier_all",
}
# Figure number → its script (module in paper_figs).
FIGURES: dict[int, str] = {
    1: "fig1_toy",
    2: "fig2_glue_tradeoff",
    3: "fig3_llm_tradeoff",
    4: "fig4_gates_by_domain",
    5: "fig5_gates_by_module",
    6: "fig6_retention_over_time",
    7: "fig7_ft_accuracy_over_time",
    8: "fig8_code_retention_over_time",
    9: "fig9_code_ft_accuracy_over_time",
    10: "fig10_gates_by_kind",
    11: "fig11_gate_means_by_projection",
    12: "fig12_code_gates_by_domain",
    13: "fig13_code_gates_by_kind",
    14: "fig14_code_gate_means_by_projection",
}


@dataclass(frozen=True)
class FigureJob:
    """One figure to draw: its script, the argv for the script's ``main``, and the inputs that must exist."""

    figure: int | str  # a paper figure's number, or the name of a study's figure set
    module: str
    argv: list[str]
    inputs: list[Path]

    def missing(self) -> list[Path]:
        return [path for path in self.inputs if not path.exists()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paper_figs.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results", type=Path, default=None, help="folder holding the result files under their default names"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: paper_figs/out)")
    parser.add_argument(
        "--allow-missing", action="store_true", help="skip (with a message) figures whose inputs are missing"
    )
    parser.add_argument(
        "--only",
        type=lambda text: int(text) if text.isdigit() else text,
        nargs="+",
        choices=[*sorted(FIGURES), *STUDY_FIGURES],
        default=None,
        help="draw only these figures (numbers, or evidence / compression / continual / frontier)",
    )
    inputs = parser.add_argument_group("inputs (default: the names under --results)")
    inputs.add_argument("--figure1-json", type=Path, help="Figure 1 numbers (python -m toy figure1)")
    inputs.add_argument(
        "--glue-tradeoff", type=Path, help="Figure 2: disel.tradeoff/1 table, GLUE accuracy vs MLM perplexity"
    )
    inputs.add_argument("--tradeoff", type=Path, nargs="+", help="Figure 3: disel.tradeoff/1 tables, one panel each")
    inputs.add_argument("--tradeoff-log-x", action="store_true", help="Figure 3 on a log retention axis (a perplexity)")
    inputs.add_argument("--gates", type=Path, help="Figures 4, 5, 10, 11: disel.gates/1 of the math-tuned model")
    inputs.add_argument("--gates-code", type=Path, help="Figures 12–14: disel.gates/1 of the code-tuned model")
    inputs.add_argument("--runs-dir", type=Path, help="Figures 6, 7: folder of the math-tuned runs")
    inputs.add_argument("--runs-dir-code", type=Path, help="Figures 8, 9: folder of the code-tuned runs")
    tables = parser.add_argument_group("which per-checkpoint tables and columns (Figures 6–9)")
    tables.add_argument(
        "--retention-evaluator", default="lm-eval", help="retention table retention_<NAME>.json (default lm-eval)"
    )
    tables.add_argument("--retention-metric", default="mean", help="its column (default mean)")
    tables.add_argument("--ft-evaluator", default="gsm8k", help="fine-tuning table of the math runs (default gsm8k)")
    tables.add_argument("--ft-metric", default="mean")
    tables.add_argument(
        "--code-ft-evaluator", default="humaneval", help="fine-tuning table of the code runs (default humaneval)"
    )
    tables.add_argument("--code-ft-metric", default="mean")
    gates = parser.add_argument_group("gate figures")
    gates.add_argument(
        "--ft-domain", default="math", help="fine-tuning domain of --gates (Figures 5, 10, 11; default math)"
    )
    gates.add_argument(
        "--code-ft-domain", default="code", help="fine-tuning domain of --gates-code (Figures 13, 14; default code)"
    )
    gates.add_argument("--modules", nargs="+", default=["v_proj", "up_proj", "down_proj"], help="Figure 5's modules")
    studies = parser.add_argument_group("the SmolLM2 studies' figures (drawn only when given)")
    studies.add_argument("--evidence", type=Path, help="results.json of a disel-study run: the evidence figures")
    studies.add_argument("--compression", type=Path, help="compression.json of the compression study: its figure")
    studies.add_argument("--continual", type=Path, help="results.json of the continual study: its figures")
    studies.add_argument("--frontier", type=Path, help="frontier.json of the frontier study: its figures")
    return parser


def _order(figure: int | str) -> tuple[bool, str]:
    """Paper figures by number, then the studies' figure sets by name."""
    return isinstance(figure, str), f"{figure:>3}" if isinstance(figure, int) else figure


def _default(explicit: Path | None, results: Path | None, name: str) -> Path | None:
    if explicit is not None:
        return explicit
    return results / name if results is not None else None


def build_jobs(args: argparse.Namespace) -> tuple[list[FigureJob], dict[int, str]]:
    """The figures to draw, and for each figure that cannot even be located a reason (no flag and no
    ``--results``, or no file matching a pattern)."""
    out = str(args.out)
    results: Path | None = args.results
    jobs: list[FigureJob] = []
    unlocated: dict[int, str] = {}

    def add(figure: int, argv: list[str], inputs: list[Path | None], what: str) -> None:
        if any(path is None for path in inputs):
            unlocated[figure] = f"no {what} given (pass --results DIR or the flag for it)"
            return
        jobs.append(FigureJob(figure, FIGURES[figure], [*argv, "--out", out], [p for p in inputs if p is not None]))

    figure1 = _default(args.figure1_json, results, "figure1.json")
    add(1, ["--from-json", str(figure1)], [figure1], "Figure 1 numbers (--figure1-json)")

    glue = _default(args.glue_tradeoff, results, "tradeoff_glue.json")
    add(2, ["--tradeoff", str(glue)], [glue], "GLUE tradeoff table (--glue-tradeoff)")

    tradeoffs = list(args.tradeoff or [])
    if not tradeoffs and results is not None:
        tradeoffs = sorted(results.glob("tradeoff_llm*.json"))
        if not tradeoffs:
            tradeoffs = [results / "tradeoff_llm*.json"]  # reported as missing under its pattern
    add(3, ["--tradeoff", *map(str, tradeoffs), *(["--log-x"] if args.tradeoff_log_x else [])], tradeoffs or [None],
        "LLM tradeoff table (--tradeoff)")  # fmt: skip

    gates = _default(args.gates, results, "gates_math.json")
    gates_code = _default(args.gates_code, results, "gates_code.json")
    for figure, path, extra, what in (
        (4, gates, [], "math gates file (--gates)"),
        (5, gates, ["--domain", args.ft_domain, "--modules", *args.modules], "math gates file (--gates)"),
        (10, gates, ["--domain", args.ft_domain], "math gates file (--gates)"),
        (11, gates, ["--domain", args.ft_domain], "math gates file (--gates)"),
        (12, gates_code, [], "code gates file (--gates-code)"),
        (13, gates_code, ["--domain", args.code_ft_domain], "code gates file (--gates-code)"),
        (14, gates_code, ["--domain", args.code_ft_domain], "code gates file (--gates-code)"),
    ):
        add(figure, ["--gates", str(path), *extra], [path], what)

    runs = _default(args.runs_dir, results, "runs_math")
    runs_code = _default(args.runs_dir_code, results, "runs_code")
    for figure, folder, evaluator, metric, what in (
        (6, runs, args.retention_evaluator, args.retention_metric, "math runs folder (--runs-dir)"),
        (7, runs, args.ft_evaluator, args.ft_metric, "math runs folder (--runs-dir)"),
        (8, runs_code, args.retention_evaluator, args.retention_metric, "code runs folder (--runs-dir-code)"),
        (9, runs_code, args.code_ft_evaluator, args.code_ft_metric, "code runs folder (--runs-dir-code)"),
    ):
        add(figure, ["--runs-dir", str(folder), "--evaluator", evaluator, "--metric", metric], [folder], what)

    if args.only is not None:
        jobs = [job for job in jobs if job.figure in args.only]
        unlocated = {figure: reason for figure, reason in unlocated.items() if figure in args.only}
    for name, module in STUDY_FIGURES.items():
        path = getattr(args, name)
        if path is not None:
            jobs.append(FigureJob(name, module, ["--results", str(path), "--out", out], [path]))
    jobs.sort(key=lambda job: _order(job.figure))
    return jobs, unlocated


def main(argv: Sequence[str] | None = None) -> int:
    """Draw every figure whose inputs exist; see the module docstring for the layout and exit rules.

    Exit status: 0 when every selected figure was drawn (or skipped under ``--allow-missing``), 2 when
    an input is missing (without ``--allow-missing``) or a figure script failed on its input.
    """
    args = _parser().parse_args(argv)
    jobs, unlocated = build_jobs(args)
    missing = {job.figure: f"missing {', '.join(map(str, job.missing()))}" for job in jobs if job.missing()}
    absent = {**unlocated, **missing}
    if absent and not args.allow_missing:
        print("error: inputs missing (pass --allow-missing to skip these figures):", file=sys.stderr)
        for figure in sorted(absent, key=_order):
            print(f"  figure {figure}: {absent[figure]}", file=sys.stderr)
        return 2
    status: dict[int | str, str] = {}
    by_figure = {job.figure: job for job in jobs}
    for figure in sorted({*by_figure, *absent}, key=_order):
        if figure in absent:
            print(f"figure {figure}: skipped, {absent[figure]}")
            status[figure] = "skipped"
            continue
        job = by_figure[figure]
        print(f"figure {figure}: python -m paper_figs.{job.module} {' '.join(job.argv)}")
        module = importlib.import_module(f"{__package__}.{job.module}")
        code = module.main(job.argv) or 0
        status[figure] = "drawn" if code == 0 else f"FAILED (exit {code})"
    print("summary: " + "; ".join(f"{figure}: {status[figure]}" for figure in sorted(status, key=_order)))
    return 2 if any(value.startswith("FAILED") for value in status.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
