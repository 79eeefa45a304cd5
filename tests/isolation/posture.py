"""The sandbox posture probe: one program that reports everything isolation promises.

Modelled on gVisor's sandbox posture test: credentials, capability sets, seccomp mode,
no_new_privs, namespaces, open fds, rlimits, mounts, network and environment, asserted as a
whole. The abuse tests only run once this probe has passed (see `verified_sandbox`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PROBE = r"""
import json, os, resource, socket, sys
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
print(json.dumps({
    "ids": [os.getresuid(), os.getresgid(), os.getgroups()],
    "uid_map": open("/proc/self/uid_map").read().split(),
    "gid_map": open("/proc/self/gid_map").read().split(),
    "caps": {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
    "no_new_privs": status["NoNewPrivs"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "namespaces": {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("user", "pid", "mnt", "net", "ipc", "uts", "cgroup")},
    "fds": fds,
    "fd3": [os.readlink("/proc/self/fd/3"), os.get_inheritable(3)] if 3 in fds[:-1] else None,
    "rlimits": {name: resource.getrlimit(getattr(resource, name)) for name in ("RLIMIT_CORE", "RLIMIT_NOFILE", "RLIMIT_FSIZE")},
    "mountinfo": open("/proc/self/mountinfo").read().splitlines(),
    "interfaces": [name for _, name in socket.if_nameindex()],
    "pid": os.getpid(), "ppid": os.getppid(),
    "cwd": os.getcwd(), "hostname": socket.gethostname(),
    "env": dict(os.environ),
    "stdin": sys.stdin.read(),
    "root_entries": sorted(os.listdir("/")),
    "etc_entries": sorted(os.listdir("/etc")),
}))
"""

ZERO_CAPS = "0000000000000000"
# Host state a sandbox must not read; each is masked when this kernel has it.
MASKED_PROC = ("/proc/kcore", "/proc/keys", "/proc/sysrq-trigger", "/proc/timer_list", "/proc/kallsyms", "/proc/kmsg")


def host_namespaces() -> dict[str, str]:
    return {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("user", "pid", "mnt", "net", "ipc", "uts", "cgroup")}


def mounts(mountinfo: list[str]) -> dict[str, dict[str, str]]:
    """mount point -> {root, options, fstype, super} from /proc/self/mountinfo lines."""
    table = {}
    for line in mountinfo:
        left, right = line.split(" - ")
        fields, tail = left.split(), right.split()
        table[fields[4]] = {"root": fields[3], "options": fields[5], "fstype": tail[0], "super": tail[2] if len(tail) > 2 else ""}
    return table


def problems(report: dict, env: dict[str, str], data_dir: Path) -> list[str]:
    """Every way the report falls short of the promised posture (empty when all holds)."""
    found = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            found.append(what)

    expect(report["ids"] == [[1000] * 3, [1000] * 3, []], f"credentials {report['ids']}")
    expect(report["uid_map"][:1] == ["0"] and report["uid_map"][1] != "0", f"uid_map {report['uid_map']}")
    expect(report["gid_map"][:1] == ["0"] and report["gid_map"][1] != "0", f"gid_map {report['gid_map']}")
    expect(all(v == ZERO_CAPS for v in report["caps"].values()), f"capabilities {report['caps']}")
    expect(report["no_new_privs"] == "1", "no_new_privs not set")
    expect(report["seccomp"] == "2", f"seccomp mode {report['seccomp']}")
    host = host_namespaces()
    same = [ns for ns, ident in report["namespaces"].items() if host[ns] == ident]
    expect(not same, f"namespaces shared with the host: {same}")
    # 0, 1, 2, plus the one fd listdir itself holds open while listing; and in a warm sandbox
    # the ready eventfd, on which the bootstrap tells its supervisor how the code ended
    # (close-on-exec: nothing the code starts has it).
    warm = report["fd3"] is not None
    expected = [0, 1, 2, 3] if warm else [0, 1, 2]
    expect(report["fds"][:-1] == expected, f"open fds {report['fds']}")
    expect(not warm or report["fd3"] == ["anon_inode:[eventfd]", False], f"fd 3 (eventfd, close-on-exec): {report['fd3']}")
    expect(report["rlimits"]["RLIMIT_CORE"] == [0, 0], f"core rlimit {report['rlimits']['RLIMIT_CORE']}")
    expect(report["rlimits"]["RLIMIT_NOFILE"][1] <= 4096, f"nofile rlimit {report['rlimits']['RLIMIT_NOFILE']}")
    expect(report["interfaces"] == ["lo"], f"network interfaces {report['interfaces']}")
    expect(report["pid"] == 2 and report["ppid"] == 1, f"pid {report['pid']} ppid {report['ppid']}")
    expect(report["cwd"] == "/home/baponi", f"cwd {report['cwd']}")
    expect(report["hostname"] == "sandbox", f"hostname {report['hostname']}")
    expect(report["env"] == env, f"environment {report['env']} != {env}")
    expect(report["stdin"] == "", "stdin is not empty")
    table = mounts(report["mountinfo"])
    expect("ro" in table["/"]["options"].split(","), f"root is not read-only: {table['/']}")
    for path in ("/tmp", "/home/baponi", "/dev/shm"):
        expect(table.get(path, {}).get("fstype") == "tmpfs" and "rw" in table[path]["options"], f"{path} is not a writable tmpfs")
    expect(table.get("/proc", {}).get("fstype") == "proc", "no /proc of the sandbox's own")
    expect("ro" in table.get("/proc/sys", {}).get("options", ""), "/proc/sys is writable")
    unmasked = [p for p in MASKED_PROC if os.path.exists(p) and p not in table]
    expect(not unmasked, f"/proc paths not masked: {unmasked}")
    expect("/sys" not in table, "host /sys is mounted")
    leaked = [line for line in report["mountinfo"] if str(data_dir) in line]
    expect(not leaked, f"host paths in mountinfo: {leaked}")
    return found


def parse(stdout: str) -> dict:
    return json.loads(stdout)
