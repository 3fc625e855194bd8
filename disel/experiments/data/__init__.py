"""Training and evaluation data: prompt templates, datasets, the padding collator, offline texts, arithmetic."""
