"""Arithmetic word problems generated in code, in LLM-Adapters format.

They let the whole pipeline run with no data directory (``dataset=synthetic_math``): the
worked answers end with "The answer is N.", the format the math scorer reads, so a model
visibly learns the task within a few hundred steps.
"""

from __future__ import annotations

import random

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "shells"]


def _problem(rng: random.Random) -> dict[str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(4)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    if kind == 0:
        q = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        w, ans = f"{name} has {a} {item} and gets {b} more, so {a} + {b} = {a + b}.", a + b
    elif kind == 1:
        a, b = max(a, b) + 1, min(a, b)
        q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        w, ans = f"{name} starts with {a} {item} and gives away {b}, so {a} - {b} = {a - b}.", a - b
    elif kind == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        q = f"{name} has {a} boxes with {b} {item} in each box. How many {item} are there in total?"
        w, ans = f"There are {a} boxes of {b} {item}, so {a} * {b} = {a * b}.", a * b
    else:
        b, per = rng.randint(2, 9), rng.randint(2, 9)
        a = b * per
        q = f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
        w, ans = f"{a} {item} shared among {b} friends gives {a} / {b} = {per} each.", per
    return {"instruction": q, "input": "", "output": f"\n{w} The answer is {ans}.", "answer": f"{float(ans)}"}


def synthetic_math(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [_problem(rng) for _ in range(n)]
