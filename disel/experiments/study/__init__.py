"""Evidence for issue 9: does DISeL forget less than LoRA at equal task accuracy?

Building blocks of the SmolLM2 experiment, independent of how the experiment is orchestrated:

* :mod:`.stats` — matched-accuracy comparison of (exact match, retention) paths, bootstrap intervals
  (NumPy only);
* :mod:`.kl` — mean token-level KL divergence of a tuned causal LM from its base model;
* :mod:`.diagnostics` — the toy's failure signature (gate rows anti-aligned with their A rows) and gate
  means per text domain;
* :mod:`.throughput` — this CPU's matmul throughput and the FLOP count of a training step;
* :mod:`.results` — the typed results file of the experiment.

and the experiment itself, ``disel-evidence`` (:mod:`.cli`, :func:`.run.run_evidence`): the recipe
(:mod:`.config`), the resumable stages (:mod:`.stages`), the throughput stage (:mod:`.throughput_stage`),
the results, table and verdict (:mod:`.aggregate`) and the figures (:mod:`.figures`, drawn by
``paper_figs/evidence_*.py``). Issue 11's LLM evidence, pruning and partly merging a final DISeL adapter of
that experiment, is :mod:`.compression` (``python -m disel.experiments.study.compression``).

Submodules are imported explicitly (``from disel.experiments.study.stats import ...``), so that the
NumPy-only statistics do not pull in torch.
"""
