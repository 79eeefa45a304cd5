"""The built-in image: the host's own /usr, read-only, under a root and /etc of Baponi's own.

Nothing of the host's /etc is used except the dynamic loader's cache (so the host's shared
libraries are found); users, groups, hosts and name-service settings are written here.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import Image, ImageError

DEFAULT_IMAGE = "default"

_PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "baponi:x:1000:1000:Baponi sandbox:/home/baponi:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
_GROUP = "root:x:0:\nbaponi:x:1000:\nnogroup:x:65534:\n"
_HOSTS = "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
_CANDIDATES = {
    "python": ("/usr/bin/python3",),
    "node": ("/usr/bin/node", "/usr/bin/nodejs"),
    "bash": ("/usr/bin/bash", "/bin/bash"),
}


def _interpreters(usr_root: Path) -> dict[str, str]:
    found = {}
    for language, paths in _CANDIDATES.items():
        for path in paths:
            if path.startswith("/usr/") and os.access(usr_root / path.removeprefix("/usr/"), os.X_OK):
                found[language] = path
                break
    return found


def _root_links(host_root: Path) -> tuple[tuple[str, str], ...]:
    """/bin, /lib, ... as the merged-/usr layout expects; only those the host itself has."""
    links = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if (host_root / "usr" / name).is_dir():
            links.append((f"/{name}", f"usr/{name}"))
    return tuple(links)


def _alternatives(host_root: Path) -> tuple[tuple[str, str], ...]:
    """The /etc/alternatives links that /usr/bin and /usr/sbin go through (awk, editor, ...),
    as the host resolves them: without them those commands would dangle in the sandbox."""
    links = []
    for directory in ("usr/bin", "usr/sbin"):
        for entry in os.scandir(host_root / directory):
            if not entry.is_symlink():
                continue
            through = os.readlink(entry.path)
            if not through.startswith("/etc/alternatives/"):
                continue
            try:
                target = os.readlink(host_root / through.lstrip("/"))
            except OSError:
                continue
            if target.startswith("/usr/"):
                links.append((through, target))
    return tuple(sorted(set(links)))


def default_image(host_root: Path = Path("/")) -> Image:
    usr = host_root / "usr"
    if not usr.is_dir():
        raise ImageError(f"{usr} does not exist: the default image is made from the host's /usr")
    etc: dict[str, bytes] = {
        "passwd": _PASSWD.encode(),
        "group": _GROUP.encode(),
        "hosts": _HOSTS.encode(),
        "hostname": b"sandbox\n",
        "nsswitch.conf": _NSSWITCH.encode(),
        "resolv.conf": b"",
    }
    cache = host_root / "etc" / "ld.so.cache"
    if cache.is_file():
        etc["ld.so.cache"] = cache.read_bytes()
    return Image(
        name=DEFAULT_IMAGE,
        interpreters=_interpreters(usr),
        binds=((str(usr), "/usr"),),
        symlinks=_root_links(host_root) + _alternatives(host_root),
        etc_files=etc,
        host_interpreters=host_root.resolve() == Path("/"),
    )
