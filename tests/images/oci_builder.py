"""Build small OCI image layouts for tests, as `skopeo copy ... oci:DIR:TAG` would write them.

Entry paths are written to the tar verbatim, so a test can also build hostile layers
(absolute names, ".." components, links pointing anywhere).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)


@dataclass(frozen=True)
class File:
    path: str
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755
    uid: int = 0


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Hardlink:
    path: str
    target: str


@dataclass(frozen=True)
class Whiteout:
    """Deletes `path` from lower layers."""

    path: str


@dataclass(frozen=True)
class Opaque:
    """Hides everything lower layers put in the directory `path`."""

    path: str


@dataclass(frozen=True)
class Device:
    path: str
    kind: bytes = tarfile.CHRTYPE  # or tarfile.BLKTYPE, tarfile.FIFOTYPE


Entry = File | Dir | Symlink | Hardlink | Whiteout | Opaque | Device


@dataclass(frozen=True)
class Layer:
    entries: Sequence[Entry]
    gzip: bool = True
    media_type: str | None = None  # overrides the one `gzip` implies


def _tarinfo(entry: Entry) -> tuple[tarfile.TarInfo, bytes | None]:
    match entry:
        case File(path, content, mode, uid):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid = len(content), mode, uid
            return info, content
        case Dir(path, mode, uid):
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.uid = tarfile.DIRTYPE, mode, uid
        case Symlink(path, target) | Hardlink(path, target):
            info = tarfile.TarInfo(path)
            info.type = tarfile.SYMTYPE if isinstance(entry, Symlink) else tarfile.LNKTYPE
            info.linkname = target
        case Whiteout(path):
            info = tarfile.TarInfo(
                posixpath.join(posixpath.dirname(path), ".wh." + posixpath.basename(path))
            )
        case Opaque(path):
            info = tarfile.TarInfo(posixpath.join(path, ".wh..wh..opq"))
        case Device(path, kind):
            info = tarfile.TarInfo(path)
            info.type, info.devmajor, info.devminor = kind, 1, 3
    return info, None


def layer_bytes(layer: Layer) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in layer.entries:
            info, content = _tarinfo(entry)
            info.mtime = 1_700_000_000
            tar.addfile(info, None if content is None else io.BytesIO(content))
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if layer.gzip else data


def with_platform(descriptor: dict[str, Any], os_arch: str) -> dict[str, Any]:
    """`descriptor` as an image index lists it, e.g. with_platform(d, "linux/arm64")."""
    os_name, architecture = os_arch.split("/")
    return {**descriptor, "platform": {"os": os_name, "architecture": architecture}}


class LayoutBuilder:
    """An OCI layout directory being written: blobs first, index.json last."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def json_blob(self, doc: dict[str, Any], media_type: str) -> dict[str, Any]:
        return self.blob(json.dumps(doc).encode(), media_type)

    def image(
        self,
        layers: Sequence[Layer],
        *,
        env: Sequence[str] = DEFAULT_ENV,
        architecture: str = "amd64",
    ) -> dict[str, Any]:
        """Write the layers, config and manifest of one image; return the manifest's descriptor."""
        blobs = [layer_bytes(layer) for layer in layers]
        config = {
            "architecture": architecture,
            "os": "linux",
            "config": {"Env": list(env), "WorkingDir": "/"},
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(b).hexdigest()}" for b in blobs],
            },
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.json_blob(config, OCI_CONFIG),
            "layers": [
                self.blob(data, layer.media_type or (LAYER_GZIP if layer.gzip else LAYER_TAR))
                for layer, data in zip(layers, blobs, strict=True)
            ],
        }
        return self.json_blob(manifest, OCI_MANIFEST)

    def index(self, manifests: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Write a nested image index (manifest list) of descriptors made by with_platform."""
        return self.json_blob(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(manifests)}, OCI_INDEX
        )

    def write_index(self, *tagged: tuple[dict[str, Any], str | None]) -> Path:
        manifests = [
            {**descriptor, "annotations": {"org.opencontainers.image.ref.name": tag}}
            if tag
            else descriptor
            for descriptor, tag in tagged
        ]
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "manifests": manifests})
        )
        return self.root


def tar_layout(layout: Path, dest: Path) -> Path:
    """`dest`, a tar of the layout directory with "./" names, as `tar -C layout -cf dest .`."""
    with tarfile.open(dest, "w") as tar:
        tar.add(layout, arcname=".")
    return dest


def write_layout(
    dest: Path,
    layers: Sequence[Layer],
    *,
    tag: str | None = "latest",
    env: Sequence[str] = DEFAULT_ENV,
    as_tar: bool = False,
) -> Path:
    """A one-image layout at `dest`: a directory, or with as_tar a tar file."""
    if not as_tar:
        builder = LayoutBuilder(dest)
        return builder.write_index((builder.image(layers, env=env), tag))
    with tempfile.TemporaryDirectory() as scratch:
        return tar_layout(write_layout(Path(scratch) / "layout", layers, tag=tag, env=env), dest)


def _ldd_paths(binary: str) -> list[str]:
    """The shared libraries and loader `ldd` says `binary` loads (linux-vdso has no path)."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    return [token for line in out.splitlines() for token in line.split() if token.startswith("/")]


def bash_only_layout(dest: Path) -> Path:
    """A layout whose single layer holds the host's /usr/bin/bash and what it links, nothing else.

    Libraries go at the paths ldd names, as regular files (host symlinks such as the
    loader's are followed), so bash runs from this root with no python3 or node in it.
    """
    paths = ["/usr/bin/bash", *_ldd_paths("/usr/bin/bash")]
    entries = [
        File(path.lstrip("/"), Path(path).read_bytes(), 0o755) for path in dict.fromkeys(paths)
    ]
    return write_layout(dest, [Layer(entries)])
