"""The native launcher: built once per source version, and strict about the plan it is given."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nodeagent.isolation import launcher
from nodeagent.isolation.plan import Plan


def test_built_once_and_earlier_builds_removed(tmp_path: Path) -> None:
    stale = tmp_path / "baponi-launch-0123456789abcdef"
    stale.write_text("an earlier version")
    built = launcher.ensure(tmp_path)
    assert built.exists() and os.access(built, os.X_OK)
    assert not stale.exists()
    mtime = built.stat().st_mtime_ns
    assert launcher.ensure(tmp_path) == built
    assert built.stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_no_compiler_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(launcher.LauncherError, match="apt-get install gcc libc6-dev"):
        launcher.ensure(tmp_path / "bin")


def test_a_failed_build_shows_the_compiler_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = tmp_path / "broken-cc"
    compiler.write_text("#!/bin/sh\necho 'launcher.c:1: something is wrong' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    with pytest.raises(launcher.LauncherError, match="something is wrong"):
        launcher.ensure(tmp_path / "bin")
    assert list((tmp_path / "bin").iterdir()) == []  # no half-built binary left


def _launch(binary: Path, plan: bytes) -> subprocess.CompletedProcess[bytes]:
    """The launcher with its fixed fds (launcher.c): a plan on fd 4, the rest pipes."""
    memfd = os.memfd_create("plan")
    os.write(memfd, plan)
    os.lseek(memfd, 0, os.SEEK_SET)
    pipes = [os.pipe() for _ in range(4)]  # ready, up, down, status
    fds = {3: pipes[0][1], 4: memfd, 5: pipes[1][1], 6: pipes[2][0], 7: pipes[3][1]}

    def place() -> None:
        for target, fd in fds.items():
            os.dup2(fd, target)

    try:
        # close_fds would close 3-7 again after place(); the launcher closes all above 7 itself.
        return subprocess.run([str(binary)], preexec_fn=place, capture_output=True, timeout=10, check=False,
                              close_fds=False)
    finally:
        os.close(memfd)
        for r, w in pipes:
            os.close(r)
            os.close(w)


@pytest.mark.parametrize(
    "plan",
    [b"5:abc", b"x:y,", b"3:abc,", b"99999999999999999999:a,", b"0:,"],
    ids=["truncated", "not-a-length", "field-not-a-netstring", "huge-length", "empty-record"],
)
def test_a_malformed_plan_is_refused_before_any_namespace(tmp_path: Path, plan: bytes) -> None:
    done = _launch(launcher.ensure(tmp_path), plan)
    assert done.returncode == 110
    assert b"baponi: sandbox setup failed: " in done.stderr and b"plan" in done.stderr


def test_plan_records_are_netstrings_of_netstrings() -> None:
    plan = Plan()
    plan.add("mount", "tmpfs", "/tmp", "tmpfs", 6, "size=1")
    plan.add("file", "/etc/x", 0o644, b"a,b:\n")
    assert plan.encode() == (
        b"44:5:mount,5:tmpfs,4:/tmp,5:tmpfs,1:6,6:size=1,,"
        b"30:4:file,6:/etc/x,3:420,5:a,b:\n,,"
    )
