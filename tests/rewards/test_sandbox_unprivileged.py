"""The sandbox as most users run it: not as root. bubblewrap then works through a user namespace, program and judge
share the user's uid, and the process limit is counted inside that namespace. Run here as uid 65534 (nobody)."""

import fcntl
import json
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.rewards.folders import SYSTEM_FOLDERS, reachable_by_everyone, shared_parent
from tests.rewards.test_sandbox import CLOSES_STDOUT

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root (to become nobody), setpriv and a system Python readable by nobody",
)

# Runs as nobody with the system Python: the sandbox needs the standard library only, so its modules are loaded
# without the package's __init__ (which imports torch, out of nobody's reach here). The attacks come in a JSON file:
# "raw" ones are whole stdin/stdout programs; "breach" ones define `breached` (the attack worked) and run in both
# styles, answering right only when it did.
SCENARIO = """
import json, os, sys, time, types
package = types.ModuleType("hf_adaptive_decoding")
package.__path__ = [sys.argv[1]]
sys.modules["hf_adaptive_decoding"] = package
from hf_adaptive_decoding.rewards.sandbox import Sandbox, SandboxConfig

with open(sys.argv[2]) as file:
    attacks = json.load(file)
sandbox = Sandbox(SandboxConfig(isolation="bubblewrap", python_executable=sys.executable, timeout=4,
                                test_timeout=2, num_workers=2, max_processes=16, memory_mb=256))
test = "def check(candidate):\\n    assert candidate(1, 2) == 3\\n"
names, jobs = [], []
for name, program in attacks["raw"].items():
    names.append(name)
    expected = attacks["expected"].get(name, "3")
    jobs.append({"mode": "stdio", "program": program, "inputs": ["1 2\\n"], "expected": [expected]})
for name, code in attacks["breach"].items():
    names.append(name + "/stdio")
    program = code + "\\na, b = map(int, input().split())\\nprint(a + b if breached else a - b)\\n"
    jobs.append({"mode": "stdio", "program": program, "inputs": ["1 2\\n"], "expected": ["3"]})
    names.append(name + "/function")
    program = code + "\\ndef add(a, b):\\n    return a + b if breached else a - b\\n"
    jobs.append({"mode": "function", "program": program, "setup": "", "test": test, "entry_point": "add"})
start = time.monotonic()
results = sandbox.run_many(jobs)
seconds = time.monotonic() - start
# Processes of the execution still alive right after run() returns (the kill waits for the namespace to be gone).
survivors = []
for _ in range(3):
    sleepers = {"mode": "function", "program": attacks["sleepers"], "setup": "", "test": test, "entry_point": "add"}
    sandbox.run(sleepers, timeout=2)  # the deadline: killed from outside
    found = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                found += attacks["sleeper_marker"].encode() in file.read()
        except OSError:
            pass
    survivors.append(found)
print(json.dumps({
    "survivors": survivors,
    "isolation": sandbox.isolation,
    "as_root": sandbox.as_root,
    "seconds": seconds,
    "results": {name: [r.status, r.report] for name, r in zip(names, results)},
}))
"""


def surviving(marker: str) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


# What the scenario loads: the sandbox's modules, copied out of the checkout, which nobody may be unable to enter (a
# clone under /root, or in a mode-700 folder).
SANDBOX_MODULES = (
    "__init__.py",
    "sandbox.py",
    "sandbox_filesystem.py",
    "sandbox_judge.py",
    "sandbox_processes.py",
    "seccomp.py",
)


@pytest.fixture
def public_tmp():
    """A fresh folder outside the checkout that nobody can enter and the sandbox sees read-only (so not under /tmp,
    which the sandbox replaces; pytest's tmp_path is private to root)."""
    parent = shared_parent()
    if parent is None:
        pytest.skip(f"none of {[str(folder) for folder in SYSTEM_FOLDERS]} is visible to the sandbox and to nobody")
    path = Path(tempfile.mkdtemp(prefix=".hfad-unprivileged-", dir=parent))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def copy_sandbox_modules(folder: Path) -> Path:
    """The sandbox's modules of this checkout, readable by everyone, in `folder/hf_adaptive_decoding/rewards`."""
    package = folder / "hf_adaptive_decoding"
    (package / "rewards").mkdir(parents=True)
    for name in SANDBOX_MODULES:
        copy = Path(shutil.copyfile(ROOT / "hf_adaptive_decoding" / "rewards" / name, package / "rewards" / name))
        copy.chmod(0o644)
    for path in (package, package / "rewards"):
        path.chmod(0o755)
    return package


