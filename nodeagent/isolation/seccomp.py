"""The sandbox's seccomp policy: an allow-list modelled on Docker's default profile.

Untrusted code reaches the kernel through every syscall the filter lets through, so the
policy starts from "deny everything with EPERM" and allows what Python, Node and Bash with
coreutils actually use: the x86_64 part of moby/profiles ``seccomp/default.json``, minus the
calls Docker only grants with capabilities a sandbox never has, minus a few Docker allows
but a sandbox for AI-written code has no use for (ptrace, process_vm_*, name_to_handle_at,
adjtimex, clock_adjtime, modify_ldt).

The policy is built with libseccomp (through ``pyseccomp``) and never hand-assembled. It is
compiled to BPF once, in the long-lived agent (:func:`compile_filter`); each sandbox child
then only copies the bytes into the kernel (:func:`install`), which is cheaper than having
libseccomp rebuild the program in every fork.

Argument checks compare only the low 32 bits when the kernel reads the argument as a 32-bit
``int``: the kernel drops the high bits, so a full 64-bit compare could be bypassed by
setting them (CVE-2019-10063, TIOCSTI with a high bit set). libseccomp cannot add a rule
whose action equals the default one, so "allow X except these values" is written as ALLOW
rules covering every other value (see :func:`_low32_except`).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from typing import Final

import pyseccomp

__all__ = ["DENIED_SYSCALLS", "build_filter", "compile_filter", "install"]

_ALLOWED_SYSCALLS: Final[tuple[str, ...]] = (
    # Processes and threads. clone is allowed below only without namespace flags.
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "arch_prctl",
    "set_thread_area", "get_thread_area", "gettid", "getpid", "getppid", "getpgid",
    "getpgrp", "setpgid", "getsid", "setsid", "kill", "tkill", "tgkill", "pidfd_open",
    "pidfd_send_signal", "prlimit64", "getrlimit", "setrlimit", "getrusage", "times",
    # prctl and seccomp stay allowed, as in Docker: a filter can only be added, never
    # removed, and the most restrictive stacked filter wins, so programs that sandbox
    # themselves (Chromium, systemd-style services) keep working.
    "prctl", "seccomp",
    # Credentials. The sandbox runs without capabilities, so the kernel refuses any change
    # a process is not entitled to.
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
    "setfsgid", "setgroups", "capget", "capset",
    # Signals.
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack", "pause",
    "alarm", "restart_syscall", "signalfd", "signalfd4",
    # Memory. map_shadow_stack: glibc with CET shadow stacks; mseal: newer glibc.
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync", "mlock",
    "mlock2", "munlock", "mlockall", "munlockall", "remap_file_pages", "membarrier",
    "memfd_create", "memfd_secret", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "map_shadow_stack", "mseal", "process_mrelease",
    # Time and timers (reading only; setting the clock is denied).
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime",
    "timer_getoverrun", "timer_delete", "timerfd_create", "timerfd_settime",
    "timerfd_gettime",
    # Scheduling. Raising priority beyond the rlimits needs CAP_SYS_NICE, which is absent.
    "sched_yield", "sched_setparam", "sched_getparam", "sched_setscheduler",
    "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "sched_setaffinity", "sched_getaffinity", "sched_setattr",
    "sched_getattr", "getpriority", "setpriority", "ioprio_get", "ioprio_set", "getcpu",
    # Futexes: locks, condition variables, thread joins.
    "futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
    # File descriptors and data.
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "lseek", "close", "close_range", "dup", "dup2", "dup3", "fcntl",
    "flock", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "fadvise64",
    "readahead", "fallocate", "truncate", "ftruncate", "sendfile", "splice", "tee",
    "vmsplice", "copy_file_range", "cachestat", "pipe", "pipe2",
    # Paths and metadata, with the *at variants and their newer flag-taking versions.
    "open", "openat", "openat2", "creat", "stat", "fstat", "lstat", "newfstatat", "statx",
    "statfs", "fstatfs", "access", "faccessat", "faccessat2", "getcwd", "chdir", "fchdir",
    "mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat",
    "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat", "chmod",
    "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "umask",
    "utime", "utimes", "utimensat", "futimesat", "mknod", "mknodat", "getdents",
    "getdents64", "statmount", "listmount",
    # Extended attributes.
    "setxattr", "lsetxattr", "fsetxattr", "getxattr", "lgetxattr", "fgetxattr",
    "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr",
    "fremovexattr", "setxattrat", "getxattrat", "listxattrat", "removexattrat",
    # Polling and event notification (libuv, asyncio). fanotify_mark is harmless without
    # fanotify_init, which is denied.
    "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "inotify_init",
    "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
    # Linux native AIO (libaio). io_uring is denied: libuv falls back to its thread pool.
    "io_setup", "io_destroy", "io_getevents", "io_pgetevents", "io_submit", "io_cancel",
    # Sockets. socket and socketpair are allowed below for all but two families.
    "connect", "accept", "accept4", "bind", "listen", "shutdown", "getsockname",
    "getpeername", "setsockopt", "getsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg",
    "sendmmsg", "recvmmsg",
    # System V and POSIX message queues, semaphores and shared memory, confined by the
    # sandbox's IPC namespace.
    "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # System information.
    "uname", "sysinfo", "getrandom",
    # Unprivileged self-sandboxing.
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    # Called by the kernel's uretprobe trampoline when the host traces a sandboxed binary.
    "uretprobe",
)

# x86_64 numbers of allowed syscalls newer than libseccomp 2.5.4's table (Debian 12).
# Syscall numbers are ABI, so these stay right when libseccomp learns the names.
_NUMBERS_UNKNOWN_TO_LIBSECCOMP: Final[dict[str, int]] = {
    "uretprobe": 335,
    "statmount": 457,
    "listmount": 458,
    "mseal": 462,
    "setxattrat": 463,
    "getxattrat": 464,
    "listxattrat": 465,
    "removexattrat": 466,
}

DENIED_SYSCALLS: Final[tuple[str, ...]] = (
    # Mounts and the filesystem view.
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "swapon", "swapoff", "quotactl",
    "quotactl_fd",
    # Namespaces: unshare and setns outright, clone only with namespace flags (below).
    "unshare", "setns",
    # Reaching into other processes.
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd",
    "kcmp",
    # Kernel attack surface with a long CVE history and no use in a sandbox.
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init", "modify_ldt",
    # Obsolete: gone from current kernels, only their numbers remain.
    "lookup_dcookie", "nfsservctl",
    # Bypassing path-based checks with file handles ("Shocker").
    "open_by_handle_at", "name_to_handle_at",
    # Host-wide state: kernel, modules, power, clock, logs, terminal, hardware ports.
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "acct", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
    "syslog", "sethostname", "setdomainname", "vhangup", "iopl", "ioperm",
    # NUMA placement: Docker grants these only with CAP_SYS_NICE.
    "mbind", "set_mempolicy", "get_mempolicy", "migrate_pages", "move_pages",
)
"""Syscalls the policy refuses on purpose, each with EPERM.

