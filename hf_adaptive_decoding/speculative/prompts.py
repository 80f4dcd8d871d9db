"""Prompts of the built-in tasks for drafting: speculative decoding is measured on what the default model writes."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from ..data.code_datasets import load_humaneval_dataset
from ..data.prompting import encode_chat
from ..data.tasks import arithmetic_dataset

COT_INSTRUCTION = "Think step by step, then give the final answer within \\boxed{}."
SPLITS = {"train": (0, 100), "validation": (100, 124), "test": (124, 164)}  # HumanEval problems per split


def builtin_draft_prompts(
    tokenizer: PreTrainedTokenizerBase, split: str, num_arithmetic: int, num_code: int
) -> list[torch.LongTensor]:
    """
    Chat-formatted prompts `(1, length)` for drafting: arithmetic questions with a chain-of-thought instruction (the
    answer restates the numbers) and HumanEval functions to complete (code repeats its identifiers), interleaved.
    Splits are disjoint: the arithmetic tasks' own splits, and HumanEval problems 0-99 / 100-123 / 124-163.

    Args:
        tokenizer: the target's tokenizer, with a chat template.
        split (`str`): `"train"`, `"validation"` or `"test"`.
        num_arithmetic (`int`), num_code (`int`): how many of each (code: at most the split's size).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    start, end = SPLITS[split]
    if not 0 <= num_code <= end - start:
        raise ValueError(f"num_code must be in [0, {end - start}] for the {split} split, got {num_code}.")
    questions = [
        f"{q} {COT_INSTRUCTION}" for q in arithmetic_dataset(split, num_arithmetic, conversational=False)["prompt"]
    ][:num_arithmetic]
    code = load_humaneval_dataset(end, conversational=False)["prompt"][start : start + num_code] if num_code else []
    paired = [message for pair in zip(questions, code, strict=False) for message in pair]
    messages = paired + questions[len(code) :] + code[len(questions) :]
    if not messages:
        raise ValueError("builtin_draft_prompts: asked for no prompt (num_arithmetic = num_code = 0).")
    return [encode_chat(tokenizer, [message])["input_ids"] for message in messages]
