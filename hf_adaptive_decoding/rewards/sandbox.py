"""Isolated execution of generated programs: bubblewrap namespaces, resource limits, a parent-enforced deadline.

`SandboxConfig` and `Sandbox` (running jobs on parallel workers) live here; the sandbox's filesystem is built in
`sandbox_filesystem`, its processes are capped and killed by `sandbox_processes`, the trusted side inside it is
`sandbox_judge`."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import platform
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import SimpleQueue

from . import sandbox_judge
from .sandbox_filesystem import SANDBOX_JUDGE_PATH, InterpreterFiles, filesystem_arguments, interpreter_files
from .sandbox_judge import REPORT_OUTPUT_CHARS, communicate
from .sandbox_processes import (
    CGROUP_OVERHEAD_MB,
    ExecutionCgroups,
    kill_execution,
    kill_processes_of,
    memory_controlled,
    namespace_init,
    own_cgroups,
    pid_of,
    processes_of,
)
from .seccomp import seccomp_filter

logger = logging.getLogger(__name__)

__all__ = [
    "CGROUP_OVERHEAD_MB",
    "ISOLATIONS",
    "JUDGE_PATH",
    "SANDBOX_JUDGE_PATH",
    "ExecutionResult",
    "InterpreterFiles",
    "Sandbox",
    "SandboxConfig",
    "bubblewrap_available",
    "interpreter_files",
    "kill_processes_of",
    "parse_report",
    "processes_of",
]

ISOLATIONS = ("auto", "bubblewrap", "none")
JUDGE_PATH = Path(sandbox_judge.__file__).resolve()
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
UNPROTECTED_WITHOUT_BUBBLEWRAP = (
    "the program can read and write every file its user can (your home folder, your checkouts), open network "
    "connections, and see and signal your other processes"
)
UNPROTECTED_WITH_BUBBLEWRAP = (
    "the kernel is reachable through the system calls the seccomp filter allows, the interpreter's own files are "
    "readable, and the machine's CPU, memory bandwidth and (without a memory cgroup) memory are shared"
)
# The judge's report: fixed fields, plus per stdin/stdout test a verdict and the first characters of the output.
REPORT_BYTES = 64 << 10
_warned = set()
# Worker slots per local process; local process r of a distributed run starts looking at slot r * _SLOTS_PER_RANK.
_SLOTS_PER_RANK = 4096
_UID_SLOTS = 16 * _SLOTS_PER_RANK
_next_slot = 0
_slot_lock = threading.Lock()
# As root, a worker slot's uids are reserved host-wide by an exclusive flock on a file named after its first uid.
UID_LOCK_FOLDER = "/run/hf_adaptive_decoding/uids"


def _local_rank() -> int:
    value = os.environ.get("LOCAL_RANK", "0")
    try:
        return int(value) % 16
    except ValueError:
        raise ValueError(
            f"LOCAL_RANK must be an integer (this process's rank on its machine), got {value!r}."
        ) from None


def _uid_lock_folder() -> str:
    """`UID_LOCK_FOLDER`, created if needed; it and its parent must be root's folders nobody else may write."""
    os.makedirs(UID_LOCK_FOLDER, mode=0o755, exist_ok=True)
    for folder in (os.path.dirname(UID_LOCK_FOLDER), UID_LOCK_FOLDER):
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise RuntimeError(f"{folder} must be a folder of root's that no one else may write (it reserves uids).")
    return UID_LOCK_FOLDER


def _lock_slot(folder: str, uid: int) -> int | None:
    """An fd holding an exclusive lock on the slot whose first uid is `uid`, or `None` if another holds it."""
    path = os.path.join(folder, str(uid))
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder removed it on release: lock the file now at `path`


def _release_slots(folder: str, locks: dict[int, int]) -> None:
    for uid, fd in list(locks.items()):
        try:
            os.unlink(os.path.join(folder, str(uid)))  # while still locked: no one holds a lock on a removed file
        except FileNotFoundError:
            pass
        os.close(fd)
        del locks[uid]


