"""The pure helpers of the in-sandbox judge: plain values, output comparison, bounded communication."""

from __future__ import annotations

import collections
import decimal
import fractions
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from hf_adaptive_decoding.rewards.sandbox_judge import communicate, decode_plain, encode_plain, outputs_match

# --- plain values --------------------------------------------------------------------------------------------------


def roundtrip(value):
    line = encode_plain(value)
    assert "\n" not in line  # one line on the pipe
    json.loads(line)  # plain JSON
    return decode_plain(line)


def same(a, b) -> bool:
    """Equal and of the same built-in types all the way down (so True and 1, 1 and 1.0, [] and () differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    return a == b


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        2**200,
        -(10**4000),  # under Python's 4300-digit conversion limit
        1.5,
        -0.0,
        1e308,
        5e-324,
        float("inf"),
        float("-inf"),
        float("nan"),
        1 + 2j,
        complex(float("nan"), float("-inf")),
        "",
        'héllo\n\t"quoted" \\ \x00 \ud800 😀',
        "$t",
        b"",
        b"\x00\xff binary",
        [],
        (),
        ((1, (2, (3,))), (), [()]),
        [True, 1, 1.0, False, 0, 0.0],
        {1, 2, (3, 4), frozenset({5})},
        set(),
        frozenset({frozenset({1}), frozenset()}),
        {},
        {(1, 2): "tuple key", frozenset({3}): [1], 4: {"nested": {None: b"x"}}, None: 1.5, "$t": "a tag as a key"},
        {True: "bool key", 2: "int key", 2.5: "float key", b"k": "bytes key", 1j: "complex key"},
        [[[[[[[[[[1]]]]]]]]]],
    ],
    ids=lambda value: repr(value)[:40],
)
def test_plain_values_roundtrip(value):
    decoded = roundtrip(value)
    if isinstance(value, (set, frozenset)):
        assert type(decoded) is type(value) and decoded == value
    else:
        assert same(decoded, value), (decoded, value)


def test_bools_and_ints_keep_their_types():
    decoded = roundtrip([True, 1, False, 0, {"x": True}, (1, True)])
    assert [type(item) for item in decoded[:4]] == [bool, int, bool, int]
    assert type(decoded[4]["x"]) is bool
    assert [type(item) for item in decoded[5]] == [int, bool]


class LyingInt(int):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = int.__hash__


class LyingStr(str):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


class LyingList(list):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False


class LyingFloat(float):
    def __eq__(self, other):
        return True

    __hash__ = float.__hash__


class LyingDict(dict):
    def __eq__(self, other):
        return True


class LyingTuple(tuple):
    def __eq__(self, other):
        return True

    __hash__ = tuple.__hash__


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize(
    "value, plain",
    [
        (LyingInt(5), 5),
        (LyingStr("abc"), "abc"),
        (LyingList([1, 2]), [1, 2]),
        (LyingFloat(2.5), 2.5),
        (LyingDict(a=1), {"a": 1}),
        (LyingTuple((1, 2)), (1, 2)),
        (Point(1, 2), (1, 2)),
        (collections.OrderedDict(a=1), {"a": 1}),
        (collections.defaultdict(list, a=[1]), {"a": [1]}),
        ([LyingInt(1), (LyingStr("x"),), {LyingInt(2): LyingList()}], [1, ("x",), {2: []}]),
    ],
    ids=lambda value: type(value).__name__,
)
def test_lying_subclasses_decode_to_honest_builtins(value, plain):
    decoded = roundtrip(value)
    assert same(decoded, plain)
    # What crossed the pipe compares honestly.
    assert decoded != "anything else" and decoded != 12345 and decoded != [9]


def test_lying_values_do_not_equal_wrong_answers():
    assert roundtrip(LyingInt(5)) != 6
    assert roundtrip(LyingStr("abc")) != "abd"
    assert roundtrip(LyingList([1])) != [2]


class Impostor:
    """Claims to be an int through `__class__`, which `isinstance` believes."""

    __class__ = property(lambda self: int)


def _generator():
    yield 1


@pytest.mark.parametrize(
    "value",
    [
        object(),
        lambda: 1,
        range(3),
        _generator(),
        iter([1]),
        map(str, [1]),
        decimal.Decimal("1.5"),
        fractions.Fraction(1, 3),
        collections.deque([1]),
        bytearray(b"x"),
        memoryview(b"x"),
        type,
        Ellipsis,
        [1, object()],
        {"key": object()},
        {(1, object()): 1},
        (1, [2, {3: {object()}}]),
    ],
    ids=lambda value: type(value).__name__,
)
def test_non_plain_values_raise_type_error(value):
    with pytest.raises(TypeError):
        encode_plain(value)


def test_impostor_is_not_encoded_as_an_int():
    assert isinstance(Impostor(), int)
    with pytest.raises(TypeError):
        encode_plain(Impostor())


def test_too_deep_or_cyclic_values_raise():
    deep = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ValueError):
        encode_plain(deep)
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        encode_plain(cyclic)


@pytest.mark.parametrize(
    "line",
    [
        '{"$x": [1]}',  # unknown tag
        '{"a": 1}',  # a bare object: plain dicts are always tagged
        "{}",
        '{"$t": [1], "$s": [2]}',  # two tags
        '[1, {"$unknown": 2}]',
        '{"$f": "not a float"}',
        '{"$b": "zz"}',  # not hex
        '{"$c": [1, 2, 3]}',
        '{"$s": [[1]]}',  # unhashable member
        '{"$d": [[[1], 2]]}',  # unhashable key
        '{"$d": [[1, 2, 3]]}',
        "not json",
        "",
    ],
)
def test_malformed_plain_values_raise(line):
    with pytest.raises((ValueError, TypeError)):
        decode_plain(line)


def test_decode_accepts_bytes():
    assert decode_plain(encode_plain((1, "a")).encode()) == (1, "a")


# --- outputs_match -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output, expected",
    [
        ("3\n", "3\n"),
        ("3", "3\n"),
        ("3   \t\n", "3\n"),
        ("3\n\n\n", "3"),
        ("3\r\n4\r\n", "3\n4\n"),
        ("3\n4\n", "3\r\n4\r\n"),
        ("1 2 3  \n4\t\n\n", "1 2 3\n4"),
        ("3\n  \n4\n", "3\n\n4\n"),  # a blank line in the middle, with trailing spaces
        ("", ""),
        ("\n\n", ""),
    ],
)
def test_outputs_match(output, expected):
    assert outputs_match(output, expected)


@pytest.mark.parametrize(
    "output, expected",
    [
        (None, "3\n"),
        (None, ""),
        ("", "3\n"),
        ("3\n", "3\n4\n"),  # a missing line
        ("3\n4\n", "3\n"),  # an extra line
        ("3\n4\n5\n", "3\n4\n"),
        ("3\n4", "3\n42"),  # a prefix of the last line
        ("4", "42"),
        ("42", "4"),
        (" 3", "3"),  # leading whitespace counts
        ("\n3", "3"),  # so do leading blank lines
        ("3 4", "3\n4"),
        ("3\n4", "3 4"),
        ("3\n\n4", "3\n4"),
        ("3.0", "3"),
        ("yes", "YES"),
    ],
)
def test_outputs_do_not_match(output, expected):
    assert not outputs_match(output, expected)


# --- communicate ---------------------------------------------------------------------------------------------------


def spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def finish(process: subprocess.Popen) -> None:
    """Kills the process and whatever it started (its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if not stream.closed:
            stream.close()


def test_communicate_returns_stdout_and_stderr():
    process = spawn("import sys; data = sys.stdin.read(); print(data.upper()); print('err', file=sys.stderr)")
    try:
        stdout, stderr, problem = communicate(process, b"hello", 10, 1000)
    finally:
        finish(process)
    assert (stdout, stderr, problem) == (b"HELLO\n", b"err\n", None)


def test_communicate_times_out():
    process = spawn("import time; print('started', flush=True); time.sleep(60)")
    start = time.monotonic()
    try:
        stdout, _, problem = communicate(process, b"", 0.5, 1000)
    finally:
        finish(process)
    assert problem == "timeout"
    assert 0.4 < time.monotonic() - start < 3
    assert stdout == b"started\n"  # what came before the deadline


def test_communicate_times_out_when_the_program_never_reads_its_input():
    # More input than a pipe holds, and a program that does not read it: writing must not block past the deadline.
    process = spawn("import time; time.sleep(60)")
    start = time.monotonic()
    try:
        _, _, problem = communicate(process, b"x" * (8 << 20), 0.5, 1000)
    finally:
        finish(process)
    assert problem == "timeout"
    assert time.monotonic() - start < 3


def test_communicate_times_out_when_a_grandchild_holds_stdout():
    process = spawn("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)'])")
    start = time.monotonic()
    try:
        _, _, problem = communicate(process, b"", 0.5, 1000)
    finally:
        finish(process)
    assert problem == "timeout"
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_communicate_stops_at_the_output_limit(stream):
    process = spawn(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 65536)")
    start = time.monotonic()
    try:
        stdout, stderr, problem = communicate(process, b"", 10, 100_000)
    finally:
        finish(process)
    assert problem == "output_limit"
    assert len(stdout) + len(stderr) <= 100_000
    assert time.monotonic() - start < 5


def test_communicate_output_limit_counts_both_streams():
    code = "import sys\nsys.stdout.write('o' * 600); sys.stdout.flush(); sys.stderr.write('e' * 600)"
    process = spawn(code)
    try:
        _, _, problem = communicate(process, b"", 10, 1000)
    finally:
        finish(process)
    assert problem == "output_limit"


def test_communicate_output_exactly_at_the_limit_is_fine():
    process = spawn("import sys; sys.stdout.write('x' * 1000)")
    try:
        stdout, _, problem = communicate(process, b"", 10, 1000)
    finally:
        finish(process)
    assert (len(stdout), problem) == (1000, None)


def test_communicate_feeds_large_stdin_fully():
    data = bytes(range(256)) * (20 << 12)  # 20 MiB, far more than a pipe buffer
    code = "import hashlib, sys; data = sys.stdin.buffer.read(); print(len(data), hashlib.sha256(data).hexdigest())"
    process = spawn(code)
    try:
        stdout, _, problem = communicate(process, data, 30, 1000)
    finally:
        finish(process)
    assert problem is None
    assert stdout.decode().split() == [str(len(data)), hashlib.sha256(data).hexdigest()]


def test_communicate_survives_a_program_that_exits_without_reading():
    process = spawn("print('bye')")
    try:
        stdout, _, problem = communicate(process, b"x" * (4 << 20), 10, 1000)
    finally:
        finish(process)
    assert (stdout, problem) == (b"bye\n", None)


def test_communicate_closes_stdin_when_there_is_no_input():
    process = spawn("import sys; print(repr(sys.stdin.read()))")
    try:
        stdout, _, problem = communicate(process, b"", 5, 1000)
    finally:
        finish(process)
    assert (stdout, problem) == (b"''\n", None)
