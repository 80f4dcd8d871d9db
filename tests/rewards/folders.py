"""Host folders for the sandbox tests: which ones a sandboxed program would see under a read-only view of the whole
host (the sandbox before issue 19; today it sees none of them, and the tests put their canaries, sockets and
datasets there to prove it), and which ones every uid can enter."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Root-owned system folders that the sandbox shows read-only and that are usually world-searchable: homes for canary
# folders when the checkout is hidden from the sandbox (under /tmp, /root, /home) or closed to other users (a clone
# in a mode-700 folder).
SYSTEM_FOLDERS = (Path("/var/lib"), Path("/var/cache"), Path("/opt"), Path("/srv"))


def visible_in_sandbox(path: str | os.PathLike) -> bool:
    """Whether a read-only view of the host would show `path`: such a sandbox hid /tmp, /var/tmp, /dev/shm, /root,
    /home, /run and the home folder behind empty folders."""
    home = os.path.realpath(os.path.expanduser("~"))
    hidden = ["/tmp", "/var/tmp", "/dev/shm", "/root", "/home", "/run"] + ([home] if home != "/" else [])
    real = os.path.realpath(path)
    return not any(real == folder or real.startswith(folder + "/") for folder in hidden)


def reachable_by_everyone(path: str | os.PathLike) -> bool:
    """Whether any uid can enter the folder `path`: it and every folder above it are searchable by others (o+x).
    A canary in a folder that is not would be out of a sandboxed program's reach by its permissions alone, and would
    prove nothing about the sandbox."""
    real = Path(os.path.realpath(path))
    try:
        return all(stat.S_IMODE(folder.stat().st_mode) & stat.S_IXOTH for folder in (real, *real.parents))
    except OSError:
        return False


def shared_parent(*preferred: str | os.PathLike) -> Path | None:
    """The first of `preferred`, then of `SYSTEM_FOLDERS`, that exists, that this process may write, that the sandbox
    sees and that every uid can enter; `None` when there is none."""
    for candidate in (*map(Path, preferred), *SYSTEM_FOLDERS):
        if (
            candidate.is_dir()
            and os.access(candidate, os.W_OK)
            and visible_in_sandbox(candidate)
            and reachable_by_everyone(candidate)
        ):
            return candidate
    return None
