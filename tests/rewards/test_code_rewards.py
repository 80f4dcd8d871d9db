"""Code rewards: the program a completion stands for, how rows reach the sandbox, and the reward end to end."""

from __future__ import annotations

import pytest

from hf_adaptive_decoding.rewards.code_rewards import code_reward, extract_code, make_code_reward
from hf_adaptive_decoding.rewards.sandbox import ExecutionResult, SandboxConfig, bubblewrap_available

PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n"
DEFINITION = "def add(a, b):\n    return a + b\n"

# --- extract_code --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["python", "py", "python3", "py3", "Python", "", "python title='solution.py'"])
def test_fenced_python_block(tag):
    completion = f"Here is my solution:\n```{tag}\nprint(1)\n```\nIt prints 1."
    assert extract_code(completion) == "print(1)\n"


def test_untagged_fence_with_spaces():
    assert extract_code("```  \nx = 1\n```") == "x = 1\n"


def test_other_language_fences_are_ignored():
    completion = "Install it:\n```bash\npip install numpy\nexport A=1\n```\nThen:\n```python\nprint(2)\n```"
    assert extract_code(completion) == "print(2)\n"
    completion = "```cpp\nint main() { return 0; }\n```\n```sh\nls -la /some/long/path/to/make/it/long\n```"
    assert extract_code("Only C++:\n" + completion) == "Only C++:\n" + completion  # no Python block: the raw text


def test_longest_python_block_without_an_entry_point():
    completion = "```python\nx = 1\n```\ntext\n```python\ny = 2\nz = 3\n```"
    assert extract_code(completion) == "y = 2\nz = 3\n"


def test_block_defining_the_entry_point_beats_a_longer_usage_example():
    usage = "```python\n# Example usage, longer than the solution itself\nprint(add(1, 2))\nprint(add(3, 4))\n```"
    completion = f"```python\n{DEFINITION}```\nUse it like this:\n{usage}"
    assert extract_code(completion, entry_point="add") == DEFINITION
    completion = f"Usage first:\n{usage}\nthen the code:\n```python\n{DEFINITION}```"
    assert extract_code(completion, entry_point="add") == DEFINITION
    assert extract_code(completion, PROMPT, "add") == PROMPT + "\n" + DEFINITION


def test_entry_point_must_be_defined_by_its_own_name():
    helper = "```python\ndef add_one(x):\n    return x + 1\n\n\nprint(add_one(1))\n```"
    completion = f"{helper}\n```python\nasync def add(a, b):\n    return a + b\n```"
    assert extract_code(completion, entry_point="add") == "async def add(a, b):\n    return a + b\n"
    # `def add_one(` does not define `add`: the longest block then.
    assert extract_code(helper, entry_point="add").startswith("def add_one")


def test_unclosed_fence_runs_to_the_end():
    completion = "Sure!\n```python\ndef add(a, b):\n    return a + b"  # cut by the token budget
    assert extract_code(completion) == "def add(a, b):\n    return a + b"
    assert extract_code(completion, PROMPT, "add") == PROMPT + "\ndef add(a, b):\n    return a + b"


def test_unclosed_last_fence_after_a_closed_one():
    completion = "```python\nx = 1\n```\nNow the solution:\n```python\ndef add(a, b):\n    return a + b\n"
    assert extract_code(completion, entry_point="add") == DEFINITION


def test_raw_body_continues_the_prompt():
    assert extract_code("    return a + b\n", PROMPT, "add") == PROMPT + "    return a + b\n"


def test_fenced_body_continues_the_prompt():
    assert extract_code("```python\n    return a + b\n```", PROMPT, "add") == PROMPT + "    return a + b\n"


def test_full_function_without_fence_follows_the_prompt():
    assert extract_code(DEFINITION, PROMPT, "add") == PROMPT + "\n" + DEFINITION


def test_code_prompt_without_entry_point_is_continued():
    assert extract_code("    return 1\n", "def f():\n") == "def f():\n    return 1\n"


