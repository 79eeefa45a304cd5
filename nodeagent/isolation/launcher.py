"""The native launcher (launcher.c): built from its source once per version, then reused.

Built on the machine that runs the agent, with its C compiler: a single file with no
dependency beyond the C library, so any Linux node can build it in well under a second.
The binary's name carries the source's digest: a changed source never runs a stale build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("launcher.c")
_PREFIX = "baponi-launch-"
_FLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2")


class LauncherError(Exception):
    """The launcher could not be built; the message says what the machine lacks."""


def _compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    raise LauncherError(
        "building the sandbox launcher needs a C compiler and the C library headers "
        "(apt-get install gcc libc6-dev), or set CC"
    )


def library_of(executable: Path | str) -> Path:
    """The zygotes' shared-library build that `ensure` made beside the executable."""
    return Path(f"{executable}.so")


def ensure(directory: Path) -> Path:
    """The launcher for this source in `directory` (and its library, `library_of`), building
    them there first if needed."""
    source = SOURCE.read_bytes()
    target = directory / (_PREFIX + hashlib.sha256(source).hexdigest()[:16])
    library = library_of(target)
    if target.exists() and library.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    _build(library, ("-DBAPONI_LIBRARY", "-shared", "-fPIC"))
    _build(target, ())
    for old in directory.glob(_PREFIX + "*"):  # builds of earlier versions
        if old not in (target, library):
            old.unlink(missing_ok=True)
    return target


def _build(target: Path, flags: tuple[str, ...]) -> None:
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    result = subprocess.run(
        [_compiler(), *_FLAGS, *flags, "-o", str(partial), str(SOURCE)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LauncherError(f"building the sandbox launcher failed:\n{result.stderr.strip()}")
    partial.chmod(0o755)
    os.replace(partial, target)
