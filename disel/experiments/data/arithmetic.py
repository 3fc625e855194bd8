"""A seeded generator of arithmetic word problems: the offline stand-in for MetaMathQA / GSM8K.

Each problem is an instruction/response pair for the Alpaca template. The response walks through the
arithmetic one step per sentence and ends GSM8K-style with ``#### <answer>``, so the same strict
final-number extraction used for GSM8K scores it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ArithmeticProblem", "generate_problems", "write_jsonl"]

_NAMES = (
    "Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jonas",
    "Kemi", "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq",
)
_ITEMS = (
    "apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells",
    "coins", "cards", "balloons", "tickets", "oranges", "beads", "toy cars",
)


@dataclass(frozen=True)
class ArithmeticProblem:
    """One word problem: ``instruction`` (question), ``output`` (worked answer), ``answer`` (int)."""

    instruction: str
    output: str
    answer: int

    def as_row(self) -> dict[str, str]:
        """The JSONL row the training data loader reads (Alpaca fields)."""
        return {"instruction": self.instruction, "output": self.output, "answer": str(self.answer)}


def _add_then_remove(rng: random.Random) -> ArithmeticProblem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    start, more = rng.randint(5, 60), rng.randint(2, 40)
    away = rng.randint(1, start + more - 1)
    mid = start + more
    answer = mid - away
    question = (
        f"{name} has {start} {item}. {name} gets {more} more and then gives away {away}. "
        f"How many {item} does {name} have now?"
    )
    work = f"{name} starts with {start} {item}. {start} + {more} = {mid}. {mid} - {away} = {answer}.\n#### {answer}"
    return ArithmeticProblem(question, work, answer)


def _groups(rng: random.Random) -> ArithmeticProblem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    boxes, per_box, extra = rng.randint(2, 12), rng.randint(2, 15), rng.randint(0, 20)
    mid = boxes * per_box
    answer = mid + extra
    question = (
        f"{name} buys {boxes} boxes of {item} with {per_box} {item} in each box, "
        f"and already had {extra} {item}. How many {item} does {name} have in total?"
    )
    work = f"{boxes} boxes hold {boxes} * {per_box} = {mid} {item}. {mid} + {extra} = {answer}.\n#### {answer}"
    return ArithmeticProblem(question, work, answer)


def _share(rng: random.Random) -> ArithmeticProblem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    friends, each, kept = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 15)
    total = friends * each + kept
    question = (
        f"{name} had {total} {item}, kept {kept} and shared the rest equally among {friends} friends. "
        f"How many {item} did each friend get?"
    )
    shared = total - kept
    work = f"{name} shared {total} - {kept} = {shared} {item}. {shared} / {friends} = {each}.\n#### {each}"
    return ArithmeticProblem(question, work, each)


def _price(rng: random.Random) -> ArithmeticProblem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    count, price, paid_extra = rng.randint(2, 9), rng.randint(2, 20), rng.randint(1, 50)
    cost = count * price
    paid = cost + paid_extra
    question = (
        f"{name} buys {count} {item} at {price} dollars each and pays with {paid} dollars. "
        f"How much change does {name} get?"
    )
    work = f"The {item} cost {count} * {price} = {cost} dollars. {paid} - {cost} = {paid_extra}.\n#### {paid_extra}"
    return ArithmeticProblem(question, work, paid_extra)


_KINDS = (_add_then_remove, _groups, _share, _price)


def generate_problems(n: int, seed: int = 0) -> list[ArithmeticProblem]:
    """``n`` problems drawn with ``random.Random(seed)``; the same seed gives the same list."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got n={n!r}")
    rng = random.Random(seed)
    return [rng.choice(_KINDS)(rng) for _ in range(n)]


def write_jsonl(problems: list[ArithmeticProblem], path: str | Path) -> Path:
    """Write problems as JSONL rows (``instruction``, ``output``, ``answer``) atomically; returns the path."""
    from disel.io import write_text_atomic

    return write_text_atomic(path, "".join(json.dumps(problem.as_row()) + "\n" for problem in problems))
