"""
The trusted side of a sandboxed code execution. [`Sandbox`] runs this file inside the sandbox as a standalone
script (standard library only), with one JSON job on stdin; the parent also imports its helpers.

Two processes keep the verdict out of the generated program's reach. The *judge* (this script) runs the dataset's
test code; the *candidate* (a separate process, another uid when the sandbox starts as root) runs the generated
program. They talk through pipes in plain values only ([`encode_plain`] / [`decode_plain`]): a candidate can return
a wrong value, but not an object whose `__eq__` lies, and it can neither redefine `check`, patch the judge's builtins,
read its memory (the judge is not dumpable) nor write to its report channel. Exiting early, killing the judge or
printing a fake report can only make the execution fail.

- `mode="function"` (HumanEval style): the candidate executes `program` and serves calls to `entry_point`; the
  judge executes `setup` (the problem's prompt: imports and helpers the test may use) and `test`, then calls
  `check(candidate)`. Report: `{"passed": bool, "error": str | None}`. Each answer is capped at `max_output_bytes`;
  what the program prints is not an answer: the judge drains it while it waits for answers, passes the first
  `max_output_bytes` on to its stderr (for debugging) and discards the rest, so printing never fails a function.
- `mode="stdio"` (CodeContests style): `program` runs once per test input, on its own, with the input on stdin
  (then EOF). Report: `{"outputs": [str | None, ...], "errors": [...], "matched": [bool, ...]}`: the judge compares
  each output with `expected` ([`outputs_match`]) and reports the verdict and the output's first
  `REPORT_OUTPUT_CHARS` characters; running stops after the first test that failed to run or did not match.

In a bubblewrap sandbox this script is the PID namespace's init (`bwrap --as-pid-1`): not dumpable from its first
instruction, it holds the report pipe, reaps the orphans of the program, and signals from inside the namespace
cannot kill it. As root it empties the capability bounding set and locks the secure bits before anything else.
"""

from __future__ import annotations

import json
import math
import os
import resource
import selectors
import signal
import stat
import subprocess
import sys
import time

# --- plain values ------------------------------------------------------------------------------------------------

_TAGS = {"$t": tuple, "$s": set, "$fs": frozenset}
# Characters of each stdin/stdout output the report carries (the judge compares the whole output).
REPORT_OUTPUT_CHARS = 1000


def _to_json(value, depth: int = 0):
    if depth > 100:
        raise ValueError("value nested more than 100 levels deep")
    if value is None or isinstance(value, (bool, str)):
        return str(value) if isinstance(value, str) and type(value) is not str else value
    if isinstance(value, int):
        value = int(value)
        # Hexadecimal escapes Python's 4300-digit limit on int <-> decimal text.
        return value if -(2**63) < value < 2**63 else {"$i": hex(value)}
    if isinstance(value, float):
        value = float(value)
        return value if math.isfinite(value) else {"$f": repr(value)}
    if isinstance(value, complex):
        return {"$c": [_to_json(value.real), _to_json(value.imag)]}
    if isinstance(value, bytes):
        return {"$b": bytes(value).hex()}
    if isinstance(value, list):
        return [_to_json(item, depth + 1) for item in value]
    for tag, kind in _TAGS.items():
        if isinstance(value, kind):
            return {tag: [_to_json(item, depth + 1) for item in value]}
    if isinstance(value, dict):
        return {"$d": [[_to_json(k, depth + 1), _to_json(v, depth + 1)] for k, v in value.items()]}
    raise TypeError(f"{type(value).__name__} is not a plain value")


def _from_json(obj):
    if len(obj) != 1:
        raise ValueError("malformed plain value")
    ((tag, payload),) = obj.items()
    if tag in _TAGS:
        return _TAGS[tag](payload)
    if tag == "$d":
        return {key: value for key, value in payload}
    if tag == "$f":
        return float(payload)
    if tag == "$i":
        return int(payload, 16)
    if tag == "$c":
        return complex(*payload)
    if tag == "$b":
        return bytes.fromhex(payload)
    raise ValueError(f"unknown plain value tag {tag!r}")


def encode_plain(value) -> str:
    """One line of JSON for a plain value: None, bool, int (any size), float, complex, str, bytes, list, tuple, set,
    frozenset, dict (nested). Raises `TypeError` for anything else."""
    return json.dumps(_to_json(value), separators=(",", ":"))


