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


def run_filter(number: int, *args: int) -> int:
    """What the filter returns for system call `number` with `args` (a classic BPF interpreter for the opcodes it
    uses)."""
    program = seccomp.seccomp_filter()
    data = struct.pack("<iIQ6Q", number, seccomp.AUDIT_ARCH_X86_64, 0, *args, *[0] * (6 - len(args)))
    instructions = [struct.unpack("<HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    accumulator, pc = 0, 0
    while True:
        code, jump_true, jump_false, k = instructions[pc]
        if code == seccomp.LOAD_WORD:
            accumulator, pc = struct.unpack_from("<I", data, k)[0], pc + 1
        elif code == seccomp.AND:
            accumulator, pc = accumulator & k, pc + 1
        elif code == seccomp.RETURN:
            return k
        else:
            taken = {
                seccomp.JUMP_EQUAL: accumulator == k,
                seccomp.JUMP_AT_LEAST: accumulator >= k,
                seccomp.JUMP_ANY_BIT: bool(accumulator & k),
            }[code]
            pc += 1 + (jump_true if taken else jump_false)


@pytest.mark.skipif(seccomp.seccomp_filter() is None, reason="no filter for this architecture")
def test_filter_decisions_for_sockets_and_locks():
    deny, nothing_done = seccomp.ERRNO | 1, seccomp.ERRNO | 0
    sock_cloexec, sock_nonblock = 0x80000, 0x800
    assert run_filter(seccomp.SOCKETPAIR, 1, 1 | sock_cloexec) == seccomp.ALLOW  # AF_UNIX, SOCK_STREAM
    assert run_filter(seccomp.SOCKETPAIR, 1, 1 | sock_nonblock) == seccomp.ALLOW
    for kind in (2, 5):  # SOCK_DGRAM, SOCK_SEQPACKET
        assert run_filter(seccomp.SOCKETPAIR, 1, kind | sock_cloexec) == deny
    assert run_filter(seccomp.SOCKET, 1, 2) == deny
    # socket() is an allow-list: route netlink only (AF_INET, AF_INET6, AF_PACKET, AF_ALG, AF_VSOCK refused).
    for family in (2, 10, 17, 38, 40):
        for kind in (1, 2, 3 | sock_cloexec):  # SOCK_STREAM, SOCK_DGRAM, SOCK_RAW
            assert run_filter(seccomp.SOCKET, family, kind, 0) == deny
    assert run_filter(seccomp.SOCKET, seccomp.AF_NETLINK, 3 | sock_cloexec, seccomp.NETLINK_ROUTE) == seccomp.ALLOW
    assert run_filter(seccomp.SOCKET, seccomp.AF_NETLINK, 2, 15) == deny  # NETLINK_KOBJECT_UEVENT
    assert run_filter(seccomp.FLOCK, 3, 2) == nothing_done
    for command in seccomp.LOCKS:
        assert run_filter(seccomp.FCNTL, 3, command) == nothing_done
    assert run_filter(seccomp.FCNTL, 3, seccomp.F_SETLEASE) == deny
    for command in (0, 1, 2, 3, 4, 5, 1031):  # F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_GETLK, F_SETPIPE_SZ
        assert run_filter(seccomp.FCNTL, 3, command) == seccomp.ALLOW
    assert run_filter(seccomp.CLONE, seccomp.CLONE_NEWUSER) == deny
    assert run_filter(seccomp.CLONE3) == seccomp.ERRNO | 38  # ENOSYS
    assert run_filter(0, 0) == seccomp.ALLOW  # read


SOCKETS_AND_LOCKS = """
import fcntl, multiprocessing, socket, sqlite3, sys

results = []
for kind in (socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
    try:
        socket.socketpair(socket.AF_UNIX, kind)
        results.append("pair")
    except PermissionError:
        results.append("refused")
with open(sys.executable, "rb") as file:
    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a no-op: it succeeds
    fcntl.lockf(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
    try:
        fcntl.fcntl(file, 1024, 1)  # F_SETLEASE
        results.append("lease")
    except PermissionError:
        results.append("refused")
database = sqlite3.connect("/tmp/db.sqlite")  # SQLite's own locking works on top of no-op locks
database.execute("CREATE TABLE t (x)")
database.execute("INSERT INTO t VALUES (7)")
database.commit()
results.append(database.execute("SELECT x FROM t").fetchone()[0])
with multiprocessing.get_context("fork").Pool(2) as pool:  # stream socketpairs, pipes, semaphores in /dev/shm
    results.append(sum(pool.map(abs, [-1, -2])))
print(*results)
"""


@pytest.mark.skipif(not bubblewrap_available() or seccomp.seccomp_filter() is None, reason="needs bwrap on x86-64")
def test_datagram_socketpairs_and_leases_refused_locks_no_ops_and_multiprocessing_works():
    with Sandbox(SandboxConfig(isolation="bubblewrap", timeout=20)) as sandbox:
        result = sandbox.run({"mode": "stdio", "program": SOCKETS_AND_LOCKS, "inputs": [""], "expected": [""]})
    assert result.report["outputs"] == ["refused refused refused 7 3\n"], result


NO_NETWORK = """
import asyncio, multiprocessing, platform, socket, uuid

results = [len(str(uuid.uuid4())), len(str(uuid.uuid1())), bool(platform.node()), bool(socket.gethostname())]
results.append(sorted(name for _, name in socket.if_nameindex()))  # route netlink
results.append(asyncio.run(asyncio.sleep(0, "asyncio")))  # the event loop's self-pipe is a stream socketpair
with multiprocessing.get_context("fork").Pool(2) as pool:
    results.append(sum(pool.map(abs, [-1, -2])))
for family, kind in [
    (socket.AF_INET, socket.SOCK_STREAM),
    (socket.AF_INET, socket.SOCK_DGRAM),
    (socket.AF_INET6, socket.SOCK_STREAM),
    (socket.AF_VSOCK, socket.SOCK_STREAM),
    (socket.AF_PACKET, socket.SOCK_RAW),
    (socket.AF_NETLINK, socket.SOCK_DGRAM),  # NETLINK_KOBJECT_UEVENT below
]:
    try:
        socket.socket(family, kind, 15 if family == socket.AF_NETLINK else 0)
        results.append("created")
    except PermissionError:
        results.append("refused")
print(*results)
"""


@pytest.mark.skipif(not bubblewrap_available() or seccomp.seccomp_filter() is None, reason="needs bwrap on x86-64")
def test_only_route_netlink_sockets_and_the_standard_library_without_network_works():
    """Red team H1/H2: AF_VSOCK ports are machine-wide (a host bind got EADDRINUSE) and TCP buffers over loopback
    escaped the memory bound; socket() is now an allow-list."""
    with Sandbox(SandboxConfig(isolation="bubblewrap", timeout=20)) as sandbox:
        result = sandbox.run({"mode": "stdio", "program": NO_NETWORK, "inputs": [""], "expected": [""]})
    refused = " ".join(["refused"] * 6)
    assert result.report["outputs"] == [f"36 36 True True ['lo'] asyncio 3 {refused}\n"], result
