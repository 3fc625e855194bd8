"""Gate analysis over input domains (paper Section 5, Figures 4, 5, 10–14).

A trained DISeL model reads held-out inputs of several domains (math, general text, code) while the gate recorder
(:mod:`disel.recording`) summarises the post-sigmoid gates ``σ(W_g x + b_g)`` of every adapted layer as streaming
histograms: response tokens only for instruction/response domains (the paper's protocol), every token for raw text.
Per domain the summaries are also grouped by depth third × kind and depth third × module (Figures 10, 11). The
result, one ``disel.gates/1`` file for all domains, is :class:`~disel.experiments.schemas.GatesFile`; each summary
is :meth:`disel.recording.GateStats.to_dict` (``count`` = tokens × rank components, ``mean``, ``histogram`` ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from disel.io import write_json_atomic
from disel.recording import DEPTH_GROUPS, GateStats, depth_group, module_kind, record_gates

from ..data.arithmetic import generate_problems
from ..data.collator import right_pad
from ..data.datasets import tokenize_instruction
from ..data.offline_text import general_english_texts, python_function_tasks
from ..data.templates import ALPACA, DEFAULT_TEMPLATE, IGNORE_INDEX, MAGICODER, get_template
from ..schemas import GATES_SCHEMA, GatesFile
from .progress import progress_bar


@dataclass
class GateDomain:
    """Inputs of one domain.

    Either ``texts`` (raw text; every token is recorded) or ``examples`` (dicts with ``instruction``
    and ``output``, formatted by ``format_prompt(instruction)`` followed by the output and EOS, as in
    training; only the response tokens, those training puts a loss on, are recorded).
    """

    name: str
    texts: Sequence[str] | None = None
    examples: Sequence[dict[str, str]] | None = None
    format_prompt: Callable[[str], str] | None = None

    def __post_init__(self) -> None:
        if (self.texts is None) == (self.examples is None):
            raise ValueError(
                f"GateDomain {self.name!r} needs exactly one of texts (raw text) or examples (instruction/output)"
            )
        if self.examples is not None:
            if self.format_prompt is None:
                raise ValueError(f"GateDomain {self.name!r} has examples but no format_prompt (the training template)")
            for example in self.examples:
                if "instruction" not in example or "output" not in example:
                    raise KeyError(
                        f"GateDomain {self.name!r}: every example needs 'instruction' and 'output', "
                        f"got {sorted(example)}"
                    )
        if len(self.texts if self.texts is not None else self.examples) == 0:
            raise ValueError(f"GateDomain {self.name!r} is empty")


def _encode_domain(domain: GateDomain, tokenizer: Any, max_length: int) -> list[tuple[list[int], list[bool]]]:
    """(token ids, record-this-token flags) per sequence. Instruction examples are tokenized exactly as
    for training (:func:`disel.experiments.data.datasets.tokenize_instruction`: prompt + response + EOS), and
    the recorded tokens are the ones training puts a loss on (the response and its EOS)."""
    if domain.texts is not None:
        texts = [tokenizer(text, truncation=True, max_length=max_length)["input_ids"] for text in domain.texts]
        return [(ids, [True] * len(ids)) for ids in texts]
    prompts = [domain.format_prompt(example["instruction"]) for example in domain.examples]
    tokenized = [tokenize_instruction(tokenizer, p, e["output"], max_length) for p, e in zip(prompts, domain.examples)]
    # None: no response token survived truncation
    return [(t["input_ids"], [label != IGNORE_INDEX for label in t["labels"]]) for t in tokenized if t is not None]


def _cross_groups(
    stats: dict[tuple[int | None, str], GateStats], num_layers: int | None, second: Callable[[str], str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Merged summaries keyed by depth third, then by ``second(module name)``."""
    if num_layers is None:
        return {}
    groups: dict[str, dict[str, list[GateStats]]] = {}
    for (layer, module), summary in stats.items():
        if layer is not None:  # a module outside the numbered layers has no depth
            groups.setdefault(depth_group(layer, num_layers), {}).setdefault(second(module), []).append(summary)
    return {
        depth: {name: GateStats.merge(members, module=name).to_dict() for name, members in groups[depth].items()}
        for depth in DEPTH_GROUPS
        if depth in groups
    }