def decode_plain(line: str | bytes):
    """Inverse of [`encode_plain`]; builds fresh built-in objects only."""
    return json.loads(line, object_hook=_from_json)


# --- output comparison (the parent decides with this too) --------------------------------------------------------


def outputs_match(output: str | None, expected: str) -> bool:
    """CodeContests-style comparison: the same lines, each in full, ignoring trailing whitespace on every line and
    trailing empty lines. A missing output never matches."""
    if output is None:
        return False

    def lines(text: str) -> list[str]:
        result = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        while result and not result[-1]:
            result.pop()
        return result

    return lines(output) == lines(expected)


# --- running a process with bounded time and output ------------------------------------------------------------


def communicate(
    process: subprocess.Popen, data: bytes, timeout: float, max_output_bytes: int
) -> tuple[bytes, bytes, str | None]:
    """Feeds `data` to the process's stdin (then EOF) and reads its stdout and stderr until both close, the deadline
    passes or more than `max_output_bytes` arrive. Returns `(stdout, stderr, problem)`, `problem` being `None`,
    `"timeout"` or `"output_limit"`. The caller kills the process on a problem."""
    deadline = time.monotonic() + timeout
    buffers = {}
    selector = selectors.DefaultSelector()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ)
            buffers[stream] = bytearray()
    pending = memoryview(data)
    if process.stdin is not None:
        if pending:
            os.set_blocking(process.stdin.fileno(), False)
            selector.register(process.stdin, selectors.EVENT_WRITE)
        else:
            process.stdin.close()
    total, problem = 0, None
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                problem = "timeout"
                break
            for key, _ in selector.select(remaining):
                stream = key.fileobj
                if stream is process.stdin:
                    try:
                        pending = pending[os.write(stream.fileno(), pending[:65536]) :]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stream)
                        stream.close()
                    continue
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    selector.unregister(stream)
                    continue
                total += len(chunk)
                if total > max_output_bytes:
                    problem = "output_limit"
                    break
                buffers[stream] += chunk
            if problem:
                break
    finally:
        selector.close()
    return (
        bytes(buffers.get(process.stdout, b"")),
        bytes(buffers.get(process.stderr, b"")),
        problem,
    )


# --- inside the sandbox --------------------------------------------------------------------------------------------

_CANDIDATE_SERVER = r"""
import os, sys
read, write = os.fdopen(int(sys.argv[1]), "rb"), os.fdopen(int(sys.argv[2]), "wb")
sys.path.insert(0, sys.argv[3])
from sandbox_judge import decode_plain, encode_plain
def send(**message):
    write.write((json.dumps(message) + "\n").encode()); write.flush()
import json
job = json.loads(read.readline())
namespace = {"__name__": "solution", "__builtins__": __builtins__}
try:
    exec(compile(job["program"], "solution.py", "exec"), namespace)
    function = namespace[job["entry_point"]]
except BaseException as error:
    send(error=f"{type(error).__name__}: {error}"[:500]); raise SystemExit(1)
send(ready=True)
while True:
    line = read.readline()
    if not line:
        break
    try:
        args, kwargs = decode_plain(line)
        send(value=encode_plain(function(*args, **kwargs)))
    except BaseException as error:
        send(raised=f"{type(error).__name__}: {error}"[:500])
"""


class CandidateError(Exception):
    """The generated function raised, or answered with something that is not a plain value."""


def _limit(job: dict, uid: int | None) -> None:
    """Resource limits, then (when started as root) drop to `uid`, for good."""
    limits = job["limits"]
    for name, value in (
        ("RLIMIT_AS", limits["memory_bytes"]),
        ("RLIMIT_CPU", limits["cpu_seconds"]),
        ("RLIMIT_NPROC", limits["max_processes"]),
        ("RLIMIT_FSIZE", limits["max_file_bytes"]),
        ("RLIMIT_NOFILE", limits["max_open_files"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))
    if uid is not None:
        # The judge's pipes are its own uid's, mode 0600: `open("/dev/stdin")` or `open("/dev/stdout", "w")` (which
        # reopen them) would then fail under `uid`. Only the program holds them; /dev/null is left alone.
        for fd in (0, 1, 2):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.fchmod(fd, 0o666)
            except OSError:
                pass
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)


def _candidate_command(job: dict) -> list[str]:
    return [job["python"], "-I", *job.get("python_flags", [])]


