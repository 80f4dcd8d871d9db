import json
import logging
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from hf_adaptive_decoding.data import math_datasets as data
from hf_adaptive_decoding.data.math_datasets import (
    extract_gsm8k_answer,
    extract_last_boxed,
    load_gsm8k_dataset,
    load_math_dataset,
)

DATA = Path(__file__).parents[1] / "fixtures"
MATH_FILE = DATA / "math" / "test.jsonl"
GSM8K_FILE = DATA / "gsm8k" / "test.jsonl"
MATH_ANSWERS = ["\\frac{1}{2}", "3\\sqrt{2}", "7", "12", "\\{0, 1\\}", "(-\\infty, 3]", "5"]
GSM8K_ANSWERS = ["72", "1234", "10", "18", "-3", "1201000"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("$\\boxed{3\\sqrt{2}}$", "3\\sqrt{2}"),
        ("is $\\fbox{7}$", "7"),
        ("first $\\boxed{4}$, then $\\boxed{12}$ eggs", "12"),
        ("$\\boxed{\\{0, 1\\}}$", "\\{0, 1\\}"),
        ("$\\boxed{\\frac{\\sqrt{3}}{2}}$ and more text {x}", "\\frac{\\sqrt{3}}{2}"),
        ("$\\boxed 5$ sides", "5"),
        ("$\\boxed{\\left\\{ x \\right.}$", "\\left\\{ x \\right."),  # an escaped brace does not group
        ("$\\boxed { 8 }$", "8"),
        ("no box here", None),
        ("$\\boxed{\\frac{1}{2}$", None),  # unbalanced
        ("$\\boxed{}$", None),
        ("\\boxedfoo", None),
    ],
)
def test_extract_last_boxed(text, expected):
    assert extract_last_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("x\n#### 1,234", "1234"), ("#### $10", "10"), ("#### 18.", "18"), ("#### -3\n", "-3"), ("#### 0.5", "0.5")],
)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected
    assert extract_gsm8k_answer("no marker 12") is None and extract_gsm8k_answer("#### ") is None


def test_math_from_file_extracts_last_boxed_and_keeps_columns():
    dataset = load_math_dataset(str(MATH_FILE))
    source = read_jsonl(MATH_FILE)
    assert dataset["answer"] == MATH_ANSWERS
    assert dataset["prompt"] == [[{"role": "user", "content": row["problem"]}] for row in source]
    assert load_math_dataset(str(MATH_FILE), conversational=False)["prompt"] == [row["problem"] for row in source]
    assert dataset["solution"] == [row["solution"] for row in source]
    assert set(dataset.column_names) == {"prompt", "answer", "solution", "level", "type"}
    assert dataset["level"][0] == "Level 1" and dataset["type"][1] == "Algebra"


def test_math_answer_column_takes_precedence(tmp_path):
    rows = [{"problem": "p", "solution": "so $\\boxed{2/4}$", "answer": "\\frac{1}{2}", "subject": "Algebra"}]
    dataset = load_math_dataset(write_jsonl(tmp_path / "m.jsonl", rows))
    assert dataset["answer"] == ["\\frac{1}{2}"] and dataset["subject"] == ["Algebra"]
    # an `answer` column makes `solution` optional
    dataset = load_math_dataset(write_jsonl(tmp_path / "a.jsonl", [{"problem": "p", "answer": "3"}]))
    assert dataset["answer"] == ["3"]


def test_folder_selects_the_split():
    folder = str(DATA / "math")
    assert load_math_dataset(folder, split="test")["answer"] == MATH_ANSWERS
    train = load_math_dataset(folder, split="train")
    assert train["answer"] == ["5", "\\dfrac{1}{2}", "6"]
    with pytest.raises(ValueError, match="'validation'.*math"):
        load_math_dataset(folder, split="validation")


def test_parquet_csv_and_hub_style_folder(tmp_path):
    rows = read_jsonl(GSM8K_FILE)
    (tmp_path / "hub" / "main").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "hub" / "main" / "test-00000-of-00001.parquet"))
    Dataset.from_list(rows[:2]).to_parquet(str(tmp_path / "hub" / "main" / "train-00000-of-00001.parquet"))
    assert load_gsm8k_dataset(str(tmp_path / "hub"))["answer"] == GSM8K_ANSWERS
    assert load_gsm8k_dataset(str(tmp_path / "hub"), split="train")["answer"] == GSM8K_ANSWERS[:2]
    parquet = tmp_path / "test.parquet"
    Dataset.from_list(rows).to_parquet(str(parquet))
    assert load_gsm8k_dataset(str(parquet))["answer"] == GSM8K_ANSWERS
    csv = tmp_path / "test.csv"
    Dataset.from_list(read_jsonl(MATH_FILE)).to_csv(str(csv), index=False)
    assert load_math_dataset(str(csv))["answer"] == MATH_ANSWERS


def test_save_to_disk_folders(tmp_path):
    rows = read_jsonl(MATH_FILE)
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert load_math_dataset(str(tmp_path / "single"))["answer"] == MATH_ANSWERS
    DatasetDict(train=Dataset.from_list(rows[:2]), test=Dataset.from_list(rows)).save_to_disk(str(tmp_path / "dict"))
    assert load_math_dataset(str(tmp_path / "dict"), split="train")["answer"] == MATH_ANSWERS[:2]
    with pytest.raises(ValueError, match=r"'validation'.*\['train', 'test'\]"):
        load_math_dataset(str(tmp_path / "dict"), split="validation")


