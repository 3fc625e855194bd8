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

from disel.io import write_text_atomic

_NAMES = tuple(
    "Ava Ben Chloe Diego Emma Farid Grace Hiro Isla Jonas Kemi Liam Maya Noah Olga Priya Quinn Rosa Sam Tariq".split()
)
_ITEMS = (
    *"apples marbles stickers books pencils cookies stamps shells coins cards balloons tickets oranges beads".split(),
    "toy cars",
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


def _add_then_remove(rng: random.Random) -> dict[str, int]:
    start, more = rng.randint(5, 60), rng.randint(2, 40)
    away = rng.randint(1, start + more - 1)
    return {"start": start, "more": more, "away": away, "mid": start + more, "answer": start + more - away}


def _groups(rng: random.Random) -> dict[str, int]:
    boxes, per_box, extra = rng.randint(2, 12), rng.randint(2, 15), rng.randint(0, 20)
    mid = boxes * per_box
    return {"boxes": boxes, "per_box": per_box, "extra": extra, "mid": mid, "answer": mid + extra}


def _share(rng: random.Random) -> dict[str, int]:
    friends, each, kept = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 15)
    return {"friends": friends, "kept": kept, "total": friends * each + kept, "shared": friends * each, "answer": each}


def _price(rng: random.Random) -> dict[str, int]:
    count, price, extra = rng.randint(2, 9), rng.randint(2, 20), rng.randint(1, 50)
    return {"count": count, "price": price, "cost": count * price, "paid": count * price + extra, "answer": extra}


# Each kind: the numbers it draws, its question, its worked answer (one step per sentence). Name and item are
# drawn first, then the numbers: the same seed gives the same problems as before this table existed.
_KINDS = (
    (_add_then_remove,
     "{name} has {start} {item}. {name} gets {more} more and then gives away {away}. How many {item} does {name} "
     "have now?",
     "{name} starts with {start} {item}. {start} + {more} = {mid}. {mid} - {away} = {answer}."),
    (_groups,
     "{name} buys {boxes} boxes of {item} with {per_box} {item} in each box, and already had {extra} {item}. "
     "How many {item} does {name} have in total?",
     "{boxes} boxes hold {boxes} * {per_box} = {mid} {item}. {mid} + {extra} = {answer}."),
    (_share,
     "{name} had {total} {item}, kept {kept} and shared the rest equally among {friends} friends. How many {item} "
     "did each friend get?",
     "{name} shared {total} - {kept} = {shared} {item}. {shared} / {friends} = {answer}."),
    (_price,
     "{name} buys {count} {item} at {price} dollars each and pays with {paid} dollars. How much change does "
     "{name} get?",
     "The {item} cost {count} * {price} = {cost} dollars. {paid} - {cost} = {answer}."),
)  # fmt: skip


def _problem(rng: random.Random) -> ArithmeticProblem:
    draw, question, work = rng.choice(_KINDS)
    values = {"name": rng.choice(_NAMES), "item": rng.choice(_ITEMS), **draw(rng)}  # drawn in this order
    answer = values["answer"]
    return ArithmeticProblem(question.format(**values), f"{work.format(**values)}\n#### {answer}", answer)


def generate_problems(n: int, seed: int = 0) -> list[ArithmeticProblem]:
    """``n`` problems drawn with ``random.Random(seed)``; the same seed gives the same list."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got n={n!r}")
    rng = random.Random(seed)
    return [_problem(rng) for _ in range(n)]


def train_and_test_problems(
    train: int, test: int, seed: int = 0
) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """``train`` problems from ``seed`` and ``test`` held-out ones from ``seed + 1`` whose question is not
    among the training questions. ``RuntimeError`` if too few such questions can be drawn."""
    train_problems = generate_problems(train, seed)
    seen = {p.instruction for p in train_problems}
    test_problems = [p for p in generate_problems(4 * test, seed + 1) if p.instruction not in seen][:test]
    if len(test_problems) < test:
        raise RuntimeError(f"could not draw {test} test problems whose question is absent from the training set")
    return train_problems, test_problems


def write_jsonl(problems: list[ArithmeticProblem], path: str | Path) -> Path:
    """Write problems as JSONL rows (``instruction``, ``output``, ``answer``) atomically; returns the path."""
    return write_text_atomic(path, "".join(json.dumps(problem.as_row()) + "\n" for problem in problems))
