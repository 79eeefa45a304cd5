"""Claim-time work inside an already-started sandbox: mounts, and the home directory in and out.

The work is done by a short-lived child of the supervisor that joins the sandbox's user and
mount namespaces. Inside them its "/" is the sandbox's root, so paths (and any symlink the
code planted) resolve within the sandbox and never reach the host. A multi-threaded process
cannot join a mount namespace; the supervisor is single-threaded and forks for each job.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass

from . import syscalls as sc
from .layout import DATA_DIR, HOME, SANDBOX_GID, SANDBOX_UID

_HELPER_FAILED = 120
_TAR_HEADER = 512


class InjectionError(Exception):
    """Claim-time work was refused or failed inside the sandbox."""


@dataclass
class Namespaces:
    """Open handles on a sandbox's namespaces; they stay usable after its processes are gone."""

    user: int
    mnt: int

    @classmethod
    def of(cls, pid: int) -> Namespaces:
        return cls(os.open(f"/proc/{pid}/ns/user", os.O_RDONLY), os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY))

    def close(self) -> None:
        os.close(self.user)
        os.close(self.mnt)


def _enter(ns: Namespaces, uid: int, gid: int) -> None:
    sc.setns(ns.user, sc.CLONE_NEWUSER)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    sc.setns(ns.mnt, sc.CLONE_NEWNS)
    if (uid, gid) != (0, 0):
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)


def _in_sandbox(ns: Namespaces, job, *, uid: int = 0, gid: int = 0, stdin: bytes = b"") -> bytes:  # noqa: ANN001
    """Run `job(input_bytes) -> output_bytes` in a child inside the sandbox; return its output."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(in_w)
            os.close(out_r)
            _enter(ns, uid, gid)
            with os.fdopen(in_r, "rb") as source:
                result = job(source.read())
            with os.fdopen(out_w, "wb") as sink:
                sink.write(result)
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001 - report, never unwind into the supervisor
            try:
                os.write(out_w, f"\0{exc}".encode())
            finally:
                os._exit(_HELPER_FAILED)
    os.close(in_r)
    os.close(out_w)
    with os.fdopen(in_w, "wb") as sink:
        sink.write(stdin)
    with os.fdopen(out_r, "rb") as source:
        output = source.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise InjectionError(output.lstrip(b"\0").decode(errors="replace") or "helper failed")
    return output


def data_target(target: str) -> str:
    """A claim-time mount may only land in its own directory under /data."""
    normal = posixpath.normpath(target)
    if normal != target.rstrip("/") or not normal.startswith(DATA_DIR + "/") or normal.count("/") != 2:
        raise InjectionError(f"mount target must be {DATA_DIR}/<name>, got {target!r}")
    return normal


def mount_into(ns: Namespaces, source: str, target: str, read_only: bool) -> None:
    """Attach a copy of the host path `source` at `target` inside the running sandbox."""
    target = data_target(target)
    tree = sc.open_tree(source, sc.OPEN_TREE_CLONE | sc.AT_RECURSIVE)
    try:
        attrs = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | (sc.MOUNT_ATTR_RDONLY if read_only else 0)
        sc.mount_setattr(tree, attrs)

        def attach(_: bytes) -> bytes:
            os.mkdir(target, 0o755)
            sc.move_mount(tree, target)
            return b""

        _in_sandbox(ns, attach)
    finally:
        os.close(tree)


def extract_home(ns: Namespaces, archive: bytes) -> None:
    """Unpack a tar archive into the fresh home as the sandbox user; nothing can reach the host
    from in here, so links that point elsewhere in the sandbox are kept as the code made them."""

    def unpack(data: bytes) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            tar.extractall(HOME, filter="tar")
        return b""

    _in_sandbox(ns, unpack, uid=SANDBOX_UID, gid=SANDBOX_GID, stdin=archive)


def _apparent_size(limit: int) -> None:
    """Refuse before archiving a home larger than its tmpfs could hold: sparse files take no
    space in the sandbox but their full length in an archive, which is built out here."""
    total = 0
    for root, dirs, files in os.walk(HOME):
        for name in dirs + files:
            info = os.lstat(os.path.join(root, name))
            total += _TAR_HEADER + (info.st_size if stat.S_ISREG(info.st_mode) else 0)
            if total > limit:
                raise InjectionError(f"the home holds more than {limit} bytes (apparent size): it is not collected")


def archive_home(ns: Namespaces, limit: int) -> bytes:
    """The home directory as a tar archive of at most about `limit` bytes; symlinks are
    stored, never followed."""

    def pack(_: bytes) -> bytes:
        _apparent_size(limit)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in sorted(os.listdir(HOME)):
                tar.add(os.path.join(HOME, name), arcname=name)
        return buffer.getvalue()

    return _in_sandbox(ns, pack)