def test_gsm8k_from_file():
    dataset = load_gsm8k_dataset(str(GSM8K_FILE))
    source = read_jsonl(GSM8K_FILE)
    assert dataset["answer"] == GSM8K_ANSWERS
    assert dataset["prompt"] == [[{"role": "user", "content": row["question"]}] for row in source]
    assert load_gsm8k_dataset(str(GSM8K_FILE), conversational=False)["prompt"] == [row["question"] for row in source]
    assert dataset["solution"] == [row["answer"] for row in source]
    assert set(dataset.column_names) == {"prompt", "answer", "solution"}


def test_num_examples_is_a_deterministic_seeded_subset():
    full = load_math_dataset(str(MATH_FILE), conversational=False)["prompt"]
    first = load_math_dataset(str(MATH_FILE), num_examples=4, seed=1, conversational=False)["prompt"]
    assert first == load_math_dataset(str(MATH_FILE), num_examples=4, seed=1, conversational=False)["prompt"]
    conversations = load_math_dataset(str(MATH_FILE), num_examples=4, seed=1)["prompt"]
    assert [conversation[0]["content"] for conversation in conversations] == first  # the same draw in either format
    assert len(first) == 4 and len(set(first)) == 4 and set(first) <= set(full)
    assert first != full[:4]

    def prompts(seed: int) -> tuple[str, ...]:
        return tuple(load_math_dataset(str(MATH_FILE), num_examples=7, seed=seed, conversational=False)["prompt"])

    orders = {prompts(seed) for seed in range(4)}
    assert len(orders) > 1
    with pytest.raises(ValueError, match="num_examples=10.* 7 "):
        load_math_dataset(str(MATH_FILE), num_examples=10)
    with pytest.raises(ValueError, match="got 0"):
        load_gsm8k_dataset(str(GSM8K_FILE), num_examples=0)


def test_missing_columns_are_named(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "#### 1"}])
    with pytest.raises(
        ValueError, match=r"q\.jsonl.*\['problem'\].*\['question', 'answer'\].*\['problem', 'answer'\]"
    ):
        load_math_dataset(path)
    with pytest.raises(ValueError, match=r"\['question', 'answer'\].*\['problem', 'solution', 'level', 'type'\]"):
        load_gsm8k_dataset(str(MATH_FILE))


def test_rows_without_a_final_answer(tmp_path, caplog):
    rows = read_jsonl(MATH_FILE) + [{"problem": "p", "solution": "no box", "level": "Level 1", "type": "Algebra"}] * 2
    with caplog.at_level(logging.WARNING, logger="hf_adaptive_decoding.data.math_datasets"):
        dataset = load_math_dataset(write_jsonl(tmp_path / "some.jsonl", rows))
    assert dataset["answer"] == MATH_ANSWERS
    warnings = [
        record.getMessage() for record in caplog.records if record.name == "hf_adaptive_decoding.data.math_datasets"
    ]
    assert len(warnings) == 1 and "2 of 9" in warnings[0] and "some.jsonl" in warnings[0]
    with pytest.raises(ValueError, match=r"None of the 2 rows of .*none\.jsonl"):
        load_math_dataset(write_jsonl(tmp_path / "none.jsonl", rows[-2:]))
    with pytest.raises(ValueError, match=r"None of the 1 rows .*####"):
        load_gsm8k_dataset(write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "42"}]))


def test_empty_sources_are_named(tmp_path, monkeypatch):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty.jsonl"):
        load_math_dataset(str(tmp_path / "empty.jsonl"))
    Dataset.from_dict({"problem": [], "solution": []}).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(ValueError, match="empty.parquet"):
        load_math_dataset(str(tmp_path / "empty.parquet"))
    monkeypatch.setattr(
        data, "load_dataset", lambda *args, **kwargs: Dataset.from_dict({"question": [], "answer": []})
    )
    with pytest.raises(ValueError, match="'test' split of 'openai/gsm8k' has no rows"):
        load_gsm8k_dataset()


@pytest.mark.parametrize(
    "path", ["./missing_dir", "/nonexistent/math", "~/no_such_dir_xyz", "missing.jsonl", "x.parquet"]
)
def test_missing_local_paths_never_reach_the_hub(path, monkeypatch):
    monkeypatch.setattr(data, "load_dataset", lambda *args, **kwargs: pytest.fail(f"Hub lookup for {args}"))
    with pytest.raises(FileNotFoundError, match=path.replace(".", r"\.")):
        load_gsm8k_dataset(path)


def test_unsupported_file_type(tmp_path):
    (tmp_path / "rows.txt").write_text("problem")
    with pytest.raises(ValueError, match=r"rows\.txt.*\.jsonl"):
        load_math_dataset(str(tmp_path / "rows.txt"))


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        source = GSM8K_FILE if "gsm8k" in path else MATH_FILE
        return Dataset.from_list(read_jsonl(source))

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    return calls


def test_hub_ids_are_passed_to_load_dataset(fake_hub):
    assert load_gsm8k_dataset()["answer"] == GSM8K_ANSWERS
    assert fake_hub[-1] == ("openai/gsm8k", {"name": "main", "split": "test"})
    load_gsm8k_dataset("openai/gsm8k", split="train", name="socratic", revision="abc")
    assert fake_hub[-1] == ("openai/gsm8k", {"name": "socratic", "split": "train", "revision": "abc"})
    load_gsm8k_dataset("someone/gsm8k-mirror")  # another repo: no config forced on it
    assert fake_hub[-1] == ("someone/gsm8k-mirror", {"split": "test"})
    subset = load_math_dataset(num_examples=3)
    assert len(subset) == 3 and set(subset["answer"]) <= set(MATH_ANSWERS)
    assert fake_hub[-1] == ("HuggingFaceH4/MATH-500", {"split": "test"})