def test_conversational_completion():
    messages = [
        {"role": "user", "content": "```python\nprint('not this')\n```"},
        {"role": "assistant", "content": f"```python\n{DEFINITION}```"},
    ]
    assert extract_code(messages) == DEFINITION
    assert extract_code(messages, PROMPT, "add") == PROMPT + "\n" + DEFINITION
    assert extract_code([{"role": "assistant", "content": None}]) == ""


@pytest.mark.parametrize("completion", [42, None, [], ["text"], {"content": "x"}])
def test_invalid_completions_raise(completion):
    with pytest.raises(TypeError):
        extract_code(completion)


# --- routing rows, with a stub sandbox -----------------------------------------------------------------------------


class StubSandbox:
    """Records the jobs; a program containing "GOOD" passes."""

    def __init__(self) -> None:
        self.calls: list[list[dict]] = []

    def run_many(self, jobs: list[dict], timeout=None) -> list[ExecutionResult]:
        self.calls.append(jobs)
        results = []
        for job in jobs:
            good = "GOOD" in job["program"]
            if job["mode"] == "function":
                report = {"passed": good, "error": None}
            else:
                outputs = [want if good else "wrong" for want in job["expected"]]
                report = {"outputs": outputs, "errors": [None] * len(outputs), "matched": [good] * len(outputs)}
            results.append(ExecutionResult("ok", report, "", 0.0))
        return results


@pytest.fixture
def stub():
    sandbox = StubSandbox()
    return sandbox, make_code_reward(sandbox=sandbox)


def test_rows_with_neither_style_get_none(stub):
    sandbox, reward = stub
    assert reward(["a", "b"], ["x", "y"]) == [None, None]
    assert reward(["a"], ["x"], test=[None], entry_point=["f"], test_inputs=[["1"]], test_outputs=[None]) == [None]
    assert reward(["a"], ["x"], test=["def check(c): pass"], entry_point=[None]) == [None]
    assert sandbox.calls == []  # nothing to run: no sandbox call


def test_mixed_rows(stub):
    sandbox, reward = stub
    nothing = None
    scores = reward(
        [PROMPT, "Sum two ints.", "Chat.", PROMPT, "Sum two ints."],
        ["    return a + b  # GOOD\n", "print('GOOD')", "hello", "    return 0\n", "print(0)"],
        test=[TEST, nothing, nothing, TEST, nothing],
        entry_point=["add", nothing, nothing, "add", nothing],
        test_inputs=[nothing, ["1 2\n"], nothing, nothing, ["1 2\n", "3 4\n"]],
        test_outputs=[nothing, ["3\n"], nothing, nothing, ["3\n", "7\n"]],
        time_limit=[nothing, 2.5, nothing, nothing, nothing],
    )
    assert scores == [1.0, 1.0, None, 0.0, 0.0]
    (jobs,) = sandbox.calls
    assert [job["mode"] for job in jobs] == ["function", "stdio", "function", "stdio"]
    function, stdio = jobs[0], jobs[1]
    assert function == {
        "mode": "function",
        "program": PROMPT + "    return a + b  # GOOD\n",
        "setup": PROMPT,
        "test": TEST,
        "entry_point": "add",
    }
    assert stdio == {
        "mode": "stdio",
        "program": "print('GOOD')",
        "inputs": ["1 2\n"],
        "expected": ["3\n"],
        "time_limit": 2.5,
    }
    assert jobs[3]["time_limit"] is None


def test_function_style_wins_when_a_row_has_both(stub):
    sandbox, reward = stub
    reward([PROMPT], ["GOOD"], test=[TEST], entry_point=["add"], test_inputs=[["1"]], test_outputs=[["1"]])
    assert sandbox.calls[0][0]["mode"] == "function"


def test_code_prompt_column_beats_the_prompt(stub):
    sandbox, reward = stub
    chat = [{"role": "user", "content": "Complete add."}]
    completion = [{"role": "assistant", "content": f"```python\n{DEFINITION}```"}]
    reward([chat], [completion], test=[TEST], entry_point=["add"], code_prompt=[PROMPT])
    job = sandbox.calls[0][0]
    assert job["setup"] == PROMPT
    assert job["program"] == PROMPT + "\n" + DEFINITION


