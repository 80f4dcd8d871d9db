import logging
import os
import pickle
import threading
import time

import pytest

from hf_adaptive_decoding.rewards.math_rewards import MathVerifier, _Worker, make_math_reward, math_reward
from hf_adaptive_decoding.rewards.scoring import compute_rewards

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


def test_compute_rewards_with_math_reward():
    def half(completions, **kwargs):
        return [0.5] * len(completions)

    completions = [[{"role": "assistant", "content": "\\boxed{4}"}], [{"role": "assistant", "content": "5"}]]
    rewards, per_func = compute_rewards([math_reward, half], ["2+2?", "2+2?"], completions, {"answer": ["4", "4"]})
    assert per_func.tolist() == [[1.0, 0.5], [0.0, 0.5]]
    assert rewards.tolist() == [1.5, 0.5]
