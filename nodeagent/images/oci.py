"""Runtime images imported from OCI image layouts, as `skopeo copy ... oci:DIR:TAG` writes them.

An image is imported once into a content-addressed cache and then only read: sandboxes
mount its rootfs read-only. Layers come from a registry and are untrusted, so they are
applied by hand rather than with tarfile's extractall: whiteouts and opaque directories
need layer-aware handling, and every path is resolved as if the rootfs were "/", so no
entry, symlink or hard link can reach a file outside it.

Cache layout: `cache_dir/<hex of manifest digest>/{rootfs/, metadata.json}`. An import is
built in a private staging directory next to it and renamed into place when complete, so
a crashed or concurrent import never leaves a half-extracted image where lookups look.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from nodeagent.images import MOUNT_POINTS, Image, ImageError

METADATA = "metadata.json"
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INTERPRETER_NAMES = {"python": ("python3", "python"), "node": ("node",), "bash": ("bash",)}
MAX_SYMLINK_HOPS = 40  # as the kernel's ELOOP limit
MAX_INDEX_DEPTH = 4
DIR_MODE = 0o755  # sandboxes run under another uid and must traverse what the import creates

WHITEOUT = ".wh."
WHITEOUT_META = ".wh..wh."  # reserved prefix; of its names only OPAQUE means anything
OPAQUE = ".wh..wh..opq"

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
_LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gz",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gz",
}

Descriptor = dict[str, Any]
Opener = Callable[[str], IO[bytes]]


@dataclass(frozen=True)
class _Selected:
    digest: str
    manifest: dict[str, Any]
    tag: str | None


def import_oci(source: Path, cache_dir: Path, *, tag: str | None = None) -> Image:
    """The image `source` (a layout directory or a tar of one) holds, imported if not cached.

    Only index.json and the manifest are read before the cache is consulted, so importing
    an image already cached costs no extraction.
    """
    with _open_layout(source) as open_file:
        selected = _select_manifest(open_file, tag)
        if not (cache_dir / _digest_hex(selected.digest) / METADATA).is_file():
            _build(open_file, selected, cache_dir)
    return load_cached(cache_dir, selected.digest)


def load_cached(cache_dir: Path, digest: str) -> Image:
    """The image with manifest `digest` ("sha256:<hex>") from the cache, without a layout."""
    entry = cache_dir / _digest_hex(digest)
    try:
        metadata = json.loads((entry / METADATA).read_text())
    except FileNotFoundError:
        raise ImageError(f"image {digest} is not in the cache at {cache_dir}") from None
    return Image(
        name=digest, interpreters=dict(metadata["interpreters"]), rootfs=str(entry / "rootfs")
    )


# --- reading the layout ---------------------------------------------------------------


@contextmanager
def _open_layout(source: Path) -> Iterator[Opener]:
    """Yield a function opening a layout file by relative name; a tar is read in place."""
    if source.is_dir():
        yield lambda name: (source / name).open("rb")
        return
    try:
        tar = tarfile.open(source)
    except (OSError, tarfile.TarError) as e:
        raise ImageError(
            f"{source} is neither an OCI layout directory nor a tar of one: {e}"
        ) from e
    with tar:
        members = {str(PurePosixPath(m.name)): m for m in tar.getmembers() if m.isfile()}

        def open_member(name: str) -> IO[bytes]:
            if name not in members:
                raise FileNotFoundError(name)
            file = tar.extractfile(members[name])
            assert file is not None  # members holds regular files only
            return file

        yield open_member


def _read_layout_json(open_file: Opener, name: str) -> dict[str, Any]:
    try:
        with open_file(name) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ImageError(f"not a readable OCI layout: {name}: {e}") from e
    if not isinstance(doc, dict):
        raise ImageError(f"not an OCI layout: {name} is not a JSON object")
    return doc


def _digest_hex(digest: str) -> str:
    """Why: digests become file names, so anything but sha256 hex is refused, not joined."""
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise ImageError(f"unsupported or malformed digest {digest!r}")
    return match.group(1)


@contextmanager
def _verified_blob(open_file: Opener, descriptor: Descriptor) -> Iterator[IO[bytes]]:
    """Yield the blob, rewound, only after its bytes matched the descriptor's digest and size."""
    digest = descriptor.get("digest", "")
    expected = _digest_hex(digest)
    try:
        blob = open_file(f"blobs/sha256/{expected}")
    except OSError:
        raise ImageError(f"blob {digest} is missing from the layout") from None
    with blob:
        sha, size = hashlib.sha256(), 0
        while chunk := blob.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
        actual = sha.hexdigest()
        if actual != expected or size != descriptor.get("size"):
            raise ImageError(
                f"blob {digest} is corrupt: it holds {size} bytes with digest sha256:{actual},"
                f" its descriptor says {descriptor.get('size')} bytes"
            )
        blob.seek(0)
        yield blob