Everything not allowed is refused too; these are listed so tests and docs can name them.
clone3 is refused separately with ENOSYS (see :func:`build_filter`).
"""

# clone flags that create namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID and
# NEWNET. CLONE_NEWTIME (0x80) cannot be passed to clone(): those bits carry the exit signal.
_CLONE_NAMESPACE_FLAGS: Final = 0x7E020000

_TIOCSTI: Final = 0x5412  # pushes bytes into a terminal's input: keystroke injection
_TIOCLINUX: Final = 0x541C  # virtual-console tricks, including selection paste

_AF_ALG: Final = 38  # the kernel crypto API as sockets: a frequent source of kernel bugs
_AF_VSOCK: Final = 40  # talks to the hypervisor, past the sandbox's network namespace

# personality() values Docker allows: PER_LINUX, PER_LINUX32, UNAME26 alone and with
# PER_LINUX32, and 0xffffffff, which only queries. Everything else, e.g. READ_IMPLIES_EXEC
# or ADDR_NO_RANDOMIZE, would weaken exploit mitigations in what the sandbox executes.
_PERSONALITIES: Final[tuple[int, ...]] = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

_LOW32: Final = 0xFFFFFFFF
_BPF_INSN_SIZE: Final = 8  # sizeof(struct sock_filter)
_BPF_MAXINSNS: Final = 4096

_PR_SET_NO_NEW_PRIVS: Final = 38
_SYS_SECCOMP: Final = 317  # x86_64
_SECCOMP_SET_MODE_FILTER: Final = 1


class _SockFprog(ctypes.Structure):
    """struct sock_fprog: the program handed to seccomp(2)."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# Resolved at import so install(), which runs in a freshly forked child, does no lookups.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
_libc.prctl.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


def _syscall_number(name: str) -> int:
    """x86_64 number of *name*; fails loudly on a typo rather than dropping the rule."""
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    if number >= 0:
        return number
    if name in _NUMBERS_UNKNOWN_TO_LIBSECCOMP:
        return _NUMBERS_UNKNOWN_TO_LIBSECCOMP[name]
    raise ValueError(f"{name!r} is not an x86_64 syscall")


