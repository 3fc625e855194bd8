"""Figure 6: retention at every checkpoint, per rank, DISeL (left) vs LoRA (right); math-tuned model.

Reads, in every run directory (``--runs-dir`` holding one sub-folder per run, or ``--run`` listing them),
``train_result.json`` (``disel.train_result/2``: the run's method, rank and seed) and
``retention_<evaluator>.json`` (``disel.retention/1``, written by
:func:`disel.experiments.eval.retention.evaluate_checkpoints`: one row per saved checkpoint plus the base
model). One panel per method (DISeL left, LoRA right), one line per rank (the mean over seeds at each
step, ± one standard deviation shaded when there are several); the dashed line is the base model's row.
The paper: Llama-2-7B on MetaMathQA, retention = mean accuracy over the 14-benchmark lm-eval suite
(evaluator ``lm-eval``, column ``mean``).

    python -m paper_figs.fig6_retention_over_time --runs-dir results/runs_math --evaluator lm-eval
"""

from __future__ import annotations

from collections.abc import Sequence

from ._cli import add_runs_arguments, figure_parser, read_runs_from_args, render
from .plots import checkpoint_figure

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = figure_parser(__doc__, "python -m paper_figs.fig6_retention_over_time")
    add_runs_arguments(parser, evaluator="lm-eval", what="retention")
    args = parser.parse_args(argv)
    ylabel = args.ylabel or f"retention ({args.evaluator} {args.metric})"
    return render(
        lambda: checkpoint_figure(read_runs_from_args(args), metric=args.metric, methods=args.methods, ylabel=ylabel),
        args.out / "figure6",
    )


if __name__ == "__main__":
    raise SystemExit(main())
