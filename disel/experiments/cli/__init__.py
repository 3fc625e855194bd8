"""The command lines: ``disel-train`` (:mod:`.train`), ``disel-eval`` (:mod:`.eval`), ``disel-compare``
(:mod:`.compare`), ``disel-prune`` and ``disel-merge-static`` (:mod:`.compress`)."""
