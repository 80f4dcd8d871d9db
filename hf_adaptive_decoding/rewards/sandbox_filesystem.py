"""The sandbox's filesystem: the files an interpreter needs (its executable, standard library without site-packages,
the shared libraries they load), found once per interpreter, and the bubblewrap arguments that build a root holding
only those, a few devices, /proc, a size-capped /tmp and the judge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

# Where the judge script appears inside a bubblewrap sandbox (/run is replaced by an empty tmpfs).
SANDBOX_JUDGE_PATH = "/run/hf_adaptive_decoding/sandbox_judge.py"

# Run by the target interpreter (standard library only): what it loads, so that the sandbox can show it that and
# nothing else of the host.
_PROBE = r"""
import json, os, sys, sysconfig
paths = sysconfig.get_paths()
stdlib = sorted({os.path.realpath(paths[name]) for name in ("stdlib", "platstdlib") if os.path.isdir(paths[name])})
dynload = [os.path.realpath(p) for p in sys.path if os.path.basename(p) == "lib-dynload" and os.path.isdir(p)]
extensions = sorted(
    os.path.join(folder, name) for folder in dynload for name in os.listdir(folder) if name.endswith(".so")
)
hidden = sorted(
    {
        os.path.join(folder, name)
        for folder in stdlib
        for name in ("site-packages", "dist-packages")
        if os.path.isdir(os.path.join(folder, name))
    }
)
print(json.dumps({"executable": os.path.realpath(sys.executable), "folders": stdlib + dynload,
                  "extensions": extensions, "hidden": hidden}))
"""


@dataclass(frozen=True)
class InterpreterFiles:
    """What an interpreter needs in the sandbox: `files` and `folders` bound read-only at their host paths,
    `symlinks` (path -> target) recreated on the way to them (merged /usr, library aliases), `hidden` folders inside
    them (site-packages) covered by empty read-only ones."""

    files: tuple[str, ...]
    folders: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]
    hidden: tuple[str, ...]

    @property
    def parents(self) -> list[str]:
        """The folders above everything bound or linked (parents before children)."""
        paths = [*self.files, *self.folders, *(link for link, _ in self.symlinks)]
        above = {str(parent) for path in paths for parent in Path(path).parents if str(parent) != "/"}
        return sorted(path for path in above if not any(path == f or path.startswith(f + "/") for f in self.folders))


_interpreters: dict[str, InterpreterFiles] = {}
_interpreters_lock = threading.Lock()


def _resolve(path: str, links: dict[str, str]) -> str:
    """The real path of `path`, recording in `links` every symlink met on the way (the way the kernel walks it)."""
    current, parts, steps = "/", [part for part in path.split("/") if part], 0
    while parts:
        steps += 1
        if steps > 256:
            raise RuntimeError(f"too many symlinks on the way to {path!r}")
        candidate = os.path.join(current, parts.pop(0))
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            links[candidate] = target
            parts = [part for part in os.path.normpath(os.path.join(current, target)).split("/") if part] + parts
            current = "/"
        else:
            current = candidate
    return current


def _shared_libraries(paths: list[str]) -> list[str]:
    """The shared libraries (as the dynamic loader names them, e.g. /lib/x86_64-linux-gnu/libffi.so.8) and the ELF
    loader that `paths` (executables and extension modules) need, from `ldd`."""
    ldd = shutil.which("ldd") or "/usr/bin/ldd"
    if not os.access(ldd, os.X_OK):
        raise RuntimeError(
            "The bubblewrap sandbox finds the shared libraries of the interpreter with `ldd` (Debian package "
            "libc-bin), which is missing here."
        )
    found = set()
    for start in range(0, len(paths), 64):
        completed = subprocess.run(
            [ldd, *paths[start : start + 64]], capture_output=True, text=True, timeout=120, env={"LC_ALL": "C"}
        )
        for line in completed.stdout.splitlines():
            line = line.strip()
            if "=>" in line:
                line = line.split("=>", 1)[1].strip()
            path = line.split(" (", 1)[0].strip()
            if path.startswith("/") and not path.endswith(":") and os.path.exists(path):
                found.add(path)
    return sorted(found)


def interpreter_files(python: str) -> InterpreterFiles:
    """The files `python` needs to run its standard library (found once per interpreter): the executable, its
    standard library without site-packages, the shared libraries of the executable and of every extension module,
    the ELF loader and the loader's cache."""
    with _interpreters_lock:
        if python in _interpreters:
            return _interpreters[python]
        completed = subprocess.run(
            [python, "-I", "-S", "-c", _PROBE], capture_output=True, text=True, timeout=120, env={}, cwd="/"
        )
        if completed.returncode != 0:
            raise RuntimeError(f"could not inspect {python!r}: {completed.stderr[-2000:]}")
        probe = json.loads(completed.stdout)
        links: dict[str, str] = {}
        folders = {_resolve(folder, links) for folder in probe["folders"]}
        files = {_resolve(probe["executable"], links)}
        needed = [python, probe["executable"], *probe["extensions"]]
        cache = ["/etc/ld.so.cache"] if os.path.isfile("/etc/ld.so.cache") else []
        files.update(_resolve(path, links) for path in [*_shared_libraries(needed), *cache])

        def inside_folder(path: str) -> bool:
            return any(path.startswith(folder + "/") for folder in folders)

        folders = {folder for folder in folders if not inside_folder(folder)}
        result = InterpreterFiles(
            files=tuple(sorted(path for path in files if not inside_folder(path))),
            folders=tuple(sorted(folders)),
            symlinks=tuple(sorted((link, target) for link, target in links.items() if not inside_folder(link))),
            hidden=tuple(probe["hidden"]),
        )
        _interpreters[python] = result
        return result


def filesystem_arguments(python: str, tmp_size_mb: int, judge_path: str | os.PathLike) -> list[str]:
    """bubblewrap arguments building the sandbox's filesystem from nothing: the interpreter, its standard library and
    the libraries they load (read-only, at their host paths), a few devices, its own /proc (with /proc/sys
    read-only), a size-capped /tmp (the program's folder; /dev/shm and /var/tmp point into it) and the judge at
    `SANDBOX_JUDGE_PATH`. No other host file, socket or folder exists in it."""
    files = interpreter_files(python)
    arguments = []
    # Parent folders first, world-searchable (bubblewrap would create them private).
    for folder in sorted({*files.parents, "/dev", "/var"}):
        arguments += ["--perms", "0755", "--dir", folder]
    for path in (*files.folders, *files.files):
        arguments += ["--ro-bind", path, path]
    for path in files.hidden:
        arguments += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
    for link, target in files.symlinks:
        arguments += ["--symlink", target, link]
    for device in ("null", "zero", "full", "random", "urandom"):
        arguments += ["--dev-bind", f"/dev/{device}", f"/dev/{device}"]
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        arguments += ["--symlink", target, f"/dev/{name}"]
    arguments += ["--symlink", "/proc/self/fd/2", "/dev/stderr", "--symlink", "/tmp", "/dev/shm"]
    arguments += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]
    arguments += ["--perms", "1777", "--size", str(tmp_size_mb << 20), "--tmpfs", "/tmp"]
    arguments += ["--symlink", "/tmp", "/var/tmp"]
    arguments += ["--perms", "0755", "--dir", os.path.dirname(SANDBOX_JUDGE_PATH)]
    return [*arguments, "--ro-bind", str(judge_path), SANDBOX_JUDGE_PATH, "--remount-ro", "/"]