def _read_json_blob(open_file: Opener, descriptor: Descriptor) -> dict[str, Any]:
    with _verified_blob(open_file, descriptor) as blob:
        try:
            doc = json.load(blob)
        except ValueError as e:
            raise ImageError(f"blob {descriptor['digest']} is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ImageError(f"blob {descriptor['digest']} is not a JSON object")
    return doc


def _select_manifest(open_file: Opener, tag: str | None) -> _Selected:
    if "imageLayoutVersion" not in _read_layout_json(open_file, "oci-layout"):
        raise ImageError("not an OCI layout: oci-layout has no imageLayoutVersion")
    descriptor = _select_tagged(
        _read_layout_json(open_file, "index.json").get("manifests", []), tag
    )
    ref_name = descriptor.get("annotations", {}).get(REF_NAME)
    for _ in range(MAX_INDEX_DEPTH):
        doc = _read_json_blob(open_file, descriptor)
        if "manifests" not in doc:
            if "config" not in doc or "layers" not in doc:
                raise ImageError(
                    f"blob {descriptor['digest']} is neither an image manifest nor an index"
                )
            return _Selected(descriptor["digest"], doc, ref_name)
        descriptor = _select_platform(doc["manifests"], descriptor["digest"])
    raise ImageError(f"image indexes nested more than {MAX_INDEX_DEPTH} deep")


def _select_tagged(manifests: Sequence[Descriptor], tag: str | None) -> Descriptor:
    tags = [m.get("annotations", {}).get(REF_NAME) for m in manifests]
    matches = (
        list(manifests)
        if tag is None
        else [m for m, t in zip(manifests, tags, strict=True) if t == tag]
    )
    if len(matches) == 1:
        return matches[0]
    if tag is None:
        problem = (
            "no tag given and the layout holds several images"
            if matches
            else "the layout holds no image"
        )
    else:
        problem = f"no image tagged {tag!r}" if not matches else f"several images tagged {tag!r}"
    available = ", ".join(sorted(repr(t) for t in tags if t)) or "none"
    raise ImageError(f"{problem} (tags in the layout: {available})")


def _select_platform(manifests: Sequence[Descriptor], index_digest: str) -> Descriptor:
    machine = platform.machine()
    architecture = _ARCHITECTURES.get(machine, machine)
    platforms = [m.get("platform", {}) for m in manifests]
    for manifest, p in zip(manifests, platforms, strict=True):
        if p.get("os") == "linux" and p.get("architecture") == architecture:
            return manifest
    have = ", ".join(f"{p.get('os')}/{p.get('architecture')}" for p in platforms) or "none"
    raise ImageError(
        f"image index {index_digest} has no linux/{architecture} image (it has: {have})"
    )


# --- building the cache entry ---------------------------------------------------------


def _build(open_file: Opener, selected: _Selected, cache_dir: Path) -> None:
    if not cache_dir.is_dir():
        cache_dir.mkdir(parents=True)
        cache_dir.chmod(DIR_MODE)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=cache_dir))
    try:
        rootfs = staging / "rootfs"
        _mkdir(rootfs)
        config = _read_json_blob(open_file, selected.manifest["config"]).get("config") or {}
        for layer in selected.manifest["layers"]:
            _apply_layer(open_file, layer, rootfs)
        _make_mount_points(rootfs)
        env = config.get("Env") or []
        metadata = {
            "digest": selected.digest,
            "tag": selected.tag,
            "interpreters": _discover_interpreters(rootfs, _search_path(env)),
            "env": env,
            "working_dir": config.get("WorkingDir") or "",
        }
        (staging / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        (staging / METADATA).chmod(0o644)
        staging.chmod(DIR_MODE)
        _publish(staging, cache_dir / _digest_hex(selected.digest))
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _publish(staging: Path, entry: Path) -> None:
    """Rename into place; losing the race to a concurrent import of the same image is fine."""
    try:
        os.rename(staging, entry)
    except OSError:
        if not (entry / METADATA).is_file():
            raise


def _make_mount_points(rootfs: Path) -> None:
    """Why: the sandbox mounts over these, which needs real directories, not the image's links."""
    for mount_point in MOUNT_POINTS:
        path = rootfs
        for name in mount_point.split("/"):
            path = path / name
            if not _is_real_dir(path):
                _delete(path)
                _mkdir(path)


# --- applying layers ------------------------------------------------------------------


def _apply_layer(open_file: Opener, descriptor: Descriptor, rootfs: Path) -> None:
    """Whiteouts hide lower layers only, so they all go first, whatever their place in the tar."""
    compression = _layer_compression(descriptor)
    try:
        with _verified_blob(open_file, descriptor) as blob:
            for _, member in _layer_members(blob, compression):
                _apply_whiteout(rootfs, member)
            for tar, member in _layer_members(blob, compression):
                _extract(rootfs, tar, member)
    except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
        raise ImageError(f"layer {descriptor['digest']} cannot be applied: {e}") from e


def _layer_compression(descriptor: Descriptor) -> str:
    media_type = descriptor.get("mediaType", "")
    if media_type not in _LAYER_COMPRESSION:
        raise ImageError(
            f"layer {descriptor.get('digest')} has unsupported media type {media_type!r}"
        )
    return _LAYER_COMPRESSION[media_type]


def _layer_members(
    blob: IO[bytes], compression: str
) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    blob.seek(0)
    stream = _zstd_reader(blob) if compression == "zstd" else blob
    with tarfile.open(fileobj=stream, mode="r|gz" if compression == "gz" else "r|") as tar:
        for member in tar:
            yield tar, member


def _zstd_reader(blob: IO[bytes]) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        raise ImageError(
            "the image has a zstd-compressed layer and the zstandard module is not installed"
        ) from None
    reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(
        blob, read_across_frames=True, closefd=False
    )
    return reader


def _entry_parts(name: str) -> tuple[str, ...]:
    """Why: a leading "/" can only mean the image root (Docker reads it so); ".." has no
    legitimate use in a layer, so it is refused rather than guessed at."""
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ImageError(f"layer entry {name!r} has a '..' component")
    return parts


def _apply_whiteout(rootfs: Path, member: tarfile.TarInfo) -> None:
    parts = _entry_parts(member.name)
    name = parts[-1] if parts else ""
    if name == OPAQUE:
        directory = _resolve(rootfs, parts[:-1])
        if _is_real_dir(directory):
            for child in directory.iterdir():
                _delete(child)
    elif name.startswith(WHITEOUT) and not name.startswith(WHITEOUT_META):
        hidden = name[len(WHITEOUT) :]
        if hidden in ("", ".", ".."):
            raise ImageError(f"layer entry {member.name!r} is a whiteout of nothing")
        _delete(_resolve(rootfs, parts[:-1]) / hidden)


def _extract(rootfs: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Apply one entry. Its own last component is never followed: what is there is replaced."""
    parts = _entry_parts(member.name)
    if not parts or parts[-1].startswith(WHITEOUT):
        return  # the root itself keeps DIR_MODE; whiteouts were applied in the first pass
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return  # device nodes and fifos have no place in a read-only, nodev root
    link_source = _link_source(rootfs, member) if member.islnk() else None
    dest = _make_parent(rootfs, parts[:-1]) / parts[-1]
    if member.isdir():
        if not _is_real_dir(dest):
            _delete(dest)
            dest.mkdir()
        dest.chmod(_mode(member))
        return
    _delete(dest)
    if link_source is not None:
        os.link(link_source, dest, follow_symlinks=False)
        return
    if member.issym():
        os.symlink(member.linkname, dest)
    else:
        _write_file(tar, member, dest)
    os.utime(dest, (member.mtime, member.mtime), follow_symlinks=False)


def _mode(member: tarfile.TarInfo) -> int:
    return member.mode & 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        content = tar.extractfile(member)
        assert content is not None  # member is a regular file
        shutil.copyfileobj(content, out)
        os.fchmod(out.fileno(), _mode(member))


def _link_source(rootfs: Path, member: tarfile.TarInfo) -> Path:
    parts = _entry_parts(member.linkname)
    source = _resolve(rootfs, parts[:-1]) / parts[-1] if parts else rootfs
    if not os.path.lexists(source) or _is_real_dir(source):
        raise ImageError(
            f"hard link {member.name!r} -> {member.linkname!r}: no such file in the image"
        )
    return source


def _make_parent(rootfs: Path, parts: Sequence[str]) -> Path:
    """The directory `parts` resolves to inside rootfs, created (DIR_MODE) where missing."""
    directory = _resolve(rootfs, parts)
    missing = []
    path = directory
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        _mkdir(path)
    if not _is_real_dir(directory):
        raise ImageError(f"/{'/'.join(parts)} is not a directory in the image")
    return directory


# --- paths inside the rootfs ----------------------------------------------------------


def _resolve(root: Path, parts: Sequence[str]) -> Path:
    """Where `parts` leads, following every symlink in it as if `root` were "/".

    The result never leaves root: absolute targets restart at root and ".." stops there.
    Components that do not exist are kept as they are, for the caller to create or reject.
    """
    pending = list(parts)
    resolved: list[str] = []
    hops = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        path = root.joinpath(*resolved, name)
        if not path.is_symlink():
            resolved.append(name)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise ImageError(
                f"too many levels of symbolic links in /{'/'.join(parts)} in the image"
            )
        target = os.readlink(path)
        if target.startswith("/"):
            resolved = []
        pending[:0] = target.split("/")
    return root.joinpath(*resolved)


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _delete(path: Path) -> None:
    if _is_real_dir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _mkdir(path: Path) -> None:
    path.mkdir()
    path.chmod(DIR_MODE)  # explicitly, whatever the umask


# --- interpreters ---------------------------------------------------------------------


def _search_path(env: Sequence[str]) -> list[str]:
    value = next(
        (entry[len("PATH=") :] for entry in env if entry.startswith("PATH=")), DEFAULT_PATH
    )
    return [directory for directory in value.split(":") if directory.startswith("/")]


def _discover_interpreters(rootfs: Path, search_path: Sequence[str]) -> dict[str, str]:
    found = {}
    for language, names in INTERPRETER_NAMES.items():
        candidates = (
            posixpath.normpath(posixpath.join(d, name)) for name in names for d in search_path
        )
        path = next((c for c in candidates if _is_executable(rootfs, c)), None)
        if path is not None:
            found[language] = path
    return found


def _is_executable(rootfs: Path, path: str) -> bool:
    """Whether `path`, resolved inside the image (never on the host), is an executable file."""
    try:
        mode = os.lstat(_resolve(rootfs, path.split("/"))).st_mode
    except (OSError, ImageError):
        return False
    return stat.S_ISREG(mode) and bool(mode & 0o111)