def test_conversational_prompt_without_code_prompt_raises(stub):
    _, reward = stub
    chat = [{"role": "user", "content": "Complete add."}]
    with pytest.raises(ValueError, match="code_prompt"):
        reward([chat], [DEFINITION], test=[TEST], entry_point=["add"])
    with pytest.raises(ValueError, match="code_prompt"):
        reward([chat], [DEFINITION], test=[TEST], entry_point=["add"], code_prompt=[None])


@pytest.mark.parametrize("inputs, outputs", [(["1", "2"], ["1"]), (["1"], ["1", "2"]), ([], [])])
def test_mismatched_or_empty_tests_raise(stub, inputs, outputs):
    _, reward = stub
    with pytest.raises(ValueError, match="test_inputs and test_outputs"):
        reward(["p"], ["print(1)"], test_inputs=[inputs], test_outputs=[outputs])


def test_columns_may_be_tuples(stub):
    _, reward = stub
    scores = reward(("p",), ("print('GOOD')",), test_inputs=(("1",),), test_outputs=(("1",),))
    assert scores == [1.0]


@pytest.mark.parametrize(
    "result",
    [
        ExecutionResult("timeout", None, "", 1.0),
        ExecutionResult("crashed", None, "", 1.0),
        ExecutionResult("output_limit", None, "", 1.0),
        ExecutionResult("ok", {"outputs": ["3\n"], "errors": [None]}, "", 1.0),  # stopped after the first test
        ExecutionResult("ok", {"outputs": ["3\n", None], "errors": [None, "timeout"]}, "", 1.0),
        ExecutionResult("ok", {"outputs": ["3\n", 7], "errors": []}, "", 1.0),
        ExecutionResult("ok", {"outputs": "3\n7\n", "errors": []}, "", 1.0),
        ExecutionResult("ok", {"passed": True}, "", 1.0),  # a function report for a stdio row
        ExecutionResult("ok", {}, "", 1.0),
        # The judge's verdicts decide: full outputs without them, or verdicts that are not all True, fail.
        ExecutionResult("ok", {"outputs": ["3\n", "7\n"], "errors": [None, None]}, "", 1.0),
        ExecutionResult("ok", {"outputs": ["3\n", "7\n"], "matched": [True]}, "", 1.0),
        ExecutionResult("ok", {"outputs": ["3\n", "7\n"], "matched": [True, 1]}, "", 1.0),
        ExecutionResult("ok", {"outputs": ["3\n", "7\n"], "matched": [True, False]}, "", 1.0),
        ExecutionResult("ok", {"outputs": ["3\n", "7\n"], "matched": "yes"}, "", 1.0),
    ],
    ids=lambda result: str(result.report),
)
def test_stdio_rows_fail_on_anything_but_every_output_matching(result):
    class Fixed:
        def run_many(self, jobs, timeout=None):
            return [result]

    reward = make_code_reward(sandbox=Fixed())
    assert reward(["p"], ["print(1)"], test_inputs=[["1 2\n", "3 4\n"]], test_outputs=[["3\n", "7\n"]]) == [0.0]


def test_stdio_rows_pass_on_the_judges_verdicts():
    """The report carries only the first characters of each output; the judge's verdicts decide."""

    class Fixed:
        def run_many(self, jobs, timeout=None):
            report = {"outputs": ["3", "7" * 1000], "errors": [None, None], "matched": [True, True]}
            return [ExecutionResult("ok", report, "", 1.0)]

    reward = make_code_reward(sandbox=Fixed())
    assert reward(["p"], ["print(1)"], test_inputs=[["1 2\n", "3 4\n"]], test_outputs=[["3\n", "7\n"]]) == [1.0]


@pytest.mark.parametrize(
    "result",
    [
        ExecutionResult("timeout", None, "", 1.0),
        ExecutionResult("ok", {"passed": "yes"}, "", 1.0),
        ExecutionResult("ok", {"passed": 1}, "", 1.0),
        ExecutionResult("ok", {"outputs": ["3\n"]}, "", 1.0),
        ExecutionResult("ok", {}, "", 1.0),
    ],
    ids=lambda result: str(result.report),
)
def test_function_rows_pass_only_on_passed_true(result):
    class Fixed:
        def run_many(self, jobs, timeout=None):
            return [result]

    reward = make_code_reward(sandbox=Fixed())
    assert reward([PROMPT], [DEFINITION], test=[TEST], entry_point=["add"]) == [0.0]


