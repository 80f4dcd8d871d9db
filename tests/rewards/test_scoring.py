import functools
import json
import logging
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_adaptive_decoding.rewards.code_rewards import extract_code
from hf_adaptive_decoding.rewards.scoring import (
    RewardFunctionError,
    completion_text,
    compute_rewards,
    reward_function_name,
    score_completions,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("completion", "text"),
    [
        ("plain \\boxed{1}", "plain \\boxed{1}"),
        ("", ""),
        ([{"role": "assistant", "content": "a"}], "a"),
        ([{"content": "no role: an assistant turn"}], "no role: an assistant turn"),
        # The last assistant message, not the last message.
        ([{"role": "assistant", "content": "first"}, {"role": "user", "content": "u"}], "first"),
        ([{"role": "assistant", "content": "1"}, {"role": "assistant", "content": "2"}], "2"),
        # Multimodal content: the text parts, joined; other parts are skipped.
        (
            [{"role": "assistant", "content": [{"type": "text", "text": "x = "}, {"type": "image"}, {"text": "3"}]}],
            "x = 3",
        ),
        ([{"role": "assistant", "content": None}], ""),
        ([{"role": "user", "content": "no reply"}], ""),
        ((({"role": "assistant", "content": "tuple"}),), "tuple"),
    ],
)
def test_completion_text(completion, text):
    assert completion_text(completion) == text


@pytest.mark.parametrize("completion", [42, None, [], ["text"], {"content": "x"}, [{"content": "x"}, "y"]])
def test_completion_text_rejects_what_is_no_completion(completion):
    with pytest.raises(TypeError, match="a string or a non-empty list of messages"):
        completion_text(completion)


def test_math_and_code_rewards_read_completions_alike():
    """Both rewards read a conversation through `completion_text`: the code comes from the assistant's reply even
    when a later message (here a tool's) has code too."""
    messages = [
        {"role": "assistant", "content": "```python\nprint(1)\n```"},
        {"role": "tool", "content": "```python\nprint(2)\n```"},
    ]
    assert extract_code(messages) == "print(1)\n"


def test_reward_function_name():
    def exact(completions, **kwargs):
        return [0.0] * len(completions)

    class Scorer:
        def __call__(self, completions, **kwargs):
            return [0.0] * len(completions)

    assert reward_function_name(exact) == "exact"
    assert reward_function_name(Scorer()) == "Scorer"
    assert reward_function_name(functools.partial(functools.partial(exact), completions=[])) == "exact"
    assert reward_function_name(lambda completions, **kwargs: completions) == "<lambda>"


def test_score_completions_follows_the_prompt_format():
    """A conversational row's completion reaches the reward as an assistant message, a standard row's as text; the
    rows' other columns become keyword arguments, `prompt` and `completion` excepted."""
    seen = {}

    def spy(prompts, completions, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, **kwargs)
        return [float(completion_text(c) == a) for c, a in zip(completions, answer, strict=True)]

    chat = [{"role": "user", "content": "1+1?"}]
    rows = [
        {"prompt": "1+1?", "answer": "2", "completion": "reference"},
        {"prompt": chat, "answer": "2", "completion": "reference"},
    ]
    rewards, per_func = score_completions([spy], rows, ["2", "3"], timeout=None)
    assert seen == {
        "prompts": ["1+1?", chat],
        "completions": ["2", [{"role": "assistant", "content": "3"}]],
        "answer": ["2", "2"],
    }
    assert rewards.tolist() == [1.0, 0.0] and per_func.tolist() == [[1.0], [0.0]]