@torch.no_grad()
def analyze_gates(
    model: nn.Module,
    tokenizer: Any,
    domains: Sequence[GateDomain],
    *,
    bins: int = 20,
    batch_size: int = 8,
    max_length: int = 512,
    description: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record gate statistics of ``model`` on each domain; returns the ``disel.gates/1`` dict (module doc).

    Sequences are right-padded into batches; padding is never recorded (the token mask is the
    response/all-token mask AND the attention mask).
    """
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ValueError(f"domain names must be distinct, got {names}")
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result: dict[str, Any] = {"schema": GATES_SCHEMA, "model": dict(description or {}), "bins": bins, "domains": {}}
    for domain in domains:
        encoded = [(ids, mask) for ids, mask in _encode_domain(domain, tokenizer, max_length) if any(mask)]
        if not encoded:
            raise ValueError(
                f"domain {domain.name!r}: no sequence has a token to record (empty responses, or truncated away)"
            )
        with record_gates(model, bins=bins) as recorder:
            for start in progress_bar(range(0, len(encoded), batch_size), f"gates {domain.name}"):
                batch = encoded[start : start + batch_size]
                input_ids, attention, record = right_pad(batch, pad_id, fill=False, dtype=torch.bool)  # (b, T) each
                recorder.set_token_mask(record.to(device))  # (batch, seq)
                model(input_ids=input_ids.to(device), attention_mask=attention.to(device))
        summary = recorder.to_dict()
        result["bin_edges"] = summary.pop("bin_edges")  # shared by all domains
        summary.pop("bins", None)
        num_layers = summary.get("num_layers")
        result["domains"][domain.name] = {
            "token_selection": "all" if domain.texts is not None else "response",
            "sequences": len(encoded),
            **summary,
            "by_depth_and_kind": _cross_groups(recorder.stats, num_layers, module_kind),
            "by_depth_and_module": _cross_groups(recorder.stats, num_layers, lambda module: module),
        }
    return result


def mean_gate(domain: dict[str, Any]) -> float:
    """The mean gate of one domain of an :func:`analyze_gates` result, over every recorded (token, rank component)
    of every module; NaN if nothing was recorded."""
    count = sum(m["count"] for m in domain["modules"])
    return sum(m["mean"] * m["count"] for m in domain["modules"]) / count if count else float("nan")


# Field pairs read as (instruction, output), in order of preference: the training format, GSM8K,
# HumanEval (the reference solution is the response, as the paper reads gates on held-out answers).
_EXAMPLE_FIELDS = (("instruction", "output"), ("question", "answer"), ("prompt", "canonical_solution"))


def domain_from_rows(name: str, rows: Sequence[dict[str, Any]], template: str = DEFAULT_TEMPLATE) -> GateDomain:
    """A domain from JSONL-style rows: ``text`` rows are raw text (all tokens); rows with
    ``instruction``/``output``, ``question``/``answer`` (GSM8K) or ``prompt``/``canonical_solution``
    (HumanEval) are instruction examples in the named training template (response tokens only)."""
    if not rows:
        raise ValueError(f"domain {name!r} has no rows")
    if all("text" in row for row in rows):
        return GateDomain(name, texts=[str(row["text"]) for row in rows])
    for instruction_key, output_key in _EXAMPLE_FIELDS:
        if all(instruction_key in row and output_key in row for row in rows):
            examples = [{"instruction": str(r[instruction_key]), "output": str(r[output_key])} for r in rows]
            return GateDomain(name, examples=examples, format_prompt=get_template(template).format_prompt)
    raise KeyError(
        f"domain {name!r}: every row needs 'text', or one of the field pairs {list(_EXAMPLE_FIELDS)}; "
        f"the first row has {sorted(rows[0])}"
    )


def default_offline_domains(n: int = 64, seed: int = 12345) -> list[GateDomain]:
    """The three domains of the paper, from offline sources.

    * ``math``: arithmetic word problems (:mod:`disel.experiments.data.arithmetic`) in the Alpaca template;
      response tokens. Use a ``seed`` different from the training data's.
    * ``general``: English prose from Python's documentation; all tokens.
    * ``code``: documented standard-library functions in the Magicoder template; response tokens.
    """
    math_examples = [{"instruction": p.instruction, "output": p.output} for p in generate_problems(n, seed)]
    return [
        GateDomain("math", examples=math_examples, format_prompt=ALPACA.format_prompt),
        GateDomain("general", texts=general_english_texts(n, seed)),
        GateDomain("code", examples=python_function_tasks(n, seed), format_prompt=MAGICODER.format_prompt),
    ]


def save_gates(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a ``disel.gates/1`` dict atomically, once :class:`GatesFile` accepts it (the file keeps every key)."""
    GatesFile.from_dict(result, path)
    write_json_atomic(path, result)
