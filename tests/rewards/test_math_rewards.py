import logging
import math
import os
import pickle
import threading
import time

import numpy as np
import pytest
import torch

from hf_adaptive_decoding.rewards.math_rewards import (
    MathVerifier,
    RewardFunctionError,
    _Worker,
    compute_rewards,
    make_math_reward,
    math_reward,
)

pytest.importorskip("math_verify")

# (gold, completion, reward)
MATH_CASES = [
    ("42", "So the answer is \\boxed{42}.", 1.0),
    ("42", "So the answer is \\boxed{41}.", 0.0),
    ("42", "First I got 41, then fixed it: \\boxed{42}", 1.0),
    ("42", "\\boxed{41} although some say 42", 0.0),
    ("1,234", "The total is \\boxed{1234}.", 1.0),
    ("1234", "The total is 1,234.", 1.0),
    ("1,234", "The total is \\boxed{1,235}.", 0.0),
    ("50%", "\\boxed{50}", 1.0),
    ("50", "It is \\boxed{50\\%}.", 1.0),
    ("50%", "\\boxed{0.5}", 1.0),
    ("50%", "\\boxed{60\\%}", 0.0),
    ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
    ("\\frac{1}{2}", "Half, i.e. 1/2", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\frac{2}{3}}", 0.0),
    ("0.5", "\\boxed{\\frac12}", 1.0),
    ("-3", "\\boxed{-3}", 1.0),
    ("-3", "\\boxed{3}", 0.0),
    ("-7", "The answer is -7", 1.0),
    ("A worked solution: $x = 3$, so the result is $\\boxed{\\frac{3}{4}}$.", "\\boxed{0.75}", 1.0),
    ("A worked solution ending in $\\boxed{7}$.", "\\boxed{3}", 0.0),
    ("(1,2)", "\\boxed{(1, 2)}", 1.0),
    ("42", "I don't know.", 0.0),
    ("42", "", 0.0),
    (42, "\\boxed{42}", 1.0),
]


@pytest.mark.parametrize(("gold", "completion", "expected"), MATH_CASES)
def test_math_reward(gold, completion, expected):
    assert math_reward(prompts=["q"], completions=[completion], answer=[gold]) == [expected]