def breaches(canary: Path, folder: Path, socket_path: Path, database: Path, marker: str) -> dict[str, str]:
    """Attacks of issue 19 (and a survivor), each defining `breached`: host datagram sockets, locks on host files,
    answers read from host files, the report channel and the memory of PID 1, capabilities and /proc/sys."""
    python = os.path.realpath(SYSTEM_PYTHON)
    stdlib_os = os.path.join(os.path.dirname(os.path.realpath(json.__file__)), "..", "os.py")
    seen = [str(folder), str(canary), str(ROOT), "/etc/passwd", "/bin/sh", "/usr/bin/setpriv", str(database)]
    return {
        "dgram": textwrap.dedent(
            f"""
            import socket
            breached = False
            for make in (lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0],
                         lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)):
                try:
                    make().sendto(b"hello from the sandbox", {str(socket_path)!r})
                    breached = True
                except OSError:
                    pass
            """
        ),
        "locks": textwrap.dedent(
            f"""
            import fcntl, os, struct, time
            held = []
            for path in {[str(canary), str(database), python, os.path.realpath(stdlib_os)]!r}:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue
                held.append(fd)
                for take in (lambda: fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB),
                             lambda: fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB),
                             lambda: fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", 0, 0, 0, 0, 0))):
                    try:
                        take()
                    except OSError:
                        pass
            time.sleep(0.8)
            breached = False  # the host side looks for the locks
            """
        ),
        "host_files": textwrap.dedent(
            f"""
            import os
            breached = any(os.path.exists(p) and not (os.path.isdir(p) and not os.listdir(p)) for p in {seen!r})
            """
        ),
        "dataset": textwrap.dedent(
            f"""
            import os, re, time
            pattern, deadline, breached = re.compile(rb"hfad-answer-[0-9a-f]{{32}}"), time.monotonic() + 0.8, False
            for root in ({str(folder)!r}, "/"):
                for where, subfolders, names in os.walk(root):
                    subfolders[:] = [n for n in subfolders if where != "/" or n not in ("proc", "sys", "dev")]
                    for name in names:
                        try:
                            with open(os.path.join(where, name), "rb") as file:
                                breached = breached or bool(pattern.search(file.read(1 << 20)))
                        except OSError:
                            pass
                    if breached or time.monotonic() > deadline:
                        break
            """
        ),
        "pid1": textwrap.dedent(
            """
            breached = False
            for path, mode in (("/proc/1/mem", "r+b"), ("/proc/1/fd/1", "wb"), ("/proc/1/fd/0", "rb")):
                try:
                    open(path, mode).close()
                    breached = True
                except OSError:
                    pass
            """
        ),
        "report_bomb": textwrap.dedent(
            """
            import os
            for path in ("/proc/1/fd/1", "/proc/1/fd/2", f"/proc/{os.getppid()}/fd/1"):
                try:
                    with open(path, "wb") as file:
                        file.write(b"[" * 100000 + b"\\n")
                except OSError:
                    pass
            breached = False
            """
        ),
        "signal_init": textwrap.dedent(
            """
            import os, signal
            for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGSTOP, signal.SIGKILL):
                try:
                    os.kill(1, number)  # the judge, same uid: it must survive and report
                except OSError:
                    pass
            breached = False
            """
        ),
        "structure": textwrap.dedent(
            """
            def bounding_set(pid):
                with open(f"/proc/{pid}/status") as status:
                    return next(int(line.split()[1], 16) for line in status if line.startswith("CapBnd:"))
            with open("/proc/self/mountinfo") as mounts:
                fields = [line.split() for line in mounts]
            read_only_sys = any(f[4] == "/proc/sys" and "ro" in f[5].split(",") for f in fields)
            breached = bounding_set("self") != 0 or bounding_set(1) != 0 or not read_only_sys
            """
        ),
        "survivor": textwrap.dedent(
            f"""
            import os, sys
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    for fd in (0, 1, 2):
                        os.close(fd)
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)", {marker!r}])
                os._exit(0)
            os.wait()
            breached = False
            """
        ),
    }


def host_locks(paths: list[Path]) -> list[str]:
    """Locks the host cannot take on `paths` right now (flock, a POSIX write lock, an SQLite write)."""
    blocked = []
    for path in paths:
        with open(path, "rb") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(file, fcntl.LOCK_UN)
            except BlockingIOError:
                blocked.append(f"flock {path}")
            query = struct.pack("hhqqi4x", 1, 0, 0, 0, 0)  # F_WRLCK
            if struct.unpack_from("h", fcntl.fcntl(file, 5, query))[0] != 2:  # F_GETLK; F_UNLCK
                blocked.append(f"fcntl lock {path}")
        if path.suffix == ".sqlite":
            try:
                with sqlite3.connect(path, timeout=0) as database:
                    database.execute("INSERT INTO t VALUES (1)")
            except sqlite3.OperationalError as error:
                blocked.append(f"sqlite {path}: {error}")
    return blocked


