"""Prompt templates: the text around an instruction, and where a generated response stops.

The paper templates are quoted from Appendix III.1, one quoted line per line (the extracted paper text has no
blank lines, so none are added); the Magicoder system line breaks after "delivers" as quoted. Training and every
evaluator build prompts with :func:`format_prompt` and stop at the template's ``stop_strings``, so they agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IGNORE_INDEX = -100
"""Label of tokens without loss (the prompt, padding): ``torch.nn.CrossEntropyLoss``'s ignore_index."""


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with one ``{instruction}`` slot; the response is appended right after it."""

    name: str
    prompt: str
    stop_strings: tuple[str, ...]
    """Where generated responses end: a model that keeps going starts the next instruction marker."""

    def format_prompt(self, instruction: str) -> str:
        """The text before the response. Braces in ``instruction`` (code!) are kept as they are."""
        return self.prompt.replace("{instruction}", instruction)


ALPACA = PromptTemplate("alpaca", "### Instruction:\n{instruction}\n### Response:\n", ("### Instruction", "\n\n\n"))
"""Math runs (Llama-2-7B on MetaMathQA), as quoted in Appendix III.1."""

MAGICODER = PromptTemplate(
    "magicoder",
    "You are an exceptionally intelligent coding assistant that consistently delivers\n"
    "accurate and reliable responses to user instructions.\n"
    "@@ Instruction\n"
    "{instruction}\n"
    "@@ Response\n",
    ("@@ Instruction",),
)
"""Code runs (Mistral-7B on Magicoder-Evol-Instruct-110K), as quoted in Appendix III.1."""

NONE = PromptTemplate("none", "{instruction}", ("\n\n\n",))
"""Raw text: the instruction is the whole prompt."""

TEMPLATES: dict[str, PromptTemplate] = {template.name: template for template in (ALPACA, MAGICODER, NONE)}

DEFAULT_TEMPLATE = ALPACA.name
"""The template of a recipe that names none (``data.template``), and of an evaluation that knows no training run."""


def get_template(name: str) -> PromptTemplate:
    """The template called ``name``; ValueError listing the names otherwise."""
    if name not in TEMPLATES:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got template={name!r}")
    return TEMPLATES[name]


def format_prompt(template: str, instruction: str) -> str:
    """The prompt for ``instruction`` in the named template (``alpaca``, ``magicoder``; ``none``: unchanged)."""
    return get_template(template).format_prompt(instruction)


def training_template(path: str | os.PathLike | None) -> str | None:
    """The ``data.template`` a training run was trained with, read from the ``run_config.yaml`` it saved: ``path``
    is the run's output folder or one of its ``checkpoint-*`` folders. None when ``path`` is None or neither
    folder holds the file (a model not trained here): the caller then names the template."""
    from ..config import ConfigError, DataConfig, read_mapping
    from ..train.checkpoints import RUN_CONFIG_FILE

    if path is None:
        return None
    for folder in (Path(path), Path(path).parent):
        saved = folder / RUN_CONFIG_FILE
        if saved.is_file():
            try:
                return DataConfig.model_validate(read_mapping(saved).get("data", {})).template
            except ValueError as error:  # pydantic's ValidationError is a ValueError
                raise ConfigError(f"{saved}: cannot read data.template: {error}") from None
    return None