# --- end to end, in the sandbox ------------------------------------------------------------------------------------

needs_sandbox = pytest.mark.skipif(not bubblewrap_available(), reason="needs bubblewrap")


@pytest.fixture(scope="module")
def reward():
    reward = make_code_reward(SandboxConfig(timeout=5, test_timeout=2, memory_mb=256, num_workers=2))
    yield reward
    reward.sandbox.close()


@needs_sandbox
def test_mixed_batch_in_the_sandbox(reward):
    chat = [{"role": "user", "content": "Complete add."}]
    nothing = None
    scores = reward(
        [PROMPT, "Sum.", "Chat.", PROMPT, "Sum.", chat, "Sum."],
        [
            f"```python\n{DEFINITION}```",
            "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
            "hello",
            "    return a - b\n",
            "print(3)",
            [{"role": "assistant", "content": "    return b + a\n"}],
            [{"role": "assistant", "content": "print(sum(map(int, input().split())))"}],
        ],
        test=[TEST, nothing, nothing, TEST, nothing, TEST, nothing],
        entry_point=["add", nothing, nothing, "add", nothing, "add", nothing],
        code_prompt=[nothing, nothing, nothing, nothing, nothing, PROMPT, nothing],
        test_inputs=[nothing, ["1 2\n", "3 4\n"], nothing, nothing, ["1 2\n", "3 4\n"], nothing, ["5 6\n"]],
        test_outputs=[nothing, ["3\n", "7\n"], nothing, nothing, ["3\n", "7\n"], nothing, ["11\n"]],
    )
    assert scores == [1.0, 1.0, None, 0.0, 0.0, 1.0, 1.0]


@needs_sandbox
def test_time_limit_column(reward):
    program = "import time\ntime.sleep(0.6)\nprint(1)\n"
    scores = reward(
        ["p", "p"], [program, program], test_inputs=[["\n"]] * 2, test_outputs=[["1\n"]] * 2, time_limit=[0.2, 1.5]
    )
    assert scores == [0.0, 1.0]


@needs_sandbox
def test_default_code_reward():
    scores = code_reward(
        [PROMPT, "Sum."],
        ["    return a + b\n", "print(sum(map(int, input().split())))"],
        test=[TEST, None],
        entry_point=["add", None],
        test_inputs=[None, ["1 2\n"]],
        test_outputs=[None, ["3\n"]],
    )
    assert scores == [1.0, 1.0]


@needs_sandbox
def test_signature_only_code_prompt(reward):
    prompt = "def add(a, b):\n"
    scores = reward(
        [prompt, prompt],
        ["    return a + b\n", f"```python\n{DEFINITION}```"],
        test=[TEST] * 2,
        entry_point=["add"] * 2,
    )
    assert scores == [1.0, 1.0]


@needs_sandbox
def test_malformed_time_limits_fall_back_to_test_timeout(reward, caplog):
    """Red team F7: Hugging Face CodeContests gives `{"seconds": 2, "nanos": 0}` (a TypeError out of run_many lost
    every row) and a negative time_limit timed out every test. A mapping or a number of seconds is read; anything
    else gets test_timeout with a warning naming it, and every row its score."""
    program = "import time\ntime.sleep(0.3)\nprint(1)\n"
    limits = [{"seconds": 1, "nanos": 500_000_000}, -1, float("nan"), "soon", "1.5", [2], None, 1.0]
    with caplog.at_level("WARNING", logger="hf_adaptive_decoding.rewards.sandbox"):
        scores = reward(
            ["p"] * len(limits),
            [program] * len(limits),
            test_inputs=[["\n"]] * len(limits),
            test_outputs=[["1\n"]] * len(limits),
            time_limit=limits,
        )
    assert scores == [1.0] * len(limits)
    for value in ("-1", "nan", "'soon'", "[2]"):
        assert f"time_limit of {value} " in caplog.text
    assert "'1.5'" not in caplog.text and "nanos" not in caplog.text