class _Candidate:
    """A callable standing for the generated function: plain arguments out, a plain value back. Each answer may
    take `max_output_bytes`; what the program prints goes to a pipe of its own that the judge drains while it waits
    for an answer, passing the first `max_output_bytes` on to its stderr and discarding the rest."""

    def __init__(self, job: dict, uid: int | None) -> None:
        to_child, self._requests = os.pipe()
        self._responses, from_child = os.pipe()
        self._printed, printed = os.pipe()
        here = os.path.dirname(os.path.abspath(__file__))
        try:
            self.process = subprocess.Popen(
                [*_candidate_command(job), "-c", _CANDIDATE_SERVER, str(to_child), str(from_child), here],
                stdin=subprocess.DEVNULL,
                # What the program prints never reaches the report, and never fails the execution.
                stdout=printed,
                stderr=printed,
                pass_fds=(to_child, from_child),
                preexec_fn=lambda: _limit(job, uid),
                start_new_session=True,
                cwd=job["workdir"],
            )
        finally:
            for fd in (to_child, from_child, printed):
                os.close(fd)
        self._write = os.fdopen(self._requests, "wb")
        self._max_bytes = job["limits"]["max_output_bytes"]
        self._print_room = self._max_bytes
        self._pending = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._responses, selectors.EVENT_READ)
        self._selector.register(self._printed, selectors.EVENT_READ)
        self._send({"program": job["program"], "entry_point": job["entry_point"]})
        reply = self._receive()
        if "ready" not in reply:
            raise CandidateError(f"the program did not load: {reply.get('error', reply)}")

    def _send(self, message) -> None:
        self._write.write(((message if isinstance(message, str) else json.dumps(message)) + "\n").encode())
        self._write.flush()

    def _drain_printed(self) -> None:
        """Reads what the program printed: the first `max_output_bytes` go on to stderr, the rest is discarded."""
        chunk = os.read(self._printed, 65536)
        if not chunk:
            self._selector.unregister(self._printed)
            return
        kept = memoryview(chunk)[: self._print_room]
        self._print_room -= len(kept)
        while kept:
            kept = kept[os.write(2, kept) :]

    def _receive(self) -> dict:
        # The answer is one line, read up to its cap (newline included), what the program prints drained meanwhile.
        while b"\n" not in self._pending:
            if len(self._pending) > self._max_bytes:
                raise CandidateError(f"an answer longer than {self._max_bytes} bytes")
            for key, _ in self._selector.select():
                if key.fileobj == self._printed:
                    self._drain_printed()
                    continue
                chunk = os.read(self._responses, 65536)
                if not chunk:
                    raise CandidateError("the program exited before answering")
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        if len(line) + 1 > self._max_bytes:
            raise CandidateError(f"an answer longer than {self._max_bytes} bytes")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise CandidateError("a malformed answer")
        return reply

    def __call__(self, *args, **kwargs):
        self._send(encode_plain([list(args), kwargs]))
        reply = self._receive()
        if "value" in reply and isinstance(reply["value"], str):
            return decode_plain(reply["value"])
        raise CandidateError(str(reply.get("raised", "a malformed answer")))


def _run_function(job: dict, report) -> None:
    uids = job.get("uids")
    candidate = _Candidate(job, uids[1] if uids else None)
    # From here on only the dataset's test code runs in this process: no longer root, and not readable through
    # /proc or ptrace by the candidate.
    _limit(job, uids[0] if uids else None)
    _set_not_dumpable()  # again: changing uids resets it
    namespace = {"__name__": "judge"}
    try:
        exec(compile(job.get("setup") or "", "prompt.py", "exec"), namespace)
        exec(compile(job["test"], "test.py", "exec"), namespace)
        namespace[job["entry_point"]] = candidate
        namespace["check"](candidate)
    except BaseException as error:  # noqa: BLE001 - any failure of the test is a failed test
        report({"passed": False, "error": f"{type(error).__name__}: {error}"[:500]})
        return
    report({"passed": True, "error": None})


