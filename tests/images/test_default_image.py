"""The built-in image: the host's /usr read-only under a root and an /etc of Baponi's own.

The host's binaries must work from it (interpreters, their standard libraries, name-service
lookups), and nothing else of the host's root or /etc may show.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nodeagent.images.default import default_image

# Baponi's own files, and the host's /etc/alternatives links that /usr/bin goes through.
BAPONI_ETC = {"passwd", "group", "hosts", "hostname", "nsswitch.conf", "resolv.conf", "ld.so.cache", "alternatives"}
MOUNT_POINT_DIRS = {"proc", "dev", "tmp", "home", "data", "sys", "etc", "usr"}
# The merged-/usr links, for those the host's /usr has.
USR_LINKS = {name for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32") if Path("/usr", name).is_dir()}


async def ok(run, code: str, language: str = "python", **fields) -> str:  # noqa: ANN001, ANN003
    outcome = await run(code, language, **fields)
    assert outcome.exit_code == 0, outcome.stderr
    return outcome.stdout


def test_image_has_all_three_interpreters_under_usr():
    assert default_image().interpreters == {"python": "/usr/bin/python3", "node": "/usr/bin/node", "bash": "/usr/bin/bash"}


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("python", "import sys; print(sys.executable)", "/usr/bin/python3\n"),
        ("node", "console.log(process.execPath)", "/usr/bin/node\n"),
        ("bash", "echo $BASH", "/usr/bin/bash\n"),
        ("bash", "/usr/bin/python3 -c 'print(\"py\")'; node -e 'console.log(\"js\")'; bash -c 'echo sh'", "py\njs\nsh\n"),
    ],
    ids=["python", "node", "bash", "each-from-bash"],
)
async def test_interpreters_run(run, language, code, expected):
    assert await ok(run, code, language) == expected


ETC_REPORT = """
import hashlib, json, os
print(json.dumps({
    'entries': sorted(os.listdir('/etc')),
    'text': {name: open('/etc/' + name).read() for name in ('passwd', 'group', 'hostname', 'hosts', 'nsswitch.conf', 'resolv.conf')},
    'ld.so.cache': hashlib.sha256(open('/etc/ld.so.cache', 'rb').read()).hexdigest(),
}))
"""


async def test_etc_holds_only_baponis_files(run):
    report = json.loads(await ok(run, ETC_REPORT))
    assert set(report["entries"]) == BAPONI_ETC  # so no shadow, os-release, ssl, ... of the host's
    text = report["text"]
    assert "baponi:x:1000:1000:" in text["passwd"] and "baponi:x:1000:" in text["group"]
    assert text["passwd"].count("\n") == 3, "only root, baponi and nobody"
    assert text["hostname"] == "sandbox\n" != Path("/etc/hostname").read_text()
    assert text["resolv.conf"] == ""
    # The one host file kept: the loader's cache, so the host's libraries are found.
    assert report["ld.so.cache"] == hashlib.sha256(Path("/etc/ld.so.cache").read_bytes()).hexdigest()


async def test_etc_is_read_only(run):
    out = await ok(run, "echo x > /etc/passwd 2>/dev/null; echo $?; touch /etc/new 2>/dev/null; echo $?", "bash")
    assert out == "1\n1\n"


ROOT_REPORT = """
import json, os
print(json.dumps({name: os.readlink('/' + name) if os.path.islink('/' + name) else 'dir' if os.path.isdir('/' + name) else 'other'
                  for name in os.listdir('/')}))
"""


async def test_root_is_the_merged_usr_links_and_mount_points(run):
    root = json.loads(await ok(run, ROOT_REPORT))
    assert root == {**{name: f"usr/{name}" for name in USR_LINKS}, **{name: "dir" for name in MOUNT_POINT_DIRS}}


async def test_user_and_group_lookups(run):
    code = (
        "import getpass, grp, os, pwd\n"
        "me = pwd.getpwuid(os.getuid())\n"
        "print(getpass.getuser(), me.pw_name, me.pw_dir, me.pw_shell, grp.getgrgid(os.getgid()).gr_name, pwd.getpwnam('root').pw_uid)"
    )
    expected = "baponi baponi /home/baponi /bin/bash baponi 0\n"
    assert await ok(run, code) == expected
    # getpass reads LOGNAME and USER first; emptied, it has to ask the password database.
    assert await ok(run, code, env={"LOGNAME": "", "USER": ""}) == expected


async def test_id_in_bash_names_baponi(run):
    assert await ok(run, "id; whoami; id -gn", "bash") == "uid=1000(baponi) gid=1000(baponi) groups=1000(baponi)\nbaponi\nbaponi\n"


async def test_host_names_resolve_from_baponis_hosts_file(run):
    code = "import socket; print(socket.gethostname(), socket.gethostbyname('localhost'), socket.gethostbyname('sandbox'))"
    assert await ok(run, code) == "sandbox 127.0.0.1 127.0.0.1\n"


async def test_python_standard_library_works(run):
    code = (
        "import json, sqlite3, ssl, hashlib, zlib, ctypes, decimal\n"
        "db = sqlite3.connect(':memory:'); db.execute('create table t (x)'); db.execute('insert into t values (41)')\n"
        "print(db.execute('select x + 1 from t').fetchone()[0], json.dumps({'a': 1}), ssl.OPENSSL_VERSION.split()[0],\n"
        "      hashlib.sha256(b'x').hexdigest()[:8], len(zlib.compress(b'a' * 100)) < 100, ssl.create_default_context().verify_mode.name)"
    )
    assert await ok(run, code) == '42 {"a": 1} OpenSSL 2d711642 True CERT_REQUIRED\n'


async def test_node_builtin_modules_work(run):
    code = (
        "const crypto = require('crypto'), zlib = require('zlib');"
        "console.log(crypto.createHash('sha256').update('x').digest('hex').slice(0, 8), crypto.randomBytes(4).length,"
        " zlib.gunzipSync(zlib.gzipSync('round trip')).toString())"
    )
    assert await ok(run, code, "node") == "2d711642 4 round trip\n"


async def test_commands_behind_alternatives_work(run):
    """awk, editors and the like reach their program through /etc/alternatives: each link
    there points into the image's /usr, and nothing else of the host's /etc comes along."""
    code = "echo 'a b' | awk '{print $2}'; for l in /etc/alternatives/*; do readlink \"$l\"; done | grep -cv '^/usr/'"
    outcome = await run(code, "bash")
    assert outcome.stdout.split() == ["b", "0"], outcome.stderr
