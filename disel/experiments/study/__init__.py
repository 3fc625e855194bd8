"""The one SmolLM2 study runner (``disel-study``, :mod:`disel.experiments.cli.study`): every SmolLM2 study is a
recipe of it (the methods × ranks comparison, the issue-9 evidence, the issue-11 compression).

Building blocks, independent of how a study is orchestrated:

* :mod:`.stats` — matched-accuracy comparison of (exact match, retention) paths, bootstrap intervals
  (NumPy only);
* :mod:`.kl` — mean token-level KL divergence of a tuned causal LM from its base model (on the windows of the
  one perplexity definition, :func:`disel.experiments.eval.perplexity.causal_lm_windows`);
* :mod:`.diagnostics` — the toy's failure signature (gate rows anti-aligned with their A rows) and gate
  means per text domain;
* :mod:`.throughput` — this CPU's matmul throughput and the FLOP count of a training step;
* :mod:`.transforms` — the post-hoc transforms a study arm can apply to another arm's checkpoints, by name;
* :mod:`.records` and :mod:`.results` — the typed intermediate files and the results file.

The runner: the recipe (:mod:`.config`), the resumable stages (:mod:`.stages`, :func:`.run.run_study`), the
throughput stage (:mod:`.throughput_stage`), the results, table and verdict (:mod:`.aggregate`), the files
``paper_figs`` draws (:mod:`.export`), and the compression study of a finished evidence run
(:mod:`.compression`). Figures are drawn by ``paper_figs`` from these files, never here.

Submodules are imported explicitly (``from disel.experiments.study.stats import ...``), so that the
NumPy-only statistics do not pull in torch.
"""
