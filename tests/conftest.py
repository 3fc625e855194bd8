"""Shared test settings: deterministic hypothesis profiles, a single torch thread pool, and the one saved tiny
causal LM (:func:`tiny_llama_dir`)."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

import disel  # noqa: F401 (before any test imports peft: disel filters bitsandbytes' "kernels" notice, issue 19)

# "ci": deterministic (derandomized) and bounded, the default; "long": many more examples for a long run.
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One thread: the suite runs tiny models (thread start-up costs more than it saves) and may share the
# machine with subprocess tests (torchrun, fresh-process reloads); oversubscribed threads are far slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """The one saved tiny causal LM of the suite (:func:`tiny_models.make_tiny_causal_lm`: a 2-layer Llama and its
    tokenizer), built once per session. Tests read it and never write into it (copy it to change it)."""
    from tiny_models import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"))