def _low32_except(excluded: frozenset[int]) -> list[tuple[int, int]]:
    """(mask, value) pairs whose MASKED_EQ tests together match every low-32-bit value
    except *excluded*, whatever the high 32 bits hold.

    Walks the binary trie of 32-bit values from the top bit: a subtree holding no excluded
    value becomes one pair (its prefix under a mask of the bits fixed so far). Two excluded
    values cost 34 pairs.
    """
    pairs: list[tuple[int, int]] = []

    def cover(prefix: int, bit: int, inside: frozenset[int]) -> None:
        if not inside:
            pairs.append(((_LOW32 << (bit + 1)) & _LOW32, prefix))
        elif bit >= 0:
            for half in (0, 1 << bit):
                same_half = frozenset(v for v in inside if v & (1 << bit) == half)
                cover(prefix | half, bit - 1, same_half)

    cover(0, 31, excluded)
    return pairs


def build_filter() -> pyseccomp.SyscallFilter:
    """The sandbox policy as a libseccomp filter, native x86_64 ABI only.

    Default action EPERM. A syscall from another ABI (i386 through ``int 0x80``, x32
    numbers with bit 30 set) takes libseccomp's bad-arch action, set to EPERM as well, so
    the 32-bit syscall tables cannot be used to dodge the argument checks.
    """
    if pyseccomp.system_arch() != pyseccomp.Arch.X86_64:
        raise RuntimeError("the seccomp policy is written for x86_64 syscall numbers")
    deny = pyseccomp.ERRNO(errno.EPERM)
    allow = pyseccomp.ALLOW
    policy = pyseccomp.SyscallFilter(deny)
    policy.set_attr(pyseccomp.Attr.ACT_BADARCH, deny)
    # Binary search over syscall numbers instead of a linear chain of ~290 compares.
    policy.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)

    for name in _ALLOWED_SYSCALLS:
        policy.add_rule(allow, _syscall_number(name))

    # fork-like clone is fine, namespace creation is not. On x86_64 the flags are arg0
    # (s390 swaps the first two arguments).
    no_namespaces = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _CLONE_NAMESPACE_FLAGS, 0)
    policy.add_rule(allow, "clone", no_namespaces)
    # clone3 passes its flags in memory, where BPF cannot look. ENOSYS makes glibc (2.34+)
    # fall back to clone, whose flags are checked above.
    policy.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")

    # ioctl's cmd, socket's family and the persona are 32-bit to the kernel: compare the
    # low 32 bits only, or setting a high bit would slip past a rule the kernel then ignores.
    for mask, value in _low32_except(frozenset({_TIOCSTI, _TIOCLINUX})):
        policy.add_rule(allow, "ioctl", pyseccomp.Arg(1, pyseccomp.MASKED_EQ, mask, value))
    for mask, value in _low32_except(frozenset({_AF_ALG, _AF_VSOCK})):
        for name in ("socket", "socketpair"):
            policy.add_rule(allow, name, pyseccomp.Arg(0, pyseccomp.MASKED_EQ, mask, value))
    for persona in _PERSONALITIES:
        only_persona = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _LOW32, persona)
        policy.add_rule(allow, "personality", only_persona)
    return policy


@functools.cache
def compile_filter() -> bytes:
    """The BPF program libseccomp generates for :func:`build_filter`, as raw sock_filters.

    Call it once in the agent before forking sandboxes; the result is cached, so every child
    gets the same bytes and only :func:`install` runs per sandbox.
    """
    with os.fdopen(os.memfd_create("baponi-seccomp", os.MFD_CLOEXEC), "w+b") as program:
        build_filter().export_bpf(program)
        program.seek(0)
        return program.read()


def install(bpf: bytes) -> None:
    """Set no_new_privs and load *bpf* (from :func:`compile_filter`) into this process.

    Meant for a forked child right before execve, after it dropped privileges: without
    capabilities the kernel only accepts a filter once no_new_privs is set, which also stops
    setuid binaries from regaining privileges. The filter is inherited across fork and
    execve and cannot be removed.
    """
    count, rest = divmod(len(bpf), _BPF_INSN_SIZE)
    if rest or not 0 < count <= _BPF_MAXINSNS:
        raise ValueError(f"not a BPF program: {len(bpf)} bytes")
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"PR_SET_NO_NEW_PRIVS: {os.strerror(code)}")
    instructions = ctypes.create_string_buffer(bpf, len(bpf))
    program = _SockFprog(count, ctypes.addressof(instructions))
    if _libc.syscall(ctypes.c_long(_SYS_SECCOMP), ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                     ctypes.c_long(0), ctypes.byref(program)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(code)}")
