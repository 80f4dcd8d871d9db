"""How any TRL-style reward function is called and read: completions as text, reward-function names, and the guarded
call that checks and combines their rewards. torch is imported only by [`compute_rewards`], on first use."""

from __future__ import annotations

import functools
import logging
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_TIMED_OUT = object()


class RewardFunctionError(RuntimeError):
    """Raised when a reward function fails or returns something that is not one reward per sample."""


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """
    The text a reward scores, from a completion in either of TRL's formats.

    - Standard (a string): the string itself.
    - Conversational (a list of messages): the content of the last assistant message (a message without a `role`
      counts as one); a multimodal content (a list of typed parts) gives its text parts joined; no assistant
      message, or an empty content, gives `""`.

    Args:
        completion (`str` or `list[dict]`): the completion.

    Returns:
        `str`: the completion's text.

    Raises:
        `TypeError`: when the completion is neither a string nor a non-empty list of messages (dicts).
    """
    if isinstance(completion, str):
        return completion
    if (
        not isinstance(completion, (list, tuple))
        or not completion
        or not all(isinstance(message, dict) for message in completion)
    ):
        shown = repr(completion)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise TypeError(f"A completion must be a string or a non-empty list of messages (dicts), got {shown}.")
    replies = [message for message in completion if message.get("role", "assistant") == "assistant"]
    content = replies[-1].get("content") if replies else None
    if isinstance(content, list):  # multimodal message: a list of typed parts
        content = "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def reward_function_name(func: Callable) -> str:
    """
    The name a reward function is logged, reported and cached under: its `__name__`; for a `functools.partial`, the
    name of the function it wraps; else its class name (a callable object).
    """
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)


def _call(func: Callable, kwargs: dict[str, Any], timeout: float | None) -> Any:
    if timeout is None:
        return func(**kwargs)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = func(**kwargs)
        except BaseException as error:
            outcome["error"] = error

    # A daemon thread rather than a thread pool, whose workers the interpreter joins at exit: a hung reward
    # function must not keep the process from exiting.
    thread = threading.Thread(target=run, name=f"reward-{reward_function_name(func)}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return _TIMED_OUT
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _check_rewards(values: Any, name: str, num_samples: int) -> list[float]:
    if hasattr(values, "tolist"):  # numpy arrays and tensors
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardFunctionError(f"Reward function {name!r} returned {type(values).__name__}, not a list of rewards.")
    if len(values) != num_samples:
        raise RewardFunctionError(
            f"Reward function {name!r} returned {len(values)} rewards; expected {num_samples}, one per completion."
        )
    for index, value in enumerate(values):
        if value is not None and not (isinstance(value, numbers.Real) and math.isfinite(value)):
            raise RewardFunctionError(
                f"Reward function {name!r} returned {value!r} for sample {index}; rewards must be finite real numbers "
                "or None (not applicable)."
            )
    return [math.nan if value is None else float(value) for value in values]


def compute_rewards(
    reward_funcs: Sequence[Callable],
    prompts: list,
    completions: list,
    columns: dict[str, list],
    reward_weights: Sequence[float] | None = None,
    timeout: float | None = 60.0,
    failure_reward: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Call each reward function as TRL does, `func(prompts=prompts, completions=completions, **columns)`, check what
    it returns, and combine the rewards.

    A function that raises, or returns anything but one finite real number or `None` per completion, stops training
    with a [`RewardFunctionError`] naming it. A call that does not return within `timeout` seconds gives all of its
    samples `failure_reward`, with a warning, and training goes on. The call runs in a daemon thread; a Python
    function cannot be killed from another thread, so a hung function keeps running in the background (and holding
    whatever it holds) until it returns or the process exits. [`math_reward`] is safe from this: it enforces hard
    per-sample limits in a separate process that it kills.

    Args:
        reward_funcs (`Sequence[Callable]`):
            TRL-style reward functions, each returning a list with one `float` or `None` (not applicable) per sample.
        prompts (`list`):
            The prompts, one per completion.
        completions (`list`):
            The completions, as text or in TRL's conversational form.
        columns (`dict[str, list]`):
            Other dataset columns, one value per completion; passed as keyword arguments.
        reward_weights (`Sequence[float]`, *optional*):
            One weight per function; all 1.0 by default.
        timeout (`float`, *optional*, defaults to 60.0):
            Seconds each function call may take; `None` for no limit.
        failure_reward (`float`, *optional*, defaults to 0.0):
            The reward of every sample of a call that timed out.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `rewards` of shape `(N,)`, the weighted sum over functions ignoring
        `None`s (0.0 where every function returned `None`), and `rewards_per_func`, float32 of shape
        `(N, num_funcs)` with NaN where a function returned `None`.
    """
    import torch

    num_samples, num_funcs = len(completions), len(reward_funcs)
    if num_funcs == 0:
        raise ValueError("compute_rewards needs at least one reward function.")
    if reward_weights is not None and len(reward_weights) != num_funcs:
        raise ValueError(f"reward_weights has {len(reward_weights)} values for {num_funcs} reward functions.")
    for key, values in {"prompts": prompts, **columns}.items():
        if len(values) != num_samples:
            raise ValueError(f"{key!r} has {len(values)} values for {num_samples} completions.")
    weights = torch.tensor([1.0] * num_funcs if reward_weights is None else list(reward_weights), dtype=torch.float32)
    rewards_per_func = torch.full((num_samples, num_funcs), math.nan, dtype=torch.float32)
    kwargs = {"prompts": prompts, "completions": completions, **columns}
    for column, func in enumerate(reward_funcs):
        name = reward_function_name(func)
        try:
            values = _call(func, kwargs, timeout)
        except Exception as error:
            raise RewardFunctionError(f"Reward function {name!r} raised {type(error).__name__}: {error}") from error
        if values is _TIMED_OUT:
            logger.warning(
                "Reward function %r did not return within %ss; its %d samples get reward %s. It may keep running in "
                "a background thread.",
                name,
                timeout,
                num_samples,
                failure_reward,
            )
            values = [failure_reward] * num_samples
        else:
            values = _check_rewards(values, name, num_samples)
        rewards_per_func[:, column] = torch.tensor(values, dtype=torch.float32)
    unscored = rewards_per_func.isnan().all(dim=1).nonzero().flatten().tolist()
    if unscored:
        logger.warning(
            "Every reward function returned None for sample(s) %s%s; they get reward 0.0.",
            unscored[:16],
            "..." if len(unscored) > 16 else "",
        )
    return (rewards_per_func * weights).nansum(dim=1), rewards_per_func


def score_completions(
    reward_funcs: Sequence[Callable],
    rows: list[dict[str, Any]],
    completions: list[str],
    reward_weights: Sequence[float] | None = None,
    timeout: float | None = 60.0,
    failure_reward: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    [`compute_rewards`] for dataset rows and their generated text: the rows' other columns become keyword arguments,
    and a row whose prompt is a conversation gets its completion as an assistant message (TRL's convention); a row
    whose prompt is a string gets it as a string.
    """
    columns = {key: [row[key] for row in rows] for key in rows[0] if key not in ("prompt", "completion")}
    completions = [
        completion if isinstance(row["prompt"], str) else [{"role": "assistant", "content": completion}]
        for row, completion in zip(rows, completions, strict=True)
    ]
    return compute_rewards(
        reward_funcs,
        prompts=[row["prompt"] for row in rows],
        completions=completions,
        columns=columns,
        reward_weights=reward_weights,
        timeout=timeout,
        failure_reward=failure_reward,
    )
