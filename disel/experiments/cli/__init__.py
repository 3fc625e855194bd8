"""Every command line: ``disel-train`` (:mod:`.train`), ``disel-eval`` (:mod:`.eval`), ``disel-study`` (:mod:`.study`,
every SmolLM2 study from its recipe), ``disel-prune`` and ``disel-merge-static`` (:mod:`.compress`), and
``python -m disel.experiments.cli.tradeoff`` (a tradeoff table from runs, :mod:`.tradeoff`)."""
