"""Built-in verifiable tasks: arithmetic and short word problems with exact answers, as `datasets.Dataset` objects."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence

from datasets import Dataset

SPLITS = {"train": (0, 80), "validation": (80, 90), "test": (90, 100)}  # percent of the hash space of problems
LEVELS = (1, 2, 3)

# Each family maps (rng, level) to (canonical key, question, integer answer). The key identifies the problem
# independently of its wording, so that a problem's split depends on the problem alone.
Problem = tuple[str, str, int]


def _digits(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


# Operand ranges per level, wide enough that every cell (family, level) at levels 1-2 holds at least 1,300 distinct
# problems (over 100 per 10% split), so a split of 1,000 problems over a few families and levels never runs out.
# Difficulty grows with the level (more digits, larger factors, negative results); where the operands differ in
# size, either may come first.
def _ordered(rng: random.Random, a: int, b: int) -> tuple[int, int]:
    return (a, b) if rng.random() < 0.5 else (b, a)


def _addition(rng: random.Random, level: int) -> Problem:
    if level == 1:
        a, b = _ordered(rng, _digits(rng, 1), _digits(rng, 2))
    else:
        a, b = (_digits(rng, 2), _digits(rng, 2)) if level == 2 else (_digits(rng, 3), _digits(rng, 3))
    return f"add:{a}:{b}", f"What is {a} + {b}?", a + b


def _subtraction(rng: random.Random, level: int) -> Problem:
    if level == 1:
        a, b = rng.randint(10, 199), _digits(rng, 1)
    elif level == 2:
        a, b = sorted((_digits(rng, 2), _digits(rng, 2)), reverse=True)
    else:  # the result may be negative
        a, b = _digits(rng, 3), _digits(rng, 3)
    return f"sub:{a}:{b}", f"What is {a} - {b}?", a - b


def _multiplication(rng: random.Random, level: int) -> Problem:
    if level == 1:
        a, b = _ordered(rng, rng.randint(2, 12), rng.randint(2, 70))
    elif level == 2:
        a, b = _ordered(rng, rng.randint(2, 19), _digits(rng, 2))
    else:
        a, b = _digits(rng, 2), _digits(rng, 2)
    return f"mul:{a}:{b}", f"What is {a} * {b}?", a * b


def _division(rng: random.Random, level: int) -> Problem:
    quotient = {1: rng.randint(2, 120), 2: rng.randint(10, 199)}.get(level, _digits(rng, 2))
    divisor = {1: rng.randint(2, 12), 2: rng.randint(2, 9)}.get(level, rng.randint(11, 29))
    dividend = quotient * divisor
    return f"div:{dividend}:{divisor}", f"What is {dividend} / {divisor}?", quotient


NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Omar"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards"]


def _word_problem(rng: random.Random, level: int) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = _digits(rng, 1 if level == 1 else 2)
    b = _digits(rng, 2 if level == 3 else 1)
    kind = rng.choice(["gain", "loss", "groups"] if level > 1 else ["gain", "loss"])
    if kind == "gain":
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        answer = a + b
    elif kind == "loss":
        a, b = max(a, b), min(a, b)
        question = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?"
        answer = a - b
    else:
        question = f"{name} has {b} boxes with {a} {item} in each box. How many {item} does {name} have in total?"
        answer = a * b
    return f"word:{kind}:{name}:{item}:{a}:{b}", question, answer


def _order_of_operations(rng: random.Random, level: int) -> Problem:
    """Two operations, where the order matters: a + b * c, then (a + b) * c, then a * b - c * d."""
    if level == 1:
        a, b, c = _digits(rng, 2), rng.randint(2, 9), rng.randint(2, 9)
        return f"ops1:{a}:{b}:{c}", f"What is {a} + {b} * {c}?", a + b * c
    if level == 2:
        a, b, c = _digits(rng, 1), _digits(rng, 2), rng.randint(2, 9)
        return f"ops2:{a}:{b}:{c}", f"What is ({a} + {b}) * {c}?", (a + b) * c
    a, b, c, d = (rng.randint(2, 19) for _ in range(4))
    return f"ops3:{a}:{b}:{c}:{d}", f"What is {a} * {b} - {c} * {d}?", a * b - c * d


def _two_step_word_problem(rng: random.Random, level: int) -> Problem:
    """A start, then a purchase of groups (and at level 3 a loss): a + b * c (- d)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = _digits(rng, 1 if level == 1 else 2), rng.randint(2, 9), rng.randint(2, 9 if level == 1 else 12)
    question = f"{name} has {a} {item}. {name} buys {b} packs with {c} {item} in each pack."
    answer, d = a + b * c, 0
    if level == 3:
        d = rng.randint(1, answer - 1)
        question += f" Then {name} gives away {d} {item}."
        answer -= d
    return f"word2:{name}:{item}:{a}:{b}:{c}:{d}", f"{question} How many {item} does {name} have now?", answer


def _percent(rng: random.Random, level: int) -> Problem:
    """A percentage of a whole number, with a whole result."""
    percent = rng.choice({1: [10, 50], 2: [10, 20, 25, 50, 75]}.get(level, [5, 15, 30, 40, 60, 80]))
    step = 100 // math.gcd(percent, 100)
    whole = step * rng.randint(1, {1: 1000, 2: 400}.get(level, 240))
    return f"pct:{percent}:{whole}", f"What is {percent}% of {whole}?", percent * whole // 100


