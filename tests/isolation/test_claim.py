"""Per-call inputs handed to a sandbox that was started before the call existed.

A warm sandbox is already isolated and running its interpreter when a call claims it; the
call's environment, home archive and storage mounts all arrive at claim time. Every test
here waits for a full pool first and checks the call really was warm.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.execution import ExecutionRequest, Mount
from nodeagent.runtime import RequestRejected
from nodeagent.sandbox import SandboxError
from tests.isolation.runtimes import WAIT_S
from tests.isolation.runtimes import in_sandbox

HOST_UID = 201_000  # sandbox uid 1000 as the host sees it


async def warm(run, runtime, code: str, language: str = "python", **fields):  # noqa: ANN001, ANN003
    """Run `code` in a sandbox claimed from a full pool (and check it was)."""
    return await in_sandbox(run, runtime, code, language, "warm", **fields)


# --- environment ----------------------------------------------------------------------

ECHO_ENV = {"python": "import os; print(os.environ['CALL'])", "node": "console.log(process.env.CALL)", "bash": "echo \"$CALL\""}


@pytest.mark.parametrize("language", list(ECHO_ENV))
async def test_each_call_brings_its_own_environment(run, runtime, language):
    for value in ("first call", "second call"):
        outcome = await warm(run, runtime, ECHO_ENV[language], language, env={"CALL": value})
        assert (outcome.stdout, outcome.exit_code) == (f"{value}\n", 0), outcome.stderr


# --- home archives --------------------------------------------------------------------


def build_tar(entries: list[tuple[str, str, int, bytes | str]]) -> bytes:
    """A tar of (name, kind "file" | "dir" | "symlink", mode, content or link target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, mode, data in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1_700_000_000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
                tar.addfile(info)
            else:
                content = data if isinstance(data, bytes) else data.encode()
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def read_tar(archive: bytes) -> dict[str, tuple]:
    """name -> (kind, mode, uid, gid, content or link target), for comparing archives."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for m in tar.getmembers():
            if m.isdir():
                found[m.name] = ("dir", m.mode, m.uid, m.gid, None)
            elif m.issym():
                found[m.name] = ("symlink", m.mode & 0o7777, m.uid, m.gid, m.linkname)
            elif m.isfile():
                found[m.name] = ("file", m.mode, m.uid, m.gid, tar.extractfile(m).read())  # type: ignore[union-attr]
            else:
                found[m.name] = (f"type {m.type!r}", m.mode, m.uid, m.gid, None)
    return found


HOME_IN = build_tar([
    ("notes.txt", "file", 0o644, "hello\n"),
    ("secret", "file", 0o600, "s3cret"),
    ("sub", "dir", 0o750, ""),
    ("sub/deep.txt", "file", 0o644, "deep\n"),
    ("bin", "dir", 0o755, ""),
    ("bin/greet.sh", "file", 0o755, "#!/bin/bash\necho \"greetings from $0\"\n"),
    ("link", "symlink", 0o777, "sub/deep.txt"),
])

# Reports every entry of the home directory as the code sees it when it starts.
HOME_REPORT = """
import json, os, stat, subprocess
entries = {}
for root, dirs, files in os.walk('.'):
    for name in dirs + files:
        path = os.path.join(root, name)[2:]
        st = os.lstat(path)
        kind = 'symlink' if stat.S_ISLNK(st.st_mode) else 'dir' if stat.S_ISDIR(st.st_mode) else 'file'
        data = os.readlink(path) if kind == 'symlink' else open(path).read() if kind == 'file' else None
        entries[path] = [kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, data]
home = os.stat('.')
print(json.dumps({'entries': entries, 'home': [stat.S_IMODE(home.st_mode), home.st_uid, home.st_gid],
                  'script': subprocess.run(['./bin/greet.sh'], capture_output=True, text=True).stdout}))
"""


async def test_home_archive_is_in_place_before_the_code_runs(run, runtime):
    outcome = await warm(run, runtime, HOME_REPORT, home=HOME_IN)
    assert outcome.exit_code == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    expected = {
        name: [kind, mode, 1000, 1000, data.decode() if isinstance(data, bytes) else data]
        for name, (kind, mode, _uid, _gid, data) in read_tar(HOME_IN).items()
    }
    assert report["entries"] == expected
    assert report["home"] == [0o755, 1000, 1000]
    assert report["script"] == "greetings from ./bin/greet.sh\n"


WRITE_HOME = """
import os
os.makedirs('project/src', exist_ok=True)
open('project/src/main.py', 'w').write('print(42)\\n')
os.chmod('project', 0o750)
open('private.key', 'w').write('k')
os.chmod('private.key', 0o600)
open('run.sh', 'w').write('#!/bin/sh\\necho run\\n')
os.chmod('run.sh', 0o755)
os.mkdir('empty')
os.symlink('project/src/main.py', 'main-link')
os.symlink('/etc/passwd', 'passwd-link')
"""


async def test_collected_home_holds_what_the_code_wrote(run, runtime):
    outcome = await warm(run, runtime, WRITE_HOME, collect_home=True)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.result.home is not None
    assert read_tar(outcome.result.home) == {
        "project": ("dir", 0o750, 1000, 1000, None),
        "project/src": ("dir", 0o755, 1000, 1000, None),
        "project/src/main.py": ("file", 0o644, 1000, 1000, b"print(42)\n"),
        "private.key": ("file", 0o600, 1000, 1000, b"k"),
        "run.sh": ("file", 0o755, 1000, 1000, b"#!/bin/sh\necho run\n"),
        "empty": ("dir", 0o755, 1000, 1000, None),
        "main-link": ("symlink", 0o777, 1000, 1000, "project/src/main.py"),
        # Stored as the link the code made, never as the file it points to.
        "passwd-link": ("symlink", 0o777, 1000, 1000, "/etc/passwd"),
    }


async def test_home_is_not_collected_unless_asked(run, runtime):
    outcome = await warm(run, runtime, "open('f', 'w').write('x')")
    assert outcome.result.home is None


# Each call counts itself in a file and in an importable module under ~/.local, which
# `python3 -c` puts on sys.path (before the system's site-packages) when it exists.
STATEFUL = """
import os, site, sys
count = int(open('count').read()) + 1 if os.path.exists('count') else 1
open('count', 'w').write(str(count))
os.makedirs(site.getusersitepackages(), exist_ok=True)
if count > 1:
    import persisted
    user, system = sys.path.index(site.getusersitepackages()), sys.path.index('/usr/lib/python3/dist-packages')
    print('module says', persisted.COUNT, 'user site first', user < system)
# A size of its own each time: a .pyc from the same second is trusted only if the size matches.
open(os.path.join(site.getusersitepackages(), 'persisted.py'), 'w').write(f'COUNT = {count}' + ' ' * count)
os.makedirs('history', exist_ok=True)
os.symlink(f'../count', f'history/link-{count}')
print('count', count)
"""


def _namespace_handles(pid: int) -> list[str]:
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile
            pass
    return sorted(link.split(":")[0] for link in links if link.startswith(("mnt:[", "user:[")))


@pytest.mark.parametrize(("fields", "held"), [({"home": b""}, []), ({"collect_home": True}, ["mnt", "user"])])
async def test_the_spawner_holds_a_sandboxs_namespaces_only_while_claim_time_work_needs_them(runtime, fields, held):
    """Whoever drops a sandbox's mount namespace last unmounts its whole tree; the spawner's
    loop, which every sandbox waits on, must not be that one. It holds no handle on an idle
    sandbox's namespaces, and during a run only one whose home it collects afterwards."""
    await runtime.wait_warm(WAIT_S)
    spawner = runtime._spawner._process.pid  # white-box: whose fds
    assert _namespace_handles(spawner) == []
    request = ExecutionRequest("print('running', flush=True); import time; time.sleep(0.5)", timeout=10, **fields)
    events = runtime.execute("default", request)
    assert (await anext(events)).data == b"running\n"
    during = _namespace_handles(spawner)
    async for _ in events:
        pass
    assert during == held


async def test_home_round_trips_between_calls(run, runtime):
    """How threads will persist home: collect it after one call, hand it to the next."""
    home = None
    for count in (1, 2, 3):
        outcome = await warm(run, runtime, STATEFUL, home=home, collect_home=True)
        assert outcome.exit_code == 0, outcome.stderr
        said = "" if count == 1 else f"module says {count - 1} user site first True\n"
        assert outcome.stdout == f"{said}count {count}\n"
        home = outcome.result.home
    assert home is not None
    entries = read_tar(home)
    assert [entries[f"history/link-{n}"][::4] for n in (1, 2, 3)] == [("symlink", "../count")] * 3
    assert entries["count"][4] == b"3"


# --- storage mounts -------------------------------------------------------------------


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A host directory to mount, holding one file, writable by the sandbox's uid."""
    parent = Path(tempfile.mkdtemp(prefix="baponi-mount-", dir="/tmp"))
    parent.chmod(0o711)
    box = parent / "box"
    box.mkdir()
    (box / "from-host.txt").write_text("written on the host\n")
    os.chown(box, HOST_UID, HOST_UID)
    yield box
    shutil.rmtree(parent, ignore_errors=True)


USE_MOUNT = """
import os
print(open('/data/box/from-host.txt').read(), end='')
options = [line.split()[5] for line in open('/proc/self/mountinfo') if line.split()[4] == '/data/box']
print(sorted(set(options[0].split(',')) & {'ro', 'rw', 'nosuid', 'nodev'}))
try:
    os.mkdir('/data/box/made-inside')
    open('/data/box/made-inside/out.txt', 'w').write('written in the sandbox')
    print('written')
except OSError as e:
    print('refused', e.errno)
"""


async def test_read_only_mount_at_claim_time(run, runtime, host_dir):
    outcome = await warm(run, runtime, USE_MOUNT, mounts=(Mount(str(host_dir), "/data/box", read_only=True),))
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout == "written on the host\n['nodev', 'nosuid', 'ro']\nrefused 30\n"  # EROFS
    assert sorted(p.name for p in host_dir.iterdir()) == ["from-host.txt"]


async def test_read_write_mount_at_claim_time(run, runtime, host_dir):
    outcome = await warm(run, runtime, USE_MOUNT, mounts=(Mount(str(host_dir), "/data/box", read_only=False),))
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout == "written on the host\n['nodev', 'nosuid', 'rw']\nwritten\n"
    made = host_dir / "made-inside" / "out.txt"
    assert made.read_text() == "written in the sandbox"
    for path in (made, made.parent):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (HOST_UID, HOST_UID), path
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o644


async def test_two_mounts_in_one_call(run, runtime, host_dir):
    other = host_dir.parent / "other"
    other.mkdir()
    (other / "b.txt").write_text("b")
    code = "print(open('/data/box/from-host.txt').read().strip(), open('/data/other/b.txt').read())"
    mounts = (Mount(str(host_dir), "/data/box"), Mount(str(other), "/data/other"))
    outcome = await warm(run, runtime, code, mounts=mounts)
    assert outcome.stdout == "written on the host b\n"


@pytest.mark.parametrize("target", ["/etc/x", "/data/a/b", "/data/../etc", "/data", "/data/", "data/box", "/data/./box", "/tmp/box"])
async def test_mount_outside_its_own_data_directory_is_refused(run, runtime, host_dir, target):
    """Refused before any sandbox is claimed; the caller gets RequestRejected naming the rule."""
    await runtime.pools[("default", "python")].wait_full(WAIT_S)
    with pytest.raises(RequestRejected, match=r"mount target must be /data/<name>"):
        await run("print('ran')", mounts=(Mount(str(host_dir), target),))
    assert runtime.running == 0


async def test_mount_of_a_missing_host_path_is_an_error(run, runtime, host_dir):
    with pytest.raises(SandboxError):
        await run("print('ran')", mounts=(Mount(str(host_dir / "missing"), "/data/box"),))