def test_rewards_modules_import_neither_torch_nor_transformers():
    """The rewards room and the metrics, loaded without the package's `__init__` (which imports both)."""
    script = f"""
import json, sys, types
package = types.ModuleType("hf_adaptive_decoding")
package.__path__ = [{str(ROOT / "hf_adaptive_decoding")!r}]
sys.modules["hf_adaptive_decoding"] = package
import hf_adaptive_decoding.rewards.scoring, hf_adaptive_decoding.rewards.math_rewards
import hf_adaptive_decoding.rewards.code_rewards, hf_adaptive_decoding.evaluation.metrics
print(json.dumps(sorted(name for name in ("torch", "transformers", "numpy") if name in sys.modules)))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(run.stdout) == []


def constant(value):
    def reward(completions, **kwargs):
        return [value] * len(completions)

    reward.__name__ = f"constant_{value}"
    return reward


def test_compute_rewards_passes_trl_arguments():
    seen = {}

    def spy(prompts, completions, answer, level, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, level=level, **kwargs)
        return [float(level) for level in level]

    prompts, completions = ["p0", "p1"], ["c0", "c1"]
    columns = {"answer": ["1", "2"], "level": [3, 4]}
    rewards, per_func = compute_rewards([spy], prompts, completions, columns)
    assert seen == {"prompts": prompts, "completions": completions, "answer": ["1", "2"], "level": [3, 4]}
    assert rewards.tolist() == [3.0, 4.0]
    assert per_func.dtype == torch.float32 and per_func.shape == (2, 1)


def test_compute_rewards_none_and_weights(caplog):
    def first(completions, **kwargs):
        return [1.0, None, None]

    def second(completions, **kwargs):
        return [0.5, 2, None]

    with caplog.at_level(logging.WARNING, logger="hf_adaptive_decoding.rewards.scoring"):
        rewards, per_func = compute_rewards(
            [first, second], ["p"] * 3, ["c"] * 3, {}, reward_weights=[2.0, 1.0], timeout=None
        )
    assert rewards.tolist() == [2.5, 2.0, 0.0]
    assert torch.isnan(per_func).tolist() == [[False, False], [True, False], [True, True]]
    assert per_func[0].tolist() == [1.0, 0.5]
    assert caplog.text.count("Every reward function returned None") == 1 and "[2]" in caplog.text
    with pytest.raises(ValueError, match="reward_weights has 1 values for 2 reward functions"):
        compute_rewards([first, second], ["p"] * 3, ["c"] * 3, {}, reward_weights=[1.0])


def test_raising_reward_function_is_named():
    def broken(completions, **kwargs):
        raise KeyError("missing column")

    with pytest.raises(RewardFunctionError, match="'broken' raised KeyError") as info:
        compute_rewards([constant(1.0), broken], ["p"], ["c"], {})
    assert isinstance(info.value.__cause__, KeyError)

    class Scorer:
        def __call__(self, completions, **kwargs):
            raise ValueError("bad")

    with pytest.raises(RewardFunctionError, match="'Scorer' raised ValueError: bad"):
        compute_rewards([Scorer()], ["p"], ["c"], {}, timeout=None)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([1.0], "'bad' returned 1 rewards; expected 2"),
        ([1.0, 2.0, 3.0], "'bad' returned 3 rewards; expected 2"),
        (1.0, "'bad' returned float, not a list"),
        ("10", "'bad' returned str, not a list"),
        ([1.0, "1"], "'bad' returned '1' for sample 1"),
        ([math.nan, 1.0], "'bad' returned nan for sample 0"),
        ([1.0, math.inf], "'bad' returned inf for sample 1"),
    ],
)
def test_malformed_rewards_are_rejected(returned, message):
    def bad(completions, **kwargs):
        return returned

    with pytest.raises(RewardFunctionError, match=message):
        compute_rewards([bad], ["p", "p"], ["c", "c"], {})


def test_tensor_and_array_rewards_are_accepted():
    def as_tensor(completions, **kwargs):
        return torch.tensor([1.0, 0.0])

    def as_array(completions, **kwargs):
        return np.array([0.25, 1])

    rewards, _ = compute_rewards([as_tensor, as_array], ["p", "p"], ["c", "c"], {})
    assert rewards.tolist() == [1.25, 1.0]


def test_hanging_reward_function_times_out(caplog):
    release = threading.Event()

    def stuck(completions, **kwargs):
        release.wait()
        return [1.0] * len(completions)

    start = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="hf_adaptive_decoding.rewards.scoring"):
            rewards, per_func = compute_rewards(
                [stuck, constant(1.0)], ["p"] * 2, ["c"] * 2, {}, timeout=0.5, failure_reward=-1.0
            )
    finally:
        release.set()
    assert time.monotonic() - start < 5
    assert per_func.tolist() == [[-1.0, 1.0], [-1.0, 1.0]]
    assert rewards.tolist() == [0.0, 0.0]
    assert "'stuck' did not return within 0.5s" in caplog.text


def test_column_length_mismatch():
    with pytest.raises(ValueError, match="'answer' has 1 values for 2 completions"):
        compute_rewards([constant(1.0)], ["p", "p"], ["c", "c"], {"answer": ["1"]})
