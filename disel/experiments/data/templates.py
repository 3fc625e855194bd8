"""Prompt templates: the text around an instruction, and where a generated response stops.

The paper templates are quoted from Appendix III.1, one quoted line per line (the extracted paper text has no
blank lines, so none are added); the Magicoder system line breaks after "delivers" as quoted. Training and every
evaluator build prompts with :func:`format_prompt` and stop at the template's ``stop_strings``, so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

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
