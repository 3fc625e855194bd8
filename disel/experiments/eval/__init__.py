"""Evaluation: the evaluators (defined once), generation (GSM8K, HumanEval), perplexity, gates, lm-eval, retention."""