def _reserve_slots(count: int, uid_base: int | None = None) -> tuple[int, dict[int, int]]:
    """The first of `count` consecutive worker slots no other sandbox of this process uses (wrapping around after
    4096), starting at `LOCAL_RANK * 4096`, and the locks reserving their uids host-wide: with `uid_base` (root), the
    slots are locked one by one in `UID_LOCK_FOLDER`, and the next range is tried while one is taken, so that two
    sandboxes of different processes never share a uid (nor, then, a process count)."""
    global _next_slot
    with _slot_lock:
        if _next_slot + count > _SLOTS_PER_RANK:
            _next_slot = 0
        first, _next_slot = _next_slot, _next_slot + count
    first += _local_rank() * _SLOTS_PER_RANK
    if uid_base is None:
        return first, {}
    try:
        folder = _uid_lock_folder()
    except OSError as error:
        _warn_once(
            f"Cannot reserve uids host-wide in {UID_LOCK_FOLDER} ({error}): another process's sandboxes with the same "
            "LOCAL_RANK and uid_base may share this one's uids (and process counts)."
        )
        return first, {}
    locks: dict[int, int] = {}
    tried = 0
    while tried < _UID_SLOTS:
        if first + count > _UID_SLOTS:
            tried, first = tried + _UID_SLOTS - first, 0
        for slot in range(first, first + count):
            fd = _lock_slot(folder, uid_base + 2 * slot)
            if fd is None:
                _release_slots(folder, locks)
                tried, first = tried + slot + 1 - first, slot + 1
                break
            locks[uid_base + 2 * slot] = fd
        else:
            return first, locks
    raise RuntimeError(f"No {count} consecutive free worker slots (uids from {uid_base}): every range is taken.")


