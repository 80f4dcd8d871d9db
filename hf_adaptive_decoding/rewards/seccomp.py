"""
The seccomp filter bubblewrap loads into the sandbox (`bwrap --seccomp FD`): a classic BPF program, written here
because bubblewrap takes a compiled filter and the one library that compiles them (libseccomp) has no maintained
wheel on PyPI.

It refuses, with `EPERM`, the system calls a generated program has no use for and that widen the kernel's attack
surface or reach outside the namespaces: new user namespaces (`unshare`, `clone` with `CLONE_NEWUSER`), joining
namespaces, mounting, `ptrace` and cross-process memory access, keyrings, eBPF, perf events, userfaultfd, io_uring,
kernel modules and kexec, every `socket()` call but `socket(AF_NETLINK, ..., NETLINK_ROUTE)` and
`socketpair(AF_UNIX, ...)` of any type but `SOCK_STREAM`, and file leases (`fcntl(F_SETLEASE)`). `socket()` is an
allow-list: the network namespace has nothing but a loopback of its own, so a generated program has no use for a
socket, and some families reach outside it (`AF_VSOCK` ports are machine-wide and reach the hypervisor; a
read-only mount does not stop `connect()` to a host unix socket file the sandbox can see) or escape the memory
bound (TCP buffers queued over loopback connections are not charged to a v1 memory cgroup, nor to any cgroup as
an ordinary user). What the standard library needs without a network stays allowed: route netlink, namespaced,
for `getifaddrs`, `if_nameindex` and `getaddrinfo`; stream socketpairs, which `socket.socketpair()`, asyncio's
event loop and multiprocessing use, connected already (a datagram pair can `sendto()` any socket path);
`socket.gethostname()` and `platform.node()` call `uname`. File locks (`flock`, and `fcntl` with `F_SETLK`,
`F_SETLKW`, `F_OFD_SETLK`, `F_OFD_SETLKW`) succeed without doing anything: a lock on a file the host shares with
the sandbox (the interpreter, its libraries) would otherwise block host processes. `clone3` gets `ENOSYS`, so that
the C library falls back to `clone`, whose flags a filter can read. Calls through another ABI (i386, x32) are
refused.

Only x86-64 is covered; [`seccomp_filter`] returns `None` elsewhere and the sandbox says so.
"""

from __future__ import annotations

import errno
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000
AF_UNIX, AF_NETLINK, NETLINK_ROUTE = 1, 16, 0
SOCK_STREAM, SOCK_TYPE_MASK = 1, 0xF  # the type without SOCK_NONBLOCK and SOCK_CLOEXEC
# fcntl commands (asm-generic/fcntl.h, linux/fcntl.h).
LOCKS = (6, 7, 37, 38)  # F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW
F_SETLEASE = 1024

# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SOCKET, SOCKETPAIR, CLONE, FCNTL, FLOCK, CLONE3 = 41, 53, 56, 72, 73, 435
DENIED = {
    "ptrace": 101,
    "pivot_root": 155,
    "mount": 165,
    "umount2": 166,
    "init_module": 175,
    "delete_module": 176,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}

# Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
LOAD_WORD = 0x20  # BPF_LD | BPF_W | BPF_ABS
JUMP_EQUAL = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JUMP_AT_LEAST = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JUMP_ANY_BIT = 0x45  # BPF_JMP | BPF_JSET | BPF_K
AND = 0x54  # BPF_ALU | BPF_AND | BPF_K
RETURN = 0x06  # BPF_RET | BPF_K
ALLOW = 0x7FFF0000
ERRNO = 0x00050000
# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (the low half first, little-endian).
NUMBER, ARCH, FIRST_ARGUMENT, SECOND_ARGUMENT, THIRD_ARGUMENT = 0, 4, 16, 24, 32


def _instruction(code: int, k: int, jump_true: int = 0, jump_false: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jump_true, jump_false, k)


def seccomp_filter() -> bytes | None:
    """The compiled filter (an array of `struct sock_filter`) for this machine, or `None` when its architecture is
    not covered."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    deny, unavailable, nothing_done = ERRNO | errno.EPERM, ERRNO | errno.ENOSYS, ERRNO | 0
    program = [
        _instruction(LOAD_WORD, ARCH),
        _instruction(JUMP_EQUAL, AUDIT_ARCH_X86_64, 1, 0),
        _instruction(RETURN, deny),
        _instruction(LOAD_WORD, NUMBER),
        _instruction(JUMP_AT_LEAST, X32_SYSCALL_BIT, 0, 1),
        _instruction(RETURN, deny),
    ]
    for number in DENIED.values():
        program += [_instruction(JUMP_EQUAL, number, 0, 1), _instruction(RETURN, deny)]
    program += [_instruction(JUMP_EQUAL, CLONE3, 0, 1), _instruction(RETURN, unavailable)]
    # socket(family, type, protocol) is refused unless it is socket(AF_NETLINK, type, NETLINK_ROUTE).
    program += [
        _instruction(JUMP_EQUAL, SOCKET, 0, 6),
        _instruction(LOAD_WORD, FIRST_ARGUMENT),
        _instruction(JUMP_EQUAL, AF_NETLINK, 0, 2),
        _instruction(LOAD_WORD, THIRD_ARGUMENT),
        _instruction(JUMP_EQUAL, NETLINK_ROUTE, 1, 0),
        _instruction(RETURN, deny),
        _instruction(RETURN, ALLOW),
    ]
    # socketpair(AF_UNIX, type, ...) is refused unless type is SOCK_STREAM.
    program += [
        _instruction(JUMP_EQUAL, SOCKETPAIR, 0, 7),
        _instruction(LOAD_WORD, FIRST_ARGUMENT),
        _instruction(JUMP_EQUAL, AF_UNIX, 0, 4),
        _instruction(LOAD_WORD, SECOND_ARGUMENT),
        _instruction(AND, SOCK_TYPE_MASK),
        _instruction(JUMP_EQUAL, SOCK_STREAM, 1, 0),
        _instruction(RETURN, deny),
        _instruction(RETURN, ALLOW),
    ]
    # flock() and fcntl()'s lock commands return 0 without running (SECCOMP_RET_ERRNO with errno 0); leases are
    # refused; every other fcntl() is allowed.
    program += [_instruction(JUMP_EQUAL, FLOCK, 0, 1), _instruction(RETURN, nothing_done)]
    program += [
        _instruction(JUMP_EQUAL, FCNTL, 0, 9),
        _instruction(LOAD_WORD, SECOND_ARGUMENT),
        *(_instruction(JUMP_EQUAL, command, 4 - index, 0) for index, command in enumerate(LOCKS)),
        _instruction(JUMP_EQUAL, F_SETLEASE, 1, 2),
        _instruction(RETURN, nothing_done),
        _instruction(RETURN, deny),
        _instruction(RETURN, ALLOW),
    ]
    # clone(flags, ...) with CLONE_NEWUSER is refused; threads and processes are allowed.
    program += [
        _instruction(JUMP_EQUAL, CLONE, 0, 4),
        _instruction(LOAD_WORD, FIRST_ARGUMENT),
        _instruction(JUMP_ANY_BIT, CLONE_NEWUSER, 0, 1),
        _instruction(RETURN, deny),
        _instruction(RETURN, ALLOW),
    ]
    program.append(_instruction(RETURN, ALLOW))
    return b"".join(program)