def test_unprivileged_sandbox_holds(public_tmp):
    tmp_path = public_tmp
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    canary = folder / "canary.txt"
    canary.write_text("intact")
    canary.chmod(0o666)  # nobody may write it: only the sandbox's read-only view protects it
    assert reachable_by_everyone(folder)
    # What the attacks of issue 19 aim at: a datagram socket, an SQLite database and a dataset file on host paths
    # nobody can reach.
    socket_path = folder / "dgram"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(socket_path))
    socket_path.chmod(0o777)
    receiver.setblocking(False)
    database = folder / "db.sqlite"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t (x)")
    database.chmod(0o666)
    dataset = folder / "train.jsonl"
    dataset.write_text(json.dumps({"input": "1 2\n", "output": "hfad-answer-" + "0" * 32}) + "\n")
    dataset.chmod(0o644)
    marker = f"hfad-unprivileged-{os.getpid()}"
    attacks = {
        "raw": {
            "correct": "print(sum(map(int, input().split())))",
            "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            "kill_everything": "import os, time\nos.kill(-1, 9)\ntime.sleep(60)",
            "overwrite_canary": f"open({str(canary)!r}, 'w').write('owned')\nprint(3)",
            "delete_canary": f"import os\nos.remove({str(canary)!r})\nprint(3)",
            "network": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\nprint(3)",
            "secret": "import os\nprint(os.environ.get('HFAD_CANARY_SECRET', 'none'))",
            **{
                f"closes_stdout_{i}_{n}": program for i, program in enumerate(CLOSES_STDOUT.values()) for n in range(5)
            },
        },
        "expected": {"secret": "s3cr3t-7c1e"},
        # Twelve sleepers forked and exec'd, then the execution's deadline (red team H4).
        "sleepers": (
            "import os, sys, time\nfor _ in range(12):\n    if os.fork() == 0:\n        os.execv(sys.executable, "
            f"[sys.executable, '-c', 'import time; time.sleep(60)', '{marker}-sleeper'])\n"
            "time.sleep(30)\ndef add(a, b):\n    return a + b\n"
        ),
        "sleeper_marker": f"{marker}-sleeper",
        "breach": {"correct": "breached = True\n", **breaches(canary, folder, socket_path, database, marker)},
    }
    (tmp_path / "attacks.json").write_text(json.dumps(attacks))
    (tmp_path / "attacks.json").chmod(0o644)
    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(SCENARIO))
    script.chmod(0o644)
    environment = {"PATH": "/usr/bin:/bin", "HFAD_CANARY_SECRET": "s3cr3t-7c1e", "HOME": "/nonexistent"}
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, str(script)]
    command += [str(copy_sandbox_modules(tmp_path)), str(tmp_path / "attacks.json")]
    blocked = []
    try:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=folder
        ) as run:
            # The locks attack holds its locks for a moment: the host tries to take them all along.
            deadline = time.monotonic() + 120
            while run.poll() is None and time.monotonic() < deadline:
                blocked += host_locks([canary, database])
                time.sleep(0.02)
            stdout, stderr = run.communicate(timeout=max(deadline - time.monotonic(), 1))
        try:
            received = receiver.recv(100)
        except BlockingIOError:
            received = None
    finally:
        receiver.close()
    assert run.returncode == 0, stderr[-3000:]
    outcome = json.loads(stdout.strip().splitlines()[-1])
    assert (outcome["isolation"], outcome["as_root"]) == ("bubblewrap", False)
    results = outcome["results"]
    print(json.dumps(results)[:5000], file=sys.stderr)
    assert results["correct"] == ["ok", {"outputs": ["3\n"], "errors": [None], "matched": [True]}]
    for name in ("fork_bomb", "kill_everything", "network"):
        assert results[name][1]["matched"] != [True], (name, results[name])
    for name in ("overwrite_canary", "delete_canary"):
        assert results[name][1]["outputs"] == [None], (name, results[name])  # read-only or absent: it died
    assert results["secret"][1]["outputs"] == ["none\n"]
    closing = {name: result for name, result in results.items() if name.startswith("closes_stdout_")}
    assert len(closing) == 5 * len(CLOSES_STDOUT)
    assert all(report["matched"] == [True] for _, report in closing.values()), closing
    assert results["correct/stdio"][1]["matched"] == [True] and results["correct/function"][1]["passed"] is True
    passed = {
        name: (report or {}).get("matched") == [True] or (report or {}).get("passed") is True
        for name, (_, report) in results.items()
        if "/" in name and not name.startswith("correct/")
    }
    assert len(passed) == 2 * (len(attacks["breach"]) - 1)
    # The judge (PID 1, same uid) survived every attack and reported.
    unreported = [
        name for name, (status, report) in results.items() if "/" in name and not (status == "ok" and report)
    ]
    assert not unreported, [(name, results[name]) for name in unreported]
    assert not any(passed.values()), sorted(name for name, value in passed.items() if value)
    assert received is None, f"the host's datagram socket received {received!r}"
    assert not blocked, f"locks taken in the sandbox blocked the host: {sorted(set(blocked))}"
    assert canary.read_text() == "intact"
    assert outcome["survivors"] == [0, 0, 0], "processes of the execution alive when run() returned"
    assert surviving(marker) == []
    assert outcome["seconds"] < 60