@dataclass
class SandboxConfig:
    """
    Limits and isolation for executing generated code. Every limit holds per execution (one program and its tests);
    the CPU and file limits hold per process, and so does the memory limit unless a memory cgroup is available.

    Args:
        isolation (`str`, defaults to `"auto"`): `"bubblewrap"` (Linux namespaces through Debian's `bwrap`: no
            network; a filesystem built from nothing, holding only the interpreter, its standard library (without
            site-packages) and the shared libraries they load, read-only, a few devices, its own /proc (/proc/sys
            read-only) and a size-capped /tmp; its own process tree, whose init is the trusted judge and which the
            parent kills from outside; a seccomp filter (see `seccomp.py`); and as root no capability but the
            three that hand the program its own uid, an empty capability bounding set and locked secure bits),
            `"none"` (resource limits and a scrubbed environment only; a loud warning says what is not protected)
            or `"auto"` (bubblewrap when it works here, else none).
        timeout (`float`, defaults to 10.0): wall-clock seconds for an execution, plus `test_timeout` (or the row's
            smaller `time_limit`) per stdin/stdout test, so that the number of tests never fails a correct program;
            enforced by the parent with SIGKILL on the sandbox's whole process tree.
        test_timeout (`float`, defaults to 4.0): stdin/stdout tests: seconds for each run of the program.
        cpu_seconds (`int`, defaults to 10): CPU seconds per process (`RLIMIT_CPU`).
        memory_mb (`int`, defaults to 1024): address space per process (`RLIMIT_AS`). When this process may create
            cgroups (root, usually), each execution also runs in a memory cgroup capped at `memory_mb` +
            `tmp_size_mb` + 64 MiB (the judge and the interpreters) for all of its processes, its /tmp files and its
            pipe buffers; see [`Sandbox.memory_bound_mb`].
        max_processes (`int`, defaults to 32): processes and threads of the program. Enforced for root too: as
            root, the sandbox runs programs under a uid of their own (`uid_base` and up), for which the kernel
            enforces `RLIMIT_NPROC`.
        max_output_bytes (`int`, defaults to 1 MiB): the stdout of each run of a stdin/stdout program (its stderr
            is discarded), and each answer of a generated function; more fails the execution. The judge compares
            outputs itself, so the total over many tests or calls does not count. What a generated function prints
            is not an answer and never fails it: the judge drains it, keeps the first `max_output_bytes` for
            `ExecutionResult.stderr` and discards the rest.
        max_file_mb (`int`, defaults to 16): the largest file a program may write (`RLIMIT_FSIZE`).
        tmp_size_mb (`int`, defaults to 64): size of the sandbox's only writable folder, `/tmp` (`/dev/shm` and
            `/var/tmp` point to it).
        max_open_files (`int`, defaults to 64).
        num_workers (`int`, *optional*): executions run in parallel; default: the number of CPUs.
        python_executable (`str`, *optional*): interpreter for the programs; default: the base interpreter of the
            running Python (standard library only; started with `-I`).
        uid_base (`int`, defaults to 1_500_000_000): when running as root, each worker gets two uids of its own
            (the judge's and the program's) from `uid_base` up, disjoint across every sandbox of the machine (each
            slot is reserved by a lock file in `/run/hf_adaptive_decoding/uids`, held until `close()`; `LOCAL_RANK`,
            an integer, picks where to start looking), so that no two workers share a process count.
            Pick a range no real user has (the default spans about 2**17 uids).
    """

    isolation: str = "auto"
    timeout: float = 10.0
    test_timeout: float = 4.0
    cpu_seconds: int = 10
    memory_mb: int = 1024
    max_processes: int = 32
    max_output_bytes: int = 1 << 20
    max_file_mb: int = 16
    tmp_size_mb: int = 64
    max_open_files: int = 64
    num_workers: int | None = None
    python_executable: str | None = None
    uid_base: int = 1_500_000_000
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {self.isolation!r}.")
        for name in ("timeout", "test_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}.")
        for name in ("cpu_seconds", "memory_mb", "max_processes", "max_output_bytes", "max_file_mb", "tmp_size_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        if not isinstance(self.max_open_files, int) or self.max_open_files < 16:
            raise ValueError(f"max_open_files must be an int >= 16 (Python needs a few), got {self.max_open_files!r}.")
        if self.num_workers is None:
            self.num_workers = os.cpu_count() or 1
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {self.num_workers!r}.")
        if not isinstance(self.uid_base, int) or not 1000 <= self.uid_base <= 2**31 - 2 * _UID_SLOTS:
            raise ValueError(f"uid_base must be an int in [1000, 2**31 - {2 * _UID_SLOTS}], got {self.uid_base!r}.")
        if self.python_executable is None:
            self.python_executable = getattr(sys, "_base_executable", None) or sys.executable
        self.python_executable = os.path.realpath(self.python_executable)
        if not os.access(self.python_executable, os.X_OK):
            raise ValueError(f"python_executable {self.python_executable!r} is not an executable file.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExecutionResult:
    """
    What one sandboxed execution gave.

    Args:
        status (`str`): `"ok"` (the judge reported), `"timeout"`, `"output_limit"` or `"crashed"` (no report).
        report (`dict`, *optional*): the judge's report, parsed from plain JSON.
        stderr (`str`): the first `max_output_bytes` of the judge's stderr, for debugging (in function mode, the
            start of what the generated function printed).
        wall_time (`float`): seconds.
    """

    status: str
    report: dict | None
    stderr: str
    wall_time: float


def bubblewrap_available() -> bool:
    """Whether `bwrap` is installed and can create the sandbox's namespaces here."""
    if "bubblewrap" not in _probe_cache:
        executable = shutil.which("bwrap")
        works = False
        if executable:
            command = [executable, *_namespace_arguments(), "--ro-bind", "/", "/", "--", "/bin/true"]
            try:
                works = subprocess.run(command, capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                works = False
        _probe_cache["bubblewrap"] = works
    return _probe_cache["bubblewrap"]


_probe_cache: dict[str, bool] = {}


def _namespace_arguments() -> list[str]:
    arguments = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() != 0:
        # Unprivileged: a user namespace, and none nested inside it.
        arguments += ["--unshare-user", "--disable-userns"]
    # --as-pid-1: the judge (not dumpable from its first instruction) is the namespace's init, so no process of the
    # program's uid holds the report pipe, and signals sent from inside the namespace cannot kill it.
    return [*arguments, "--die-with-parent", "--new-session", "--as-pid-1"]


def _time_limit(value, default: float) -> float:
    """A row's `time_limit` in seconds: a number, a string holding one, or the `{"seconds": 2, "nanos": 0}`
    mapping of the Hugging Face CodeContests dataset. `None` or 0 mean none was given; anything else (negative, NaN,
    infinite, not a number) gives `default` with a warning, and never raises."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0):
        return default
    try:
        if isinstance(value, Mapping):
            seconds = float(value.get("seconds") or 0) + float(value.get("nanos") or 0) / 1e9
        elif isinstance(value, bool):
            raise TypeError("a bool is not a number of seconds")
        else:
            seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        logger.warning("A row's time_limit of %r is not a positive number of seconds: test_timeout applies.", value)
        return default
    return seconds


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)
        print(f"WARNING: {message}", file=sys.stderr)


class Sandbox:
    """
    Runs sandbox jobs (see `sandbox_judge`) in isolation, in parallel across `config.num_workers` workers.

    Example:

    ```python
    >>> sandbox = Sandbox(SandboxConfig(timeout=5))
    >>> job = {"mode": "stdio", "program": "print(int(input()) * 2)", "inputs": ["21"], "expected": ["42"]}
    >>> result = sandbox.run(job)
    >>> result.report["outputs"]
    ['42\\n']
    ```
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        isolation = self.config.isolation
        if isolation in ("auto", "bubblewrap") and bubblewrap_available():
            isolation = "bubblewrap"
        elif isolation == "bubblewrap":
            raise RuntimeError(
                "isolation='bubblewrap' but `bwrap` is missing or cannot create namespaces here. Install it "
                "(Debian/Ubuntu: `apt-get install bubblewrap`) or, knowing what that leaves open, pass "
                "isolation='none'."
            )
        else:
            isolation = "none"
            _warn_once(
                "Generated code runs WITHOUT namespace isolation (bubblewrap is missing or does not work here): "
                "only resource limits, a deadline and a scrubbed environment apply, so "
                f"{UNPROTECTED_WITHOUT_BUBBLEWRAP}. "
                "Install bubblewrap (`apt-get install bubblewrap`) before training on code."
            )
        self.isolation = isolation
        self.as_root = os.geteuid() == 0
        # Memory cgroups when this process may create them (see `memory_bound_mb`).
        self._cgroup_parents = own_cgroups() if isolation == "bubblewrap" else {}
        self._seccomp = seccomp_filter() if isolation == "bubblewrap" else None
        if isolation == "bubblewrap" and self._seccomp is None:
            _warn_once(
                f"No seccomp filter for {platform.machine()} (only x86-64 has one): sandboxed programs can create "
                "user namespaces and sockets of any family (vsock, unix, TCP buffers outside the memory bound), take "
                "file locks, and reach every system call."
            )
        if self.as_root and isolation == "none":
            self._check_reachable(self.config.python_executable)
        first_slot, self._slot_locks = _reserve_slots(
            self.config.num_workers, self.config.uid_base if self.as_root else None
        )
        if self._slot_locks:
            # Released by close(), or when the sandbox is collected, or by the kernel when this process ends.
            self._release = weakref.finalize(self, _release_slots, UID_LOCK_FOLDER, self._slot_locks)
        self.slots = range(first_slot, first_slot + self.config.num_workers)
        self._slots: SimpleQueue[int] = SimpleQueue()
        for slot in self.slots:
            self._slots.put(slot)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def memory_bound_mb(self) -> int:
        """The memory one execution may use in all: with a memory cgroup (`memory_limited`), its limit (`memory_mb`
        + `tmp_size_mb` + 64 MiB for the judge and the interpreters), covering processes, /tmp files and pipe
        buffers; without one, `memory_mb` per process (`RLIMIT_AS`) times `max_processes`, plus `tmp_size_mb`, plus
        pipe buffers (the kernel's per-user pipe quota)."""
        config = self.config
        if self.memory_limited:
            return config.memory_mb + config.tmp_size_mb + CGROUP_OVERHEAD_MB
        return config.memory_mb * config.max_processes + config.tmp_size_mb

    @property
    def memory_limited(self) -> bool:
        """Whether each execution runs in a memory cgroup of its own (needs write access to this process's cgroup:
        root, usually)."""
        return memory_controlled(self._cgroup_parents)

    @staticmethod
    def _check_reachable(path: str) -> None:
        for parent in [*reversed(Path(path).parents), Path(path)]:
            if not os.stat(parent).st_mode & 0o001:
                raise RuntimeError(
                    f"Without bubblewrap, root runs programs under an unprivileged uid, which cannot reach "
                    f"python_executable {path!r} ({parent} is not world-accessible). Install bubblewrap or set "
                    "python_executable to an interpreter outside private folders."
                )

    def uids(self, slot: int) -> tuple[int, int] | None:
        """The (judge, program) uids of worker `slot` (one of `self.slots`) when running as root, else `None`."""
        if not self.as_root:
            return None
        return self.config.uid_base + 2 * slot, self.config.uid_base + 2 * slot + 1

    def _limits(self) -> dict:
        config = self.config
        return {
            "memory_bytes": config.memory_mb << 20,
            "cpu_seconds": config.cpu_seconds,
            # Judge and program share the count when they share a uid (no root).
            "max_processes": config.max_processes + (0 if self.as_root else 4),
            "max_file_bytes": config.max_file_mb << 20,
            "max_open_files": config.max_open_files,
            "max_output_bytes": config.max_output_bytes,
        }

    def _bubblewrap_command(self) -> list[str]:
        """bubblewrap's command line: the filesystem (see `sandbox_filesystem.filesystem_arguments`: nothing of the
        host but the interpreter's own files, read-only), new namespaces, as root the capabilities dropped, a scrubbed
        environment, and the judge as the namespace's init."""
        command = [shutil.which("bwrap")]
        command += filesystem_arguments(self.config.python_executable, self.config.tmp_size_mb, JUDGE_PATH)
        command += _namespace_arguments()
        if self.as_root:
            # The judge only needs to hand the program its own uids (and, to empty the capability bounding set
            # before it does, CAP_SETPCAP); everything else root could do is dropped.
            command += ["--cap-drop", "ALL"]
            for capability in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):
                command += ["--cap-add", capability]
        command += ["--hostname", "sandbox", "--chdir", "/tmp", "--clearenv"]
        for name, value in self._environment().items():
            command += ["--setenv", name, value]
        return [*command, "--", self.config.python_executable, "-I", "-S", SANDBOX_JUDGE_PATH]

    def _environment(self) -> dict[str, str]:
        return {
            "PATH": SANDBOX_PATH,
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            **self.config.extra_env,
        }

    def run(self, job: dict, timeout: float | None = None) -> ExecutionResult:
        """Runs one job (see `sandbox_judge`) on a free worker slot; waits for a slot."""
        slot = self._slots.get()
        try:
            return self._run(job, slot, timeout or self.config.timeout)
        finally:
            self._slots.put(slot)

    def run_many(self, jobs: list[dict], timeout: float | None = None) -> list[ExecutionResult]:
        """Runs `jobs` in parallel on `num_workers` workers; results in the order of `jobs`."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.config.num_workers, thread_name_prefix="sandbox")
        return list(self._executor.map(lambda job: self.run(job, timeout), jobs))

    def _run(self, job: dict, slot: int, timeout: float) -> ExecutionResult:
        start = time.monotonic()
        uids = self.uids(slot)
        workdir = None
        pass_fds = ()
        info_read = None
        time_limit = min(_time_limit(job.get("time_limit"), self.config.test_timeout), self.config.test_timeout)
        # Limits bound each test, not the number of tests: every stdin/stdout test adds its own time to the deadline
        # and its own room to the report (the judge compares outputs and reports short prefixes of them).
        num_tests = len(job.get("inputs") or ())
        timeout = timeout + num_tests * time_limit
        # A reported character takes up to 12 bytes of JSON (a character outside the BMP is two \\u escapes).
        max_bytes = self.config.max_output_bytes + REPORT_BYTES + num_tests * (REPORT_OUTPUT_CHARS * 12 + 256)
        if self.isolation == "bubblewrap":
            command, cwd = self._bubblewrap_command(), "/"
            info_read, info_write = os.pipe()
            pass_fds = (info_write,)
            command = [command[0], "--info-fd", str(info_write), *command[1:]]
            if self._seccomp is not None:
                # A fresh in-memory file per execution: bubblewrap reads the filter from it.
                seccomp_fd = os.memfd_create("hf-adaptive-decoding-seccomp")
                os.write(seccomp_fd, self._seccomp)
                os.lseek(seccomp_fd, 0, os.SEEK_SET)
                pass_fds = (*pass_fds, seccomp_fd)
                command = [command[0], "--seccomp", str(seccomp_fd), *command[1:]]
            job = {**job, "workdir": "/tmp"}
        else:
            workdir = tempfile.mkdtemp(prefix="hf-adaptive-decoding-sandbox-")
            os.chmod(workdir, 0o1777)
            judge = shutil.copy(JUDGE_PATH, os.path.join(workdir, "sandbox_judge.py"))
            os.chmod(judge, 0o444)
            command, cwd = [self.config.python_executable, "-I", "-S", judge], workdir
            job = {**job, "workdir": workdir}
        nonce = secrets.token_hex(16)
        job = {
            **job,
            "nonce": nonce,
            "python": self.config.python_executable,
            "limits": self._limits(),
            "uids": uids,
            "time_limit": time_limit,
        }
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=self._environment() if self.isolation == "none" else {"PATH": SANDBOX_PATH},
                start_new_session=True,
                pass_fds=pass_fds,
            )
        except BaseException:
            if info_read is not None:
                os.close(info_read)
            raise
        finally:
            for fd in pass_fds:
                os.close(fd)
        init, cgroups = None, None
        try:
            if info_read is not None:
                init = namespace_init(info_read, process.pid, start + timeout - time.monotonic())
                if init is not None and self._cgroup_parents:
                    # The judge waits for its job on stdin: whatever it starts is born in the cgroups.
                    cgroups = ExecutionCgroups(self._cgroup_parents, self.memory_bound_mb << 20)
                    cgroups.add(pid_of(init))
            stdout, stderr, problem = communicate(
                process, json.dumps(job).encode(), max(start + timeout - time.monotonic(), 0.01), max_bytes
            )
        finally:
            self._kill(process, uids, init, cgroups)
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        report = parse_report(stdout, nonce) if problem is None else None
        status = problem or ("ok" if report is not None else "crashed")
        stderr = stderr[: self.config.max_output_bytes].decode(errors="replace")
        return ExecutionResult(status, report, stderr, time.monotonic() - start)

    def _kill(
        self,
        process: subprocess.Popen,
        uids: tuple[int, int] | None,
        init: int | None = None,
        cgroups: ExecutionCgroups | None = None,
    ) -> None:
        """SIGKILL the execution's whole tree (see `sandbox_processes.kill_execution`); without namespaces but as
        root, every process of the worker's uids too."""
        kill_execution(process, init, cgroups, set(uids) if self.isolation == "none" and uids is not None else None)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._slot_locks:
            self._release()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_report(stdout: bytes, nonce: str) -> dict | None:
    """The judge's report: the last line of `stdout` that is a JSON object carrying `nonce`. Never raises: a line
    that is too long, too deeply nested or not JSON at all is skipped."""
    report = None
    for line in stdout.split(b"\n"):
        if not line.startswith(b"{") or nonce.encode() not in line:
            continue
        try:
            candidate = json.loads(line.decode(errors="replace"))
        except Exception:  # noqa: BLE001 - JSONDecodeError, RecursionError, MemoryError...
            continue
        if isinstance(candidate, dict) and candidate.pop("nonce", None) == nonce:
            report = candidate
    return report
