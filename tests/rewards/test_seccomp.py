"""The seccomp filter: test_sandbox.py attacks what it refuses; here, ordinary programs keep working under it."""

import struct

import pytest

from hf_adaptive_decoding.rewards import seccomp
from hf_adaptive_decoding.rewards.sandbox import Sandbox, SandboxConfig, bubblewrap_available

ORDINARY = """
import socket, subprocess, sys, threading
from concurrent.futures import ThreadPoolExecutor

results = []
thread = threading.Thread(target=lambda: results.append(sum(range(10))))  # clone3 -> ENOSYS -> clone
thread.start()
thread.join()
with ThreadPoolExecutor(4) as pool:
    results.append(sum(pool.map(abs, [-1, -2, -3])))
left, right = socket.socketpair()  # unix sockets from socketpair stay allowed
left.sendall(b"ok")
results.append(right.recv(2).decode())
results.append(subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True).stdout.strip())
try:
    socket.socket(socket.AF_UNIX)
    results.append("unix socket created")
except PermissionError:
    results.append("refused")
print(*results)
"""


def test_filter_is_whole_instructions_ending_in_allow():
    program = seccomp.seccomp_filter()
    if program is None:
        pytest.skip("no filter for this architecture")
    assert len(program) % 8 == 0
    assert struct.unpack("<HBBI", program[-8:]) == (seccomp.RETURN, 0, 0, seccomp.ALLOW)


def test_no_filter_on_other_architectures(monkeypatch):
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "aarch64")
    assert seccomp.seccomp_filter() is None


@pytest.mark.skipif(not bubblewrap_available() or seccomp.seccomp_filter() is None, reason="needs bwrap on x86-64")
def test_threads_pools_socketpairs_and_subprocesses_still_work():
    with Sandbox(SandboxConfig(isolation="bubblewrap", timeout=20)) as sandbox:
        result = sandbox.run({"mode": "stdio", "program": ORDINARY, "inputs": [""], "expected": [""]})
    assert result.report["outputs"] == ["45 6 ok 7 refused\n"], result
