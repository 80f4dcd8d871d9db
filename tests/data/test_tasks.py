import re

import pytest

from hf_adaptive_decoding.data.tasks import (
    DEFAULT_FAMILIES,
    FAMILIES,
    HELDOUT_FAMILIES,
    SUITE_FAMILIES,
    arithmetic_dataset,
)


def solve(question: str) -> int:
    """An independent solver for the generated wordings."""
    if match := re.fullmatch(r"What is (-?\d+) ([-+*/]) (\d+)\?", question):
        a, op, b = int(match[1]), match[2], int(match[3])
        return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    if "more" in question:
        return numbers[0] + numbers[1]
    if "gives away" in question:
        return numbers[0] - numbers[1]
    return numbers[0] * numbers[1]


def solve_any(question: str) -> int:
    """An independent solver for every family's wording: Python evaluates the expression the question states."""
    numbers = [int(n) for n in re.findall(r"-?\d+", question.replace(" - ", " _ "))]
    if match := re.fullmatch(r"What is ([-+*/() \d]+)\?", question):
        return int(eval(match[1].replace("/", "//")))  # the generated arithmetic only, no names
    if question.startswith("What is the remainder"):
        return numbers[0] % numbers[1]
    if "%" in question:
        return numbers[0] * numbers[1] // 100
    if question.startswith("How many") and " are in " in question:
        factors = {("minutes", "hours"): 60, ("days", "weeks"): 7, ("centimetres", "metres"): 100}
        factors |= {("grams", "kilograms"): 1000, ("seconds", "minutes"): 60, ("seconds", "hours"): 3600}
        factors |= {("hours", "weeks"): 168, ("millimetres", "metres"): 1000}
        small, large = re.fullmatch(r"How many (\w+) are in \d+ (\w+)\?", question).groups()
        return numbers[0] * factors[(small, large)]
    if "comes next" in question:
        return numbers[-1] + (numbers[-1] - numbers[-2])
    if "packs" in question:
        return numbers[0] + numbers[1] * numbers[2] - (numbers[3] if len(numbers) > 3 else 0)
    return solve(question)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_at_every_level_has_the_right_answers(family):
    dataset = arithmetic_dataset("validation", num_examples=60, families=[family], levels=(1, 2, 3), seed=5)
    assert sorted(set(dataset["level"])) == [1, 2, 3] and len(set(dataset["key"])) == 60
    for row in dataset:
        assert int(row["answer"]) == solve_any(row["prompt"][0]["content"]), row


def test_the_held_out_families_are_apart_from_the_suite():
    assert set(SUITE_FAMILIES) | set(HELDOUT_FAMILIES) < set(FAMILIES)
    assert not set(SUITE_FAMILIES) & set(HELDOUT_FAMILIES)


def test_the_default_families_are_the_original_five():
    assert set(arithmetic_dataset("train", num_examples=200)["family"]) == set(DEFAULT_FAMILIES)
    assert set(DEFAULT_FAMILIES) < set(FAMILIES)


def test_answers_are_correct_and_columns_present():
    dataset = arithmetic_dataset("train", num_examples=300, seed=1)
    assert len(dataset) == 300
    assert set(dataset.column_names) >= {"prompt", "answer", "family", "level", "key"}
    for row in dataset:
        ((message,),) = [row["prompt"]]  # conversational: one user message
        assert message["role"] == "user"
        question = message["content"]
        assert int(row["answer"]) == solve(question), row
        if row["family"] == "division":
            a, b = map(int, re.findall(r"\d+", question))
            assert a % b == 0


def test_standard_format_is_the_same_questions_as_text():
    conversational = arithmetic_dataset("test", num_examples=40, seed=2)
    standard = arithmetic_dataset("test", num_examples=40, seed=2, conversational=False)
    assert standard["prompt"] == [prompt[0]["content"] for prompt in conversational["prompt"]]
    assert standard["key"] == conversational["key"] and standard["answer"] == conversational["answer"]


def test_deterministic_by_seed_and_spread_over_families_and_levels():
    first = arithmetic_dataset("validation", num_examples=150, seed=3)
    assert first["prompt"] == arithmetic_dataset("validation", num_examples=150, seed=3)["prompt"]
    assert first["prompt"] != arithmetic_dataset("validation", num_examples=150, seed=4)["prompt"]
    counts = {(f, lv): 0 for f in DEFAULT_FAMILIES for lv in (1, 2, 3)}
    for row in first:
        counts[(row["family"], row["level"])] += 1
    assert set(counts.values()) == {10}
    assert len(set(first["key"])) == 150


def test_splits_are_disjoint_whatever_the_seed():
    keys = {
        split: set(arithmetic_dataset(split, num_examples=n, seed=seed, levels=(2, 3))["key"])
        for split, n, seed in [("train", 900, 0), ("validation", 100, 1), ("test", 100, 2)]
    }
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_families_and_levels_filter():
    dataset = arithmetic_dataset("test", num_examples=20, families=["multiplication"], levels=[1])
    assert set(dataset["family"]) == {"multiplication"} and set(dataset["level"]) == {1}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "dev"}, "split"),
        ({"families": ["calculus"]}, "calculus"),
        ({"levels": [4]}, "levels"),
        ({"num_examples": 0}, "num_examples"),
        ({"families": ["addition"], "levels": [1], "num_examples": 500, "split": "test"}, "distinct"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        arithmetic_dataset(**kwargs)


def test_the_suite_supplies_the_issue_17_measurement_sizes():
    # 1,000 test and 500 validation problems over the suite at levels 1-2, and 400 test problems of the held-out
    # families: no cell runs out, and the splits stay disjoint.
    test = arithmetic_dataset("test", 1000, families=SUITE_FAMILIES, levels=[1, 2])
    validation = arithmetic_dataset("validation", 500, families=SUITE_FAMILIES, levels=[1, 2])
    heldout = arithmetic_dataset("test", 400, families=HELDOUT_FAMILIES, levels=[1, 2])
    assert len(set(test["key"])) == 1000 and len(set(validation["key"])) == 500 and len(set(heldout["key"])) == 400
    assert not set(test["key"]) & set(validation["key"])
    assert not set(test["key"]) & set(arithmetic_dataset("train", 2000, families=SUITE_FAMILIES, levels=[1, 2])["key"])
