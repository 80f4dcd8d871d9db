"""Built-in verifiable tasks: arithmetic and short word problems with exact answers, as `datasets.Dataset` objects."""

from __future__ import annotations

import hashlib
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


# Operand ranges per level; every (family, level) has several hundred distinct problems, so that each split has
# enough of them. Difficulty grows with the level (more digits, larger factors, negative results).
def _addition(rng: random.Random, level: int) -> Problem:
    a, b = {1: (_digits(rng, 1), _digits(rng, 2)), 2: (_digits(rng, 2), _digits(rng, 2))}.get(
        level, (_digits(rng, 3), _digits(rng, 3))
    )
    return f"add:{a}:{b}", f"What is {a} + {b}?", a + b


def _subtraction(rng: random.Random, level: int) -> Problem:
    if level == 1:
        a, b = _digits(rng, 2), _digits(rng, 1)
    elif level == 2:
        a, b = sorted((_digits(rng, 2), _digits(rng, 2)), reverse=True)
    else:  # the result may be negative
        a, b = _digits(rng, 3), _digits(rng, 3)
    return f"sub:{a}:{b}", f"What is {a} - {b}?", a - b


def _multiplication(rng: random.Random, level: int) -> Problem:
    a = rng.randint(2, 9) if level < 3 else _digits(rng, 2)
    b = rng.randint(2, 40) if level == 1 else _digits(rng, 2)
    return f"mul:{a}:{b}", f"What is {a} * {b}?", a * b


def _division(rng: random.Random, level: int) -> Problem:
    quotient = rng.randint(2, 40) if level == 1 else _digits(rng, 2)
    divisor = rng.randint(2, 9) if level < 3 else rng.randint(11, 29)
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


FAMILIES: dict[str, Callable[[random.Random, int], Problem]] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "multiplication": _multiplication,
    "division": _division,
    "word_problem": _word_problem,
}


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
        families (`Sequence[str]`, *optional*): a subset of `FAMILIES`; all by default.
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
    families = list(FAMILIES) if families is None else list(families)
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
