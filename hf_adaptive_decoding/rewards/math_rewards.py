"""The math reward: a completion's final answer checked against the gold one by math-verify, in a worker process that
is killed when a check takes too long."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

# The worker executes this file in a fresh interpreter instead of importing the package: `import hf_adaptive_decoding`
# costs torch and transformers (seconds and ~400 MB per worker) where math-verify alone takes ~0.5 s and ~60 MB. This
# is also why nothing of the package is imported at the top of this file.
_WORKER_BOOTSTRAP = "import runpy, sys; runpy.run_path(sys.argv[1])['_serve'](sys.argv[2], int(sys.argv[3]))"
_WORKER_START_TIMEOUT = 120.0
_READY = "ready"
_DEAD = object()
_TIMED_OUT = object()


def _math_verify_score(gold: str, prediction: str) -> float | None:
    """1.0 if math-verify finds `prediction`'s final answer equal to `gold`, 0.0 if not, `None` if `gold` has none."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    # A bare gold answer ("1,234", "50%", "(1,2)") is read whole as LaTeX; a worked solution by its \boxed{} answer.
    boxed_gold = gold if "\\boxed" in gold or "\\fbox" in gold else f"\\boxed{{{gold}}}"
    gold_parsed = parse(boxed_gold, configs, parsing_timeout=None)
    if not gold_parsed:
        return None
    prediction_parsed = parse(prediction, configs, parsing_timeout=None)
    return float(verify(gold_parsed, prediction_parsed, timeout_seconds=None))


def _serve(worker_fn: str, parent_pid: int) -> None:
    """Worker loop: read JSON lists of `[gold, prediction]` pairs from stdin, write one JSON line per pair."""
    import signal

    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it kills this process on exit
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings: the parent owns the limit

    def exit_when_orphaned() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=exit_when_orphaned, daemon=True).start()
    if worker_fn:
        module, _, name = worker_fn.partition(":")
        score = getattr(importlib.import_module(module), name)
    else:
        score = _math_verify_score
        score("1", "1")  # imports and warms up math-verify before the first sample's clock starts

    def send(reply: Any) -> None:
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()

    send(_READY)
    for line in sys.stdin:
        for gold, prediction in json.loads(line):
            try:
                result = score(gold, prediction)
                send(None if result is None else float(result))
            except Exception as error:
                send(f"{type(error).__name__}: {error}")


def _pump(stream: Any, replies: queue.Queue) -> None:
    with stream:
        for line in stream:
            replies.put(json.loads(line))
    replies.put(_DEAD)


def _kill(process: subprocess.Popen, owner_pid: int) -> None:
    if os.getpid() != owner_pid:  # a forked copy of the owner must not kill the owner's worker
        return
    process.kill()
    process.wait()
    with contextlib.suppress(OSError):
        process.stdin.close()


class _Worker:
    """One verification process: JSON lines over pipes, replies collected by a reader thread."""

    def __init__(self, worker_fn: str | None):
        self.owner_pid = os.getpid()
        args = [sys.executable, "-c", _WORKER_BOOTSTRAP, os.path.abspath(__file__), worker_fn or "", str(os.getpid())]
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(self.process.stdout, self.replies), daemon=True).start()
        self.close = weakref.finalize(self, _kill, self.process, self.owner_pid)
        if self.receive(_WORKER_START_TIMEOUT) != _READY:
            self.close()
            raise RuntimeError(
                "The math verification worker did not start (its error, if any, is printed above). `math_reward` "
                "needs math-verify: pip install 'hf_adaptive_decoding[math]'."
            )

    def alive(self) -> bool:
        return self.owner_pid == os.getpid() and self.process.poll() is None

    def send(self, pairs: list[list[str]]) -> bool:
        try:
            self.process.stdin.write(json.dumps(pairs) + "\n")
            self.process.stdin.flush()
            return True
        except OSError:
            return False

    def receive(self, timeout: float | None) -> Any:
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            return _TIMED_OUT


