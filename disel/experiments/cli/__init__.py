"""The command lines: ``disel-train`` (:mod:`.train`), ``disel-eval`` (:mod:`.eval`), ``disel-compare`` (:mod:`.compare`)."""
