"""The processes of a sandboxed execution: its cgroups (a memory cap for the whole execution, `cgroup.kill`), a pidfd
on its PID namespace's init, and killing its whole process tree from outside, whatever its processes do."""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import signal
import subprocess
import time

logger = logging.getLogger(__name__)

# Room the judge and the two interpreters need on top of the program's own memory, in a memory cgroup.
CGROUP_OVERHEAD_MB = 64
# How long kill_execution waits for the namespace's init to report its exit (its whole namespace gone).
INIT_EXIT_WAIT_MS = 2000


def own_cgroups() -> dict[str, str]:
    """Folders of this process's cgroups that it may create children in: `"memory"` (cgroup v1's memory controller)
    and `"unified"` (cgroup v2, for `cgroup.kill`, and `memory.max` when the memory controller is enabled there)."""
    found = {}
    try:
        with open("/proc/self/cgroup") as file:
            lines = file.read().splitlines()
    except OSError:
        return found
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            roots = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            kind = "unified"
        elif "memory" in controllers.split(","):
            roots, kind = ["/sys/fs/cgroup/memory"], "memory"
        else:
            continue
        for root in roots:
            folder = os.path.normpath(root + path)
            marker = "cgroup.kill" if kind == "unified" else "memory.limit_in_bytes"
            if kind == "unified" and not os.path.exists(os.path.join(root, "cgroup.controllers")):
                continue
            if os.path.isdir(folder) and os.access(folder, os.W_OK):
                if kind == "memory" and not os.path.exists(os.path.join(folder, marker)):
                    continue
                found[kind] = folder
                break
    return found


class ExecutionCgroups:
    """The execution's cgroups, when this process may create them (root, usually): a v1 memory cgroup capping the
    whole execution's memory (processes, /tmp files, pipe buffers), a v2 cgroup whose `cgroup.kill` kills every
    process in it. Every step is best effort: without them, the pidfd on the namespace's init does the killing."""

    def __init__(self, parents: dict[str, str], limit_bytes: int) -> None:
        name = f"hf-adaptive-decoding-{secrets.token_hex(8)}"
        self.folders = {}
        for kind, parent in parents.items():
            folder = os.path.join(parent, name)
            try:
                os.mkdir(folder)
            except OSError:
                continue
            self.folders[kind] = folder
            limits = {"memory.limit_in_bytes": limit_bytes, "memory.memsw.limit_in_bytes": limit_bytes}
            if kind == "unified":
                limits = {"memory.max": limit_bytes, "memory.swap.max": 0}
            for file, value in limits.items():
                self._write(folder, file, value)

    @staticmethod
    def _write(folder: str, file: str, value) -> bool:
        try:
            with open(os.path.join(folder, file), "w") as handle:
                handle.write(str(value))
            return True
        except OSError:
            return False

    def add(self, pid: int) -> None:
        for folder in self.folders.values():
            self._write(folder, "cgroup.procs", pid)

    def kill(self) -> None:
        """SIGKILL every process in the v2 cgroup (`cgroup.kill`), when there is one."""
        unified = self.folders.get("unified")
        if unified is not None:
            self._write(unified, "cgroup.kill", 1)

    def kill_and_remove(self) -> None:
        self.kill()
        for folder in self.folders.values():
            for _ in range(50):
                try:
                    os.rmdir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            else:
                logger.warning("could not remove cgroup %s", folder)


def memory_controlled(parents: dict[str, str]) -> bool:
    """Whether cgroups created in `parents` (from `own_cgroups`) get a memory limit."""
    if "memory" in parents:
        return True
    unified = parents.get("unified")
    return unified is not None and "memory" in read_text(os.path.join(unified, "cgroup.subtree_control")).split()


def namespace_init(info_fd: int, bubblewrap_pid: int, timeout: float) -> int | None:
    """A pidfd on the sandbox's init (bubblewrap's child, the judge), read from bubblewrap's `--info-fd`; closes
    `info_fd`. `None` when bubblewrap died first or wrote nothing in time (bubblewrap's session is killed anyway)."""
    data = b""
    deadline = time.monotonic() + max(timeout, 0.01)
    try:
        while len(data) < 4096:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([info_fd], [], [], remaining)[0]:
                return None
            chunk = os.read(info_fd, 4096)
            if not chunk:
                break
            data += chunk
            if b"}" in chunk:
                break
    finally:
        os.close(info_fd)
    try:
        pid = int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    # The pidfd pins a process; it is the sandbox's init only if bubblewrap is its parent (a pid is not reused
    # while bubblewrap has not reaped it).
    if parent_of(pid) != bubblewrap_pid:
        os.close(pidfd)
        return None
    return pidfd


def read_text(path: str) -> str:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return ""


def pid_of(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as info:
        return next(int(line.split()[1]) for line in info if line.startswith("Pid:"))


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def processes_of(uids: set[int]) -> list[int]:
    """PIDs of the processes whose real uid is in `uids`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) in uids:
                            found.append(int(entry))
                        break
        except OSError:
            continue
    return found


def kill_processes_of(uids: set[int]) -> None:
    """SIGKILL every process of `uids` until none is left (a fork bomb may still be forking)."""
    for _ in range(100):
        pids = processes_of(uids)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def kill_execution(
    process: subprocess.Popen,
    init: int | None = None,
    cgroups: ExecutionCgroups | None = None,
    uids: set[int] | None = None,
) -> None:
    """SIGKILL the whole tree, from outside the sandbox whatever its processes do: the execution's cgroup (when
    there is one), the namespace's init `init` (a pidfd, closed here; the kernel then kills every process of its PID
    namespace, and the pidfd reports the init's exit once they are all gone: waited for, up to 2 s), bubblewrap's
    session (`process`, reaped and its pipes closed) and every process of `uids` (without namespaces but as root);
    then removes the cgroups."""
    if cgroups is not None:
        cgroups.kill()
    if init is not None:
        try:
            signal.pidfd_send_signal(init, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            # The init's pidfd reports its exit once the kernel has killed and reaped every other process of its
            # namespace: waiting for it (bounded) means nothing of the execution outlives this call.
            poller = select.poll()
            poller.register(init, select.POLLIN)
            poller.poll(INIT_EXIT_WAIT_MS)
        finally:
            os.close(init)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None and not stream.closed:
            stream.close()
    if uids:
        kill_processes_of(uids)
    if cgroups is not None:
        cgroups.kill_and_remove()
