"""Math benchmarks with verifiable final answers (MATH, GSM8K) as `datasets.Dataset` objects with `prompt`/`answer`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
GSM8K_HUB_IDS = ("openai/gsm8k", "gsm8k")  # their configs are "main" and "socratic", and neither is the default


def extract_last_boxed(text: str) -> str | None:
    """
    The content of the last `\\boxed{...}` or `\\fbox{...}` in `text`, nested braces included (`\\boxed{\\frac{1}{2}}`
    gives `\\frac{1}{2}`); also the brace-less `\\boxed 5` found in a few MATH solutions.

    Args:
        text (`str`): a solution or a model's completion.

    Returns:
        `str` or `None`: the stripped content, or `None` when there is no box, it is empty or its braces don't close.
    """
    # Written by hand: regular expressions cannot balance braces, and latex2sympy2_extended's extract_boxed_content
    # (behind math-verify) joins neighbouring boxes with commas and returns the whole text when there is no box.
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start + (6 if text.startswith("\\boxed", start) else 5) :]
    body = rest.lstrip()
    if not body.startswith("{"):
        # `\boxed 5$`: the answer runs to the closing `$` (or the end); `\boxedfoo` is another command
        return (body.split("$")[0].strip() or None) if body and body != rest else None
    depth, index = 0, 0
    while index < len(body):
        char = body[index]
        if char == "\\":  # `\{`, `\}` and `\\` are not grouping braces
            index += 2
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return body[1:index].strip() or None
        index += 1
    return None


def extract_gsm8k_answer(text: str) -> str | None:
    """
    The final answer after the last `####` of a GSM8K worked answer, as a plain number: `"...\\n#### $1,234."` gives
    `"1234"`.

    Args:
        text (`str`): a GSM8K `answer` field.

    Returns:
        `str` or `None`: the cleaned final answer, or `None` when there is no `####` or nothing follows it.
    """
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].strip().rstrip(".").strip().removeprefix("$").replace(",", "").strip()
    return answer or None


def _looks_like_path(path_or_id: str) -> bool:
    return path_or_id.startswith((".", "/", "~")) or Path(path_or_id).suffix.lower() in DATA_FILE_BUILDERS


def _load_source(path_or_id: str, split: str, default_config: str | None = None, **load_kwargs) -> Dataset:
    """A Hub id, a data file, a folder of split files or a `save_to_disk` folder, as one `Dataset` split."""
    path = Path(os.path.expanduser(path_or_id))
    if not path.exists():
        if _looks_like_path(path_or_id):
            raise FileNotFoundError(f"No such file or folder: {path_or_id!r} (not looked up on the Hub).")
        if default_config is not None:
            load_kwargs.setdefault("name", default_config)
        dataset = load_dataset(path_or_id, split=split, **load_kwargs)
    elif path.is_file():
        if path.suffix.lower() not in DATA_FILE_BUILDERS:
            raise ValueError(f"Unsupported data file {path_or_id!r}; expected one of {sorted(DATA_FILE_BUILDERS)}.")
        if path.stat().st_size == 0:
            raise ValueError(f"The data file {path_or_id!r} is empty.")
        builder = DATA_FILE_BUILDERS[path.suffix.lower()]
        try:  # the whole file is the split
            dataset = load_dataset(builder, data_files=str(path), split="train", **load_kwargs)
        except ValueError as error:  # e.g. a parquet file without rows; datasets' message does not name the file
            raise ValueError(f"Could not load {path_or_id!r}: {error}") from error
    elif (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise ValueError(f"No split {split!r} in {path_or_id!r}; its splits are {list(dataset)}.")
            dataset = dataset[split]
    else:
        try:  # datasets picks the files of the split by name: test.jsonl, data/test-00000-of-00001.parquet...
            dataset = load_dataset(str(path), split=split, **load_kwargs)
        except ValueError as error:
            raise ValueError(f"Could not load split {split!r} from the folder {path_or_id!r}: {error}") from error
    if len(dataset) == 0:
        raise ValueError(f"The {split!r} split of {path_or_id!r} has no rows.")
    return dataset


def _require_columns(dataset: Dataset, source: str, expected: list[str], kind: str) -> None:
    missing = [column for column in expected if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source!r} is missing the columns {missing} of a {kind} dataset: it has {dataset.column_names}, "
            f"expected {expected}."
        )


def _keep_rows(
    dataset: Dataset, source: str, column: str, keep, lacking: str, rows: str = "rows", log=logger
) -> Dataset:
    """The rows whose `column` passes `keep`, with a warning naming how many lack `lacking`; an error when none
    is left."""
    kept = dataset.filter(keep, input_columns=column)
    if len(kept) == 0:
        raise ValueError(f"None of the {len(dataset)} {rows} of {source!r} has {lacking}.")
    if len(kept) < len(dataset):
        skipped = len(dataset) - len(kept)
        log.warning("Skipping %d of %d %s of %r without %s.", skipped, len(dataset), rows, source, lacking)
    return kept


def _drop_unanswered(dataset: Dataset, source: str, what: str) -> Dataset:
    return _keep_rows(dataset, source, "answer", lambda answer: answer is not None, f"a final answer ({what})")


def as_conversational(dataset: Dataset) -> Dataset:
    """`dataset` with each string `prompt` made a one-message conversation, `[{"role": "user", "content": prompt}]`
    (TRL's conversational format, which [`encode_prompts`] renders with the chat template)."""
    return dataset.map(lambda prompt: {"prompt": [{"role": "user", "content": prompt}]}, input_columns="prompt")


def _subset(dataset: Dataset, source: str, num_examples: int | None, seed: int) -> Dataset:
    if num_examples is None:
        return dataset
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int or None, got {num_examples!r}.")
    if num_examples > len(dataset):
        raise ValueError(f"num_examples={num_examples} but {source!r} has only {len(dataset)} usable rows.")
    return dataset.shuffle(seed=seed).select(range(num_examples))


def load_math_dataset(
    path_or_id: str = "HuggingFaceH4/MATH-500",
    split: str = "test",
    num_examples: int | None = None,
    seed: int = 0,
    conversational: bool = True,
    **load_kwargs,
) -> Dataset:
    """
    Competition problems in the MATH format (Hendrycks et al., 2021): `problem` and a `solution` whose last
    `\\boxed{...}` is the final answer. The default, `HuggingFaceH4/MATH-500`, is the 500-problem test subset of
    "Let's Verify Step by Step" that most reasoning evaluations report on; it is plain parquet with one config (the
    original `hendrycks/competition_math` was taken down, `EleutherAI/hendrycks_math` needs one config per subject).
    Its only split is `"test"`.

    Args:
        path_or_id (`str`): a Hub dataset id; a `.json`, `.jsonl`, `.parquet` or `.csv` file (the whole file is used,
            whatever `split`); a folder of split files (`test.jsonl`, `data/test-*.parquet`...); or a
            `save_to_disk` folder.
        split (`str`): the split to load from a Hub id or a folder.
        num_examples (`int`, *optional*): a subset of this size, drawn by a shuffle seeded with `seed`; all rows when
            `None`.
        seed (`int`): the shuffle's seed.
        conversational (`bool`): `prompt` as a user message (TRL's conversational format, chat-templated by
            [`encode_prompts`], for chat models); when `False`, the problem as a string (used as text: base models).
        load_kwargs: passed to `datasets.load_dataset` (`name`, `revision`, `cache_dir`...).

    Returns:
        `datasets.Dataset` with columns `prompt` (the problem), `answer` (the source's `answer` column if it has one,
        else the last boxed expression of `solution`) and the source's other columns (`solution`, `level`, `type`...).
        Rows without a final answer are skipped with a warning.
    """
    dataset = _load_source(path_or_id, split, **load_kwargs)
    has_answer = "answer" in dataset.column_names
    _require_columns(dataset, path_or_id, ["problem", "answer" if has_answer else "solution"], "MATH")
    dataset = dataset.rename_column("problem", "prompt")
    if has_answer:
        dataset = dataset.map(
            lambda answer: {"answer": None if answer is None else str(answer).strip() or None}, input_columns="answer"
        )
    else:
        dataset = dataset.map(lambda solution: {"answer": extract_last_boxed(solution)}, input_columns="solution")
    dataset = _drop_unanswered(dataset, path_or_id, "no \\boxed{...} in `solution`" if not has_answer else "empty")
    dataset = _subset(dataset, path_or_id, num_examples, seed)
    return as_conversational(dataset) if conversational else dataset


def load_gsm8k_dataset(
    path_or_id: str = "openai/gsm8k",
    split: str = "test",
    num_examples: int | None = None,
    seed: int = 0,
    conversational: bool = True,
    **load_kwargs,
) -> Dataset:
    """
    Grade-school word problems in the GSM8K format (Cobbe et al., 2021): `question` and a worked `answer` ending in
    `#### <number>`. The Hub dataset's config defaults to `"main"` (pass `name="socratic"` for the other one).

    Args:
        path_or_id (`str`): a Hub dataset id, a data file, a folder of split files or a `save_to_disk` folder, as in
            [`load_math_dataset`].
        split (`str`): the split to load from a Hub id or a folder: `"train"` or `"test"` on the Hub.
        num_examples (`int`, *optional*): a subset of this size, drawn by a shuffle seeded with `seed`.
        seed (`int`): the shuffle's seed.
        conversational (`bool`): `prompt` as a user message (chat models); when `False`, the question as a string
            (base models). See [`encode_prompts`].
        load_kwargs: passed to `datasets.load_dataset`.

    Returns:
        `datasets.Dataset` with columns `prompt` (the question), `answer` (the final number as a string, without
        thousands separators, `$` or a trailing period) and `solution` (the original worked answer), plus any other
        columns of the source. Rows without `####` are skipped with a warning.
    """
    default_config = "main" if path_or_id.lower() in GSM8K_HUB_IDS else None
    dataset = _load_source(path_or_id, split, default_config=default_config, **load_kwargs)
    _require_columns(dataset, path_or_id, ["question", "answer"], "GSM8K")
    dataset = dataset.rename_columns({"question": "prompt", "answer": "solution"})
    dataset = dataset.map(lambda solution: {"answer": extract_gsm8k_answer(solution)}, input_columns="solution")
    dataset = _drop_unanswered(dataset, path_or_id, "no `#### <answer>` line")
    dataset = _subset(dataset, path_or_id, num_examples, seed)
    return as_conversational(dataset) if conversational else dataset
