"""Code rewards: generated programs run in the [`Sandbox`] against HumanEval-style or CodeContests-style tests."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Sequence

from .sandbox import ExecutionResult, Sandbox, SandboxConfig
from .scoring import completion_text

_PYTHON_TAGS = ("", "python", "python3", "py", "py3")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """`(tag, code)` of each fenced block, in one pass over the lines: a fence opens at ```` ``` ```` anywhere on a
    line (its tag is the first word after it) and closes at a line that starts or ends with ```` ``` ````; an
    unclosed last block runs to the end."""
    blocks, tag, lines = [], None, []
    for line in text.split("\n"):
        if tag is None:
            start = line.find("```")
            if start != -1:
                words = line[start + 3 :].split()
                tag, lines = (words[0].lower() if words else ""), []
            continue
        stripped = line.strip()
        if stripped.startswith("```") or stripped.endswith("```"):
            if not stripped.startswith("```"):
                lines.append(line[: line.rfind("```")])
            blocks.append((tag, "\n".join(lines) + "\n"))
            tag = None
        else:
            lines.append(line)
    if tag is not None:
        blocks.append((tag, "\n".join(lines)))
    return blocks


@functools.lru_cache(maxsize=4096)
def complete_stub(code_prompt: str) -> str:
    """The prompt as code that compiles on its own: as is (a signature with a docstring), with `pass` added (a bare
    signature, as in MBPP-style prompts), or nothing when neither compiles. Compiling runs nothing."""
    for candidate in (code_prompt, code_prompt.rstrip("\n") + "\n    pass\n"):
        try:
            compile(candidate, "prompt.py", "exec")
            return candidate
        except (SyntaxError, ValueError):
            continue
    return ""


def extract_code(completion, code_prompt: str | None = None, entry_point: str | None = None) -> str:
    """
    The program a completion stands for, the way users expect.

    - Fenced blocks (```` ```python ````, ```` ```py ```` or untagged; an unclosed last fence runs to the end, as in
      a completion cut by its token budget): the block that defines `entry_point` when one is given, else the
      longest Python block.
    - No fence: the raw completion.

    HumanEval style (`code_prompt` given): code that does not define `entry_point` continues the prompt's body, so
    the program is `code_prompt + code`; code that does define it follows the prompt (whose imports and helpers it
    may use) and replaces the prompt's stub.

    Args:
        completion (`str` or `list[dict]`): the completion, or TRL's conversational form (its last assistant
            message is read, see [`~rewards.scoring.completion_text`]).
        code_prompt (`str`, *optional*): the function signature and docstring the model was asked to complete.
        entry_point (`str`, *optional*): the function's name.
    """
    text = completion_text(completion)
    blocks = [body for tag, body in _fenced_blocks(text) if tag in _PYTHON_TAGS]
    defines = (
        re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE) if entry_point else None
    )
    if blocks:
        defining = [block for block in blocks if defines and defines.search(block)]
        code = defining[0] if defining else max(blocks, key=len)
    else:
        code = text
    if code_prompt is None:
        return code
    if defines is not None and defines.search(code):
        return f"{complete_stub(code_prompt)}\n{code}"
    return code_prompt + code


def _function_passed(result: ExecutionResult) -> bool:
    return result.status == "ok" and result.report.get("passed") is True


def _stdio_passed(result: ExecutionResult, expected: Sequence[str]) -> bool:
    """Every test ran and matched, by the judge's verdicts (it compares each whole output with its expected one; the
    report carries only the first characters of each output)."""
    if result.status != "ok" or not isinstance(result.report, dict):
        return False
    matched = result.report.get("matched")
    if not isinstance(matched, list) or len(matched) != len(expected):
        return False
    return all(verdict is True for verdict in matched)


def make_code_reward(config: SandboxConfig | None = None, sandbox: Sandbox | None = None) -> Callable[..., list]:
    """
    A code reward with its own [`Sandbox`] (or the one given): TRL's signature,
    `reward(prompts, completions, **dataset_columns) -> list[float | None]`, 1.0 when every test passes, else 0.0.

    Each row is judged by the columns it has:

    - HumanEval style: `test` (defining `check(candidate)`), `entry_point`, and `code_prompt` (or a `prompts` entry
      that is the code itself). The generated function runs in its own process and answers `check`'s calls with
      plain values only; `check` runs in another process, so the program can neither fake a pass nor tamper with
      the test.
    - CodeContests style: `test_inputs` and `test_outputs` (lists of str), optional `time_limit` (seconds, or
      `{"seconds": 2, "nanos": 0}`; any other value gets `config.test_timeout` with a warning). The whole program
      runs once per input; every output line must match in full (trailing whitespace aside).
    - Neither: `None` (the reward does not apply to the row, as in TRL).

    Executions run in parallel across `config.num_workers` workers.
    """
    sandbox = sandbox or Sandbox(config)

    def code_reward(prompts: list, completions: list, **columns) -> list[float | None]:
        n = len(completions)

        def column(name: str) -> list:
            values = columns.get(name)
            return list(values) if values is not None else [None] * n

        tests, entry_points, code_prompts = column("test"), column("entry_point"), column("code_prompt")
        inputs, outputs, time_limits = column("test_inputs"), column("test_outputs"), column("time_limit")
        jobs, checks = [], []
        for i in range(n):
            if tests[i] is not None and entry_points[i] is not None:
                code_prompt = code_prompts[i] if code_prompts[i] is not None else prompts[i]
                if not isinstance(code_prompt, str):
                    raise ValueError(
                        f"row {i}: HumanEval-style rows need a `code_prompt` column (the function's signature and "
                        "docstring) when prompts are conversational."
                    )
                program = extract_code(completions[i], code_prompt, entry_points[i])
                job = {
                    "mode": "function",
                    "program": program,
                    "setup": complete_stub(code_prompt),
                    "test": tests[i],
                    "entry_point": entry_points[i],
                }
                checks.append(_function_passed)
            elif inputs[i] is not None and outputs[i] is not None:
                if len(inputs[i]) != len(outputs[i]) or not inputs[i]:
                    raise ValueError(
                        f"row {i}: test_inputs and test_outputs must be non-empty and of one length, got "
                        f"{len(inputs[i])} and {len(outputs[i])}."
                    )
                expected = list(outputs[i])
                job = {
                    "mode": "stdio",
                    "program": extract_code(completions[i]),
                    "inputs": list(inputs[i]),
                    "expected": expected,
                    "time_limit": time_limits[i],
                }
                checks.append(lambda result, expected=expected: _stdio_passed(result, expected))
            else:
                jobs.append(None)
                checks.append(None)
                continue
            jobs.append(job)
        runnable = [job for job in jobs if job is not None]
        results = iter(sandbox.run_many(runnable)) if runnable else iter(())
        return [None if job is None else float(check(next(results))) for job, check in zip(jobs, checks, strict=True)]

    code_reward.sandbox = sandbox
    return code_reward


_default_reward = None
_default_lock = threading.Lock()


def code_reward(prompts: list, completions: list, **columns) -> list[float | None]:
    """[`make_code_reward`] with the default [`SandboxConfig`], created on first use."""
    global _default_reward
    with _default_lock:
        if _default_reward is None:
            _default_reward = make_code_reward()
    return _default_reward(prompts, completions, **columns)