class MathVerifier:
    """
    Scores predictions against gold answers with math-verify in a separate process that can be killed.

    math-verify bounds its own work with `signal.alarm`, which only works in the main thread, and some inputs make
    sympy run forever. Here math-verify's timeouts are off and the wall-time limit is enforced from outside: when a
    sample takes longer than `timeout` seconds, the worker process is killed (SIGKILL) and restarted, the sample
    scores `failure_reward` with a warning naming it, and the rest of the batch goes on. Safe to call from any
    thread (calls are serialised). The worker starts on first use, holds about 60 MB while idle, and is killed when
    the verifier is closed, garbage collected, or at interpreter exit.

    Args:
        timeout (`float`, *optional*, defaults to 5.0):
            Seconds each sample may take; `None` for no limit.
        failure_reward (`float`, *optional*, defaults to 0.0):
            The score of a sample that timed out or whose check raised.
        worker_fn (`str`, *optional*):
            Import path `"module:function"` of a `fn(gold: str, prediction: str) -> float | None` to run in the worker
            instead of math-verify (the module must be importable by a fresh interpreter with the same environment).
    """

    def __init__(self, timeout: float | None = 5.0, failure_reward: float = 0.0, worker_fn: str | None = None):
        self.timeout = timeout
        self.failure_reward = failure_reward
        self.worker_fn = worker_fn
        self._worker: _Worker | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "failure_reward": self.failure_reward, "worker_fn": self.worker_fn}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Kill the worker process, if any; the next call starts a new one."""
        with self._lock:
            self._discard_worker()

    def _discard_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def score(self, golds: Sequence[str], predictions: Sequence[str]) -> list[float | None]:
        """
        Score each prediction against its gold answer.

        Args:
            golds (`Sequence[str]`):
                Gold answers: a bare answer (`"42"`, `"\\frac{1}{2}"`, `"1,234"`, `"50%"`) or a worked solution whose
                answer is in `\\boxed{}`.
            predictions (`Sequence[str]`):
                Model outputs; their final answer is the first `\\boxed{}` one, else a LaTeX or plain expression.

        Returns:
            `list[float | None]`: 1.0 (match) or 0.0 per sample, `None` where the gold answer cannot be parsed, and
            `failure_reward` where verification timed out or failed.
        """
        if len(golds) != len(predictions):
            raise ValueError(f"Got {len(golds)} gold answers for {len(predictions)} predictions.")
        with self._lock:
            try:
                return self._score_locked(golds, predictions)
            except BaseException:
                self._discard_worker()  # replies still in flight would be read by the next call
                raise

    def _score_locked(self, golds: Sequence[str], predictions: Sequence[str]) -> list[float | None]:
        results: list[float | None] = [self.failure_reward] * len(golds)
        pending = list(range(len(golds)))
        while pending:
            if self._worker is None or not self._worker.alive():
                self._worker = _Worker(self.worker_fn)
            if not self._worker.send([[golds[i], predictions[i]] for i in pending]):
                self._discard_worker()
                continue
            for position, index in enumerate(pending):
                reply = self._worker.receive(self.timeout)
                if reply is _TIMED_OUT or reply is _DEAD:
                    self._discard_worker()
                    what = f"took longer than {self.timeout}s" if reply is _TIMED_OUT else "crashed its worker"
                    logger.warning(
                        "Math verification of sample %d %s; its worker was killed and replaced; it scores %s.",
                        index,
                        what,
                        self.failure_reward,
                    )
                    pending = pending[position + 1 :]
                    break
                if isinstance(reply, str):
                    logger.warning(
                        "Math verification of sample %d failed (%s); it scores %s.",
                        index,
                        reply,
                        self.failure_reward,
                    )
                    reply = self.failure_reward
                results[index] = reply
            else:
                pending = []
        return results


class _MathReward:
    """
    TRL-style reward: 1.0 if a completion's final answer equals the gold `answer` (checked with math-verify),
    else 0.0; `None` where the gold answer is missing, empty or unparseable (the sample is not scored).

    Args:
        prompts (`list`):
            Unused; part of the TRL reward-function signature.
        completions (`list[str]` or `list[list[dict]]`):
            Completions as text, or in TRL's conversational form (the last assistant message is scored).
        answer (`Sequence[str | None]`):
            The dataset's gold answer column: a bare answer or a worked solution with a `\\boxed{}` answer.
        kwargs:
            Other dataset columns; ignored.

    Returns:
        `list[float | None]`: One reward per completion; samples whose verification exceeds the time limit get
        the verifier's `failure_reward`.
    """

    # A callable class rather than a closure so that the reward function can be pickled (e.g. to a spawned process).
    __name__ = "math_reward"

    def __init__(self, verifier: MathVerifier):
        self.verifier = verifier

    def __call__(self, prompts: list, completions: list, answer: Sequence[Any], **kwargs: Any) -> list[float | None]:
        if len(answer) != len(completions):
            raise ValueError(f"math_reward got {len(answer)} answers for {len(completions)} completions.")
        from .scoring import completion_text  # here, not at the top: the worker runs this file without the package

        golds = [None if gold is None else str(gold).strip() for gold in answer]
        scored = [i for i, gold in enumerate(golds) if gold]
        rewards: list[float | None] = [None] * len(completions)
        texts = [completion_text(completions[i]) for i in scored]
        for i, reward in zip(scored, self.verifier.score([golds[i] for i in scored], texts), strict=True):
            rewards[i] = reward
        return rewards


def make_math_reward(timeout: float | None = 5.0, failure_reward: float = 0.0) -> Callable[..., list[float | None]]:
    """
    A `math_reward` with its own verification worker and time limit.

    Args:
        timeout (`float`, *optional*, defaults to 5.0):
            Seconds the verification of each sample may take before its worker is killed; `None` for no limit.
        failure_reward (`float`, *optional*, defaults to 0.0):
            The reward of a sample whose verification timed out.

    Returns:
        `Callable`: A TRL-style reward function `f(prompts, completions, answer, **kwargs)` named `math_reward`.
    """
    return _MathReward(MathVerifier(timeout=timeout, failure_reward=failure_reward))


math_reward = make_math_reward()