def _kill_all_of(uid: int | None, process: subprocess.Popen) -> None:
    """Kills every process the candidate left behind: as its uid, `kill(-1)` reaches all of them (and nothing else);
    without a uid of its own but as the namespace's init, `kill(-1)` reaches every other process of the namespace;
    else its process group."""
    if uid is None:
        try:
            if os.getpid() == 1:
                os.kill(-1, signal.SIGKILL)
            else:
                os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _reap_orphans() -> None:
    """As the namespace's init, reaps the orphans it inherited (they count against the process limit until then)."""
    if os.getpid() != 1:
        return
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_stdio(job: dict, report) -> None:
    uids = job.get("uids")
    uid = uids[1] if uids else None
    path = os.path.join(job["workdir"], "solution.py")
    with open(path, "w") as file:
        file.write(job["program"])
    os.chmod(path, 0o644)
    outputs, errors, matched = [], [], []
    for test_input, expected in zip(job["inputs"], job["expected"], strict=True):
        process = subprocess.Popen(
            [*_candidate_command(job), path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _limit(job, uid),
            start_new_session=True,
            cwd=job["workdir"],
        )
        deadline = time.monotonic() + job["time_limit"]
        stdout, _, problem = communicate(
            process, test_input.encode(), job["time_limit"], job["limits"]["max_output_bytes"]
        )
        if problem is None:
            # stdout's EOF is not the program's exit: one that closes stdout (`with open(1, "w")`, `os.fdopen(1)`)
            # may still be working. It gets the rest of its time limit to exit, then whatever is left is killed.
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                problem = "timeout"
        _kill_all_of(uid, process)
        returncode = process.wait()
        _reap_orphans()
        if problem is None and returncode != 0:
            problem = f"exit status {returncode}"
        output = None if problem else stdout.decode(errors="replace")
        # The judge compares (it has the expected outputs): the report carries the verdict and the output's first
        # characters only, so that its size grows with the number of tests, not with their outputs.
        matched.append(outputs_match(output, expected))
        outputs.append(None if output is None else output[:REPORT_OUTPUT_CHARS])
        errors.append(problem)
        if not matched[-1]:
            break
    report({"outputs": outputs, "errors": errors, "matched": matched})


def _set_not_dumpable() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


# prctl options and secure bits (linux/prctl.h, linux/securebits.h).
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
# NOROOT, NO_SETUID_FIXUP (left off: changing to another uid clears every capability), KEEP_CAPS (off) and
# NO_CAP_AMBIENT_RAISE, each with its lock.
SECURE_BITS = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7)


def _drop_capability_bounding_set() -> None:
    """As root (no user namespace): no process of the sandbox can ever gain a capability again. Empties the bounding
    set and the ambient set and locks the secure bits; this process keeps the capabilities it has (to hand the
    program its own uid), which changing uids clears."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    for capability in range(64):
        if prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability
                break
            raise OSError(ctypes.get_errno(), f"cannot drop capability {capability} from the bounding set")
    if prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot clear the ambient capabilities")
    if prctl(PR_SET_SECUREBITS, SECURE_BITS, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot set the secure bits")
    # The inheritable set too (bubblewrap fills it with the capabilities it kept): capget, then capset without it.
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two struct __user_cap_data_struct: effective, permitted, inheritable
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    if syscall(125, header, data) != 0:  # capget
        raise OSError(ctypes.get_errno(), "capget")
    data[2] = data[5] = 0
    if syscall(126, header, data) != 0:  # capset
        raise OSError(ctypes.get_errno(), "capset")


def main() -> None:
    # Before any other process exists in the sandbox: this process's memory (the job, its nonce) and its file
    # descriptors stay out of reach of /proc and ptrace.
    _set_not_dumpable()
    if os.getpid() == 1:
        # As the namespace's init, a signal from inside the namespace reaches it only through a handler: drop
        # Python's KeyboardInterrupt one, so that no program can interrupt the judge.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    if os.geteuid() == 0:
        _drop_capability_bounding_set()
    job = json.loads(sys.stdin.buffer.read())
    # The report goes to the original stdout; anything the test code prints goes to stderr.
    report_stream = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    os.chdir(job["workdir"])

    def report(result: dict) -> None:
        # The nonce, known to the parent and this process only, tells the report apart from anything else printed.
        report_stream.write(json.dumps({**result, "nonce": job["nonce"]}) + "\n")
        report_stream.flush()

    if job["mode"] == "function":
        try:
            _run_function(job, report)
        except BaseException as error:  # noqa: BLE001
            report({"passed": False, "error": f"{type(error).__name__}: {error}"[:500]})
    else:
        _run_stdio(job, report)


if __name__ == "__main__":
    main()