def test_math_reward_batch_missing_gold_and_conversational_completions():
    completions = [
        [{"role": "assistant", "content": "\\boxed{12}"}],
        [{"role": "user", "content": "\\boxed{5}"}, {"role": "assistant", "content": "I think \\boxed{6}"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{7}"}]}],
        "\\boxed{1}",
        "\\boxed{1}",
    ]
    rewards = math_reward(["q"] * 5, completions, ["12", "5", "7", None, "  "], extra_column=[0] * 5)
    assert rewards == [1.0, 0.0, 1.0, None, None]


def test_math_reward_parses_gold_as_gold():
    # math-verify compares a set with a relation only when the prediction is the set: the order matters.
    assert math_reward(["q"], ["$(-\\infty, 2)$"], ["x<2"]) == [1.0]
    assert math_reward(["q"], ["$x<2$"], ["(-\\infty, 2)"]) == [0.0]


def test_math_reward_from_a_thread_and_pickled():
    results = []
    thread = threading.Thread(target=lambda: results.append(math_reward(["q"], ["\\boxed{3}"], ["3"])))
    thread.start()
    thread.join(60)
    assert results == [[1.0]]
    assert math_reward.__name__ == "math_reward"
    custom = make_math_reward(timeout=2.0, failure_reward=-1.0)
    assert custom.__name__ == "math_reward"
    clone = pickle.loads(pickle.dumps(custom))
    try:
        assert clone.verifier.timeout == 2.0 and clone.verifier.failure_reward == -1.0
        assert clone(["q"], ["\\boxed{2}"], ["2"]) == [1.0]
    finally:
        clone.verifier.close()


HOOK = """
import os, sys, time

def score(gold, prediction):
    if prediction == "hang":
        time.sleep(30)
    if prediction == "crash":
        os._exit(1)
    if prediction == "raise":
        raise ValueError("boom")
    if prediction == "pid":
        return float(os.getpid())
    if prediction == "heavy imports":
        return float(any(name in sys.modules for name in ("torch", "transformers", "hf_adaptive_decoding")))
    return float(gold == prediction)
"""


@pytest.fixture
def hook_verifier(tmp_path, monkeypatch):
    (tmp_path / "reward_test_hook.py").write_text(HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    verifier = MathVerifier(timeout=1.0, failure_reward=-1.0, worker_fn="reward_test_hook:score")
    yield verifier
    verifier.close()


def assert_reaped(pid: int) -> None:
    # Raises ChildProcessError once the child has exited and been waited for: no process, no zombie.
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def worker_pid(verifier: MathVerifier) -> int:
    return int(verifier.score(["-"], ["pid"])[0])


def test_hanging_sample_is_killed_and_worker_restarted(hook_verifier, caplog):
    assert hook_verifier.score(["-"], ["heavy imports"]) == [0.0]  # the worker does not import the package
    first_pid = worker_pid(hook_verifier)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="hf_adaptive_decoding.rewards.math_rewards"):
        scores = hook_verifier.score(["a", "b", "c", "d"], ["a", "hang", "x", "d"])
    assert time.monotonic() - start < 15
    assert scores == [1.0, -1.0, 0.0, 1.0]
    assert "sample 1 took longer than 1.0s" in caplog.text
    assert_reaped(first_pid)
    second_pid = worker_pid(hook_verifier)
    assert second_pid != first_pid
    assert hook_verifier.score(["a", "b"], ["a", "c"]) == [1.0, 0.0]
    hook_verifier.close()
    assert_reaped(second_pid)


def test_hang_in_a_thread_crash_and_exception(hook_verifier, caplog):
    results = []
    thread = threading.Thread(target=lambda: results.append(hook_verifier.score(["a", "b"], ["hang", "b"])))
    start = time.monotonic()
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - start < 15
    assert results == [[-1.0, 1.0]]
    with caplog.at_level(logging.WARNING, logger="hf_adaptive_decoding.rewards.math_rewards"):
        assert hook_verifier.score(["a", "b", "c"], ["crash", "raise", "c"]) == [-1.0, -1.0, 1.0]
    assert "sample 0 crashed its worker" in caplog.text
    assert "sample 1 failed (ValueError: boom)" in caplog.text


def test_interrupted_call_does_not_leak_replies_into_the_next(hook_verifier, monkeypatch):
    assert hook_verifier.score(["a"], ["a"]) == [1.0]
    receive = _Worker.receive

    def interrupted(self, timeout):
        monkeypatch.setattr(_Worker, "receive", receive)
        raise KeyboardInterrupt

    monkeypatch.setattr(_Worker, "receive", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hook_verifier.score(["a", "b"], ["a", "b"])
    assert hook_verifier.score(["a", "b"], ["x", "b"]) == [0.0, 1.0]


def test_worker_that_cannot_start(tmp_path):
    with MathVerifier(worker_fn="no_such_module_here:score") as verifier:
        with pytest.raises(RuntimeError, match="did not start"):
            verifier.score(["a"], ["a"])


def test_no_time_limit(hook_verifier):
    hook_verifier.timeout = None
    assert hook_verifier.score(["a", "b"], ["a", "c"]) == [1.0, 0.0]


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

    with caplog.at_level(logging.WARNING, logger="hf_adaptive_decoding.rewards.math_rewards"):
        rewards, per_func = compute_rewards(
            [first, second], ["p"] * 3, ["c"] * 3, {}, reward_weights=[2.0, 1.0], timeout=None
        )
    assert rewards.tolist() == [2.5, 2.0, 0.0]
    assert torch.isnan(per_func).tolist() == [[False, False], [True, False], [True, True]]
    assert per_func[0].tolist() == [1.0, 0.5]
    assert caplog.text.count("Every reward function returned None") == 1 and "[2]" in caplog.text
    with pytest.raises(ValueError, match="reward_weights has 1 values for 2 reward functions"):
        compute_rewards([first, second], ["p"] * 3, ["c"] * 3, {}, reward_weights=[1.0])


def test_compute_rewards_with_math_reward():
    completions = [[{"role": "assistant", "content": "\\boxed{4}"}], [{"role": "assistant", "content": "5"}]]
    rewards, per_func = compute_rewards(
        [math_reward, constant(0.5)], ["2+2?", "2+2?"], completions, {"answer": ["4", "4"]}
    )
    assert per_func.tolist() == [[1.0, 0.5], [0.0, 0.5]]
    assert rewards.tolist() == [1.5, 0.5]


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
        with caplog.at_level(logging.WARNING, logger="hf_adaptive_decoding.rewards.math_rewards"):
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