def _remainder(rng: random.Random, level: int) -> Problem:
    divisor = rng.randint(2, 9) if level < 3 else rng.randint(11, 25)
    dividend = rng.randint(10, 199) if level == 1 else _digits(rng, 3)
    return (
        f"mod:{dividend}:{divisor}",
        f"What is the remainder when {dividend} is divided by {divisor}?",
        (dividend % divisor),
    )


UNITS = {1: [("minutes", "hours", 60), ("days", "weeks", 7)], 2: [("centimetres", "metres", 100),
         ("grams", "kilograms", 1000), ("seconds", "minutes", 60)], 3: [("seconds", "hours", 3600),
         ("hours", "weeks", 168), ("millimetres", "metres", 1000)]}  # fmt: skip


def _unit_conversion(rng: random.Random, level: int) -> Problem:
    small, large, factor = rng.choice(UNITS[level])
    count = rng.randint(2, 1000)
    return f"unit:{small}:{large}:{count}", f"How many {small} are in {count} {large}?", count * factor


def _next_in_sequence(rng: random.Random, level: int) -> Problem:
    """The next term of an arithmetic progression (level 3: decreasing)."""
    start = rng.randint(1, 60) if level == 1 else _digits(rng, 2)
    step = rng.randint(2, 9) if level < 3 else -rng.randint(2, 9)
    if level == 3:
        start += 5 * -step
    terms = [start + i * step for i in range(4)]
    shown = ", ".join(map(str, terms))
    return f"seq:{start}:{step}", f"What number comes next in the sequence {shown}, ...?", start + 4 * step


FAMILIES: dict[str, Callable[[random.Random, int], Problem]] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "multiplication": _multiplication,
    "division": _division,
    "word_problem": _word_problem,
    "order_of_operations": _order_of_operations,
    "two_step_word_problem": _two_step_word_problem,
    "percent": _percent,
    "remainder": _remainder,
    "unit_conversion": _unit_conversion,
    "next_in_sequence": _next_in_sequence,
}
# What `families=None` draws (and what the default model and shipped adapters were trained on).
DEFAULT_FAMILIES = ("addition", "subtraction", "multiplication", "division", "word_problem")
# The suite of issue 17, chosen by the default model's solve rates alone (recipes/results/experiments.md, S1): the
# families to train and select on, and two held out (never trained or selected on) to check generalisation.
# next_in_sequence and two_step_word_problem need more than 48 tokens from the default model.
SUITE_FAMILIES = DEFAULT_FAMILIES + ("order_of_operations", "percent")
HELDOUT_FAMILIES = ("remainder", "unit_conversion")


def _split_of(key: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return next(name for name, (low, high) in SPLITS.items() if low <= bucket < high)


def arithmetic_dataset(
    split: str = "train",
    num_examples: int = 1000,
    families: Sequence[str] | None = None,
    levels: Sequence[int] = LEVELS,
    seed: int = 0,
    conversational: bool = True,
) -> Dataset:
    """
    Verifiable arithmetic tasks the default model can partly solve: addition, subtraction, multiplication, exact
    division and short word problems, at difficulty levels 1-3 (mostly the number of digits).

    Splits are disjoint by construction: a problem belongs to the split its canonical key hashes to (80% train, 10%
    validation, 10% test), whatever the seed or the number of examples. The same arguments give the same dataset.

    Args:
        split (`str`): `"train"`, `"validation"` or `"test"`.
        num_examples (`int`): how many distinct problems, spread evenly over the families and levels.
        families (`Sequence[str]`, *optional*): a subset of `FAMILIES`; by default `DEFAULT_FAMILIES`.
        levels (`Sequence[int]`): difficulty levels, from 1 to 3.
        seed (`int`): which problems are drawn.
        conversational (`bool`): `prompt` as a user message, `[{"role": "user", "content": question}]` (TRL's
            conversational format: [`encode_prompts`] renders it with the chat template, as the default model and
            the shipped adapters were trained); when `False`, the question as a string (used as text, for base
            models).

    Returns:
        `datasets.Dataset` with columns `prompt` (the question), `answer` (the integer answer as a string),
        `family`, `level` and `key` (the problem's canonical id).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    families = list(DEFAULT_FAMILIES) if families is None else list(families)
    unknown = [family for family in families if family not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"Unknown or no task families {unknown or families}; available: {list(FAMILIES)}.")
    if not levels or any(level not in LEVELS for level in levels):
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {list(levels)}.")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}.")

    rng = random.Random(f"{seed}:{split}")
    cells = [(family, level) for family in families for level in levels]
    quotas = {
        cell: num_examples // len(cells) + (index < num_examples % len(cells)) for index, cell in enumerate(cells)
    }
    rows, seen = [], set()
    for (family, level), quota in quotas.items():
        drawn, attempts = 0, 0
        while drawn < quota:
            attempts += 1
            if attempts > 200 * quota + 1000:
                raise ValueError(
                    f"Only {drawn} distinct {family} problems of level {level} fall in the {split!r} split; ask for "
                    f"fewer examples ({num_examples}) or add families or levels."
                )
            key, question, answer = FAMILIES[family](rng, level)
            if key in seen or _split_of(key) != split:
                continue
            seen.add(key)
            prompt = [{"role": "user", "content": question}] if conversational else question
            rows.append({"prompt": prompt, "answer": str(answer), "family": family, "level": level, "key": key})
            drawn += 1
    random.Random(f"{seed}:{split}:order").shuffle(rows)
    return Dataset.from_list(rows)
