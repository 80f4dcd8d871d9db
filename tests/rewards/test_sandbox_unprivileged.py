"""The sandbox as most users run it: not as root. bubblewrap then works through a user namespace, program and judge
share the user's uid, and the process limit is counted inside that namespace. Run here as uid 65534 (nobody)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.rewards.folders import SYSTEM_FOLDERS, reachable_by_everyone, shared_parent

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root (to become nobody), setpriv and a system Python readable by nobody",
)

# Runs as nobody with the system Python: the sandbox needs the standard library only, so its two modules are loaded
# without the package's __init__ (which imports torch, out of nobody's reach here).
SCENARIO = """
import json, os, sys, time, types
package = types.ModuleType("hf_adaptive_decoding")
package.__path__ = [sys.argv[1]]
sys.modules["hf_adaptive_decoding"] = package
from hf_adaptive_decoding.rewards.sandbox import Sandbox, SandboxConfig

canary, marker = sys.argv[2], sys.argv[3]
sandbox = Sandbox(SandboxConfig(isolation="bubblewrap", python_executable=sys.executable, timeout=4,
                                test_timeout=2, num_workers=2, max_processes=16, memory_mb=256))
attacks = {
    "correct": "print(sum(map(int, input().split())))",
    "fork_bomb": "import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass",
    "kill_everything": "import os, time\\nos.kill(-1, 9)\\ntime.sleep(60)",
    "overwrite_canary": f"open({canary!r}, 'w').write('owned')\\nprint(3)",
    "delete_canary": f"import os\\nos.remove({canary!r})\\nprint(3)",
    "network": "import socket\\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\\nprint(3)",
    "secret": "import os\\nprint(os.environ.get('HFAD_CANARY_SECRET', 'none'))",
    "survivor": "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    if os.fork() == 0:\\n"
                f"        os.execvp('sleep', ['sleep', '300', {marker!r}])\\n    os._exit(0)\\nprint(3)",
}
expected = {"secret": os.environ["HFAD_CANARY_SECRET"]}
jobs = [{"mode": "stdio", "program": program, "inputs": ["1 2\\n"], "expected": [expected.get(name, "3")]}
        for name, program in attacks.items()]
start = time.monotonic()
results = sandbox.run_many(jobs)
print(json.dumps({
    "isolation": sandbox.isolation,
    "as_root": sandbox.as_root,
    "seconds": time.monotonic() - start,
    "results": {name: [r.status, (r.report or {}).get("outputs")] for name, r in zip(attacks, results)},
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
SANDBOX_MODULES = ("__init__.py", "sandbox.py", "sandbox_judge.py", "seccomp.py")


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


def test_unprivileged_sandbox_holds(public_tmp):
    tmp_path = public_tmp
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    canary = folder / "canary.txt"
    canary.write_text("intact")
    canary.chmod(0o666)  # nobody may write it: only the sandbox's read-only view protects it
    assert reachable_by_everyone(folder)
    marker = f"hfad-unprivileged-{os.getpid()}"
    script = tmp_path / "scenario.py"
    script.write_text(textwrap.dedent(SCENARIO))
    script.chmod(0o644)
    environment = {"PATH": "/usr/bin:/bin", "HFAD_CANARY_SECRET": "s3cr3t-7c1e", "HOME": "/nonexistent"}
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, str(script)]
    command += [str(copy_sandbox_modules(tmp_path)), str(canary), marker]
    run = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, cwd=folder)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert (outcome["isolation"], outcome["as_root"]) == ("bubblewrap", False)
    results = outcome["results"]
    assert results["correct"] == ["ok", ["3\n"]]
    for name in ("fork_bomb", "kill_everything", "network"):
        assert results[name][1] != ["3\n"], (name, results[name])
    for name in ("overwrite_canary", "delete_canary"):
        assert results[name][1] == [None], (name, results[name])  # read-only: the write raised, the program died
    assert results["secret"][1] == ["none\n"]
    assert canary.read_text() == "intact"
    assert surviving(marker) == []
    assert outcome["seconds"] < 30
    print(results, file=sys.stderr)
