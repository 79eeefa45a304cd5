from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from nodeagent.images import MOUNT_POINTS, Image, ImageError, LanguageNotInImage, oci
from nodeagent.images.oci import import_oci, load_cached
from tests.images.oci_builder import (
    DEFAULT_ENV,
    Device,
    Dir,
    Entry,
    File,
    Hardlink,
    Layer,
    LayoutBuilder,
    Opaque,
    Symlink,
    Whiteout,
    bash_only_layout,
    tar_layout,
    with_platform,
    write_layout,
)

HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]


def rootfs_of(image: Image) -> Path:
    assert image.rootfs is not None
    return Path(image.rootfs)


def import_layers(
    tmp_path: Path, *layers: Sequence[Entry], env: Sequence[str] = DEFAULT_ENV
) -> Path:
    """Import an image of gzip layers holding `layers`; return its rootfs."""
    layout = write_layout(tmp_path / "layout", [Layer(entries) for entries in layers], env=env)
    return rootfs_of(import_oci(layout, tmp_path / "cache"))


def blob_path(layout: Path, descriptor: dict[str, Any]) -> Path:
    return layout / "blobs" / "sha256" / str(descriptor["digest"]).removeprefix("sha256:")


# --- layers ---------------------------------------------------------------------------


def test_upper_layers_overwrite_lower_ones_in_order(tmp_path: Path) -> None:
    rootfs = import_layers(
        tmp_path,
        [
            File("a.txt", b"one"),
            Dir("d"),
            File("d/x", b"x"),
            File("was-file", b"f"),
            Dir("was-dir"),
            File("was-dir/y"),
        ],
        [File("a.txt", b"two"), Dir("was-file"), File("was-dir", b"now a file")],
        [File("a.txt", b"three")],
    )
    assert (rootfs / "a.txt").read_bytes() == b"three"
    assert (rootfs / "d/x").read_bytes() == b"x"
    assert (rootfs / "was-file").is_dir()
    assert (rootfs / "was-dir").read_bytes() == b"now a file"


def test_uncompressed_and_gzip_layers_mix(tmp_path: Path) -> None:
    layout = write_layout(
        tmp_path / "layout", [Layer([File("a", b"plain")], gzip=False), Layer([File("b", b"gz")])]
    )
    rootfs = rootfs_of(import_oci(layout, tmp_path / "cache"))
    assert (rootfs / "a").read_bytes() == b"plain" and (rootfs / "b").read_bytes() == b"gz"


def test_docker_gzip_media_type_is_accepted(tmp_path: Path) -> None:
    layer = Layer(
        [File("a", b"docker")], media_type="application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
    rootfs = rootfs_of(import_oci(write_layout(tmp_path / "layout", [layer]), tmp_path / "cache"))
    assert (rootfs / "a").read_bytes() == b"docker"


def test_zstd_layer_without_a_zstd_module_is_a_clear_error(tmp_path: Path) -> None:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("zstandard is installed")
    layer = Layer([File("a")], media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    with pytest.raises(ImageError, match="zstd"):
        import_oci(write_layout(tmp_path / "layout", [layer]), tmp_path / "cache")


def test_unknown_layer_media_type_is_refused(tmp_path: Path) -> None:
    layer = Layer([File("a")], media_type="application/x-something")
    with pytest.raises(ImageError, match="application/x-something"):
        import_oci(write_layout(tmp_path / "layout", [layer]), tmp_path / "cache")


def test_whiteouts_delete_a_file_and_a_directory(tmp_path: Path) -> None:
    rootfs = import_layers(
        tmp_path,
        [File("keep"), File("gone"), Dir("tree"), Dir("tree/sub"), File("tree/sub/f")],
        [Whiteout("gone"), Whiteout("tree")],
    )
    assert (rootfs / "keep").exists()
    assert not os.path.lexists(rootfs / "gone") and not os.path.lexists(rootfs / "tree")
    assert not any(p.name.startswith(".wh.") for p in rootfs.rglob("*"))


def test_whiteout_hides_lower_layers_only_whatever_its_place_in_the_tar(tmp_path: Path) -> None:
    rootfs = import_layers(tmp_path, [Dir("d"), File("d/old")], [File("d/new"), Whiteout("d/old")])
    assert sorted(p.name for p in (rootfs / "d").iterdir()) == ["new"]


def test_opaque_directory_keeps_only_what_its_layer_adds(tmp_path: Path) -> None:
    rootfs = import_layers(
        tmp_path,
        [Dir("d"), File("d/x"), File("d/y"), Dir("d/sub"), File("d/sub/lower"), File("other")],
        # the marker last: its place in the tar must not matter
        [File("d/z", b"z"), Dir("d/sub"), File("d/sub/upper"), Opaque("d")],
    )
    assert sorted(p.name for p in (rootfs / "d").iterdir()) == ["sub", "z"]
    assert sorted(p.name for p in (rootfs / "d/sub").iterdir()) == ["upper"]
    assert (rootfs / "other").exists()


def test_hard_links_share_an_inode_within_and_across_layers(tmp_path: Path) -> None:
    rootfs = import_layers(
        tmp_path,
        [File("usr/lib/a", b"data")],
        [
            Hardlink("b", "usr/lib/a"),
            Hardlink("c", "/usr/lib/a"),
            File("d", b"d"),
            Hardlink("e", "./d"),
        ],
    )
    inode = os.stat(rootfs / "usr/lib/a").st_ino
    assert os.stat(rootfs / "b").st_ino == inode == os.stat(rootfs / "c").st_ino
    assert os.stat(rootfs / "e").st_ino == os.stat(rootfs / "d").st_ino
    assert (rootfs / "c").read_bytes() == b"data"


def test_symlinks_are_kept_as_symlinks(tmp_path: Path) -> None:
    rootfs = import_layers(
        tmp_path,
        [Symlink("abs", "/etc/passwd"), Symlink("rel", "../x"), Symlink("dangling", "nope")],
    )
    assert os.readlink(rootfs / "abs") == "/etc/passwd"
    assert os.readlink(rootfs / "rel") == "../x"
    assert os.readlink(rootfs / "dangling") == "nope"


def test_setuid_and_setgid_bits_are_stripped(tmp_path: Path) -> None:
    rootfs = import_layers(
        tmp_path, [File("su", b"", 0o4755), File("sg", b"", 0o2711), Dir("sgdir", 0o3775)]
    )
    assert stat.S_IMODE(os.stat(rootfs / "su").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(rootfs / "sg").st_mode) == 0o711
    assert stat.S_IMODE(os.stat(rootfs / "sgdir").st_mode) == 0o1775


def test_device_nodes_and_fifos_are_skipped(tmp_path: Path) -> None:
    rootfs = import_layers(
        tmp_path,
        [
            Device("x/null"),
            Device("x/sda", tarfile.BLKTYPE),
            Device("x/pipe", tarfile.FIFOTYPE),
            File("x/ok"),
        ],
    )
    assert sorted(p.name for p in (rootfs / "x").iterdir()) == ["ok"]


def test_files_are_not_chowned_to_the_tar_owner(tmp_path: Path) -> None:
    rootfs = import_layers(tmp_path, [File("f", uid=4321), Dir("d", uid=4321)])
    assert os.stat(rootfs / "f").st_uid == os.stat(rootfs / "d").st_uid == os.geteuid()


# --- blobs and manifests --------------------------------------------------------------


@pytest.mark.parametrize("corrupt", ["flip", "truncate"])
def test_a_blob_not_matching_its_digest_is_refused(tmp_path: Path, corrupt: str) -> None:
    builder = LayoutBuilder(tmp_path / "layout")
    descriptor = builder.image([Layer([File("a", b"content")])])
    layout = builder.write_index((descriptor, "latest"))
    manifest = blob_path(layout, descriptor)
    layer_blob = blob_path(layout, json.loads(manifest.read_text())["layers"][0])
    data = layer_blob.read_bytes()
    layer_blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if corrupt == "flip" else data[:-1])
    digest = layer_blob.name
    with pytest.raises(ImageError, match=f"blob sha256:{digest}"):
        import_oci(layout, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no staging directory left behind


def test_a_corrupt_manifest_is_refused_before_any_extraction(tmp_path: Path) -> None:
    builder = LayoutBuilder(tmp_path / "layout")
    descriptor = builder.image([Layer([File("a")])])
    layout = builder.write_index((descriptor, "latest"))
    blob_path(layout, descriptor).write_text("{}")
    with pytest.raises(ImageError, match=descriptor["digest"]):
        import_oci(layout, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def two_tag_layout(tmp_path: Path, tags: tuple[str | None, str | None] = ("a", "b")) -> Path:
    builder = LayoutBuilder(tmp_path / "layout")
    first = builder.image([Layer([File("which", b"first")])])
    second = builder.image([Layer([File("which", b"second")])])
    return builder.write_index((first, tags[0]), (second, tags[1]))


def test_tag_selects_the_manifest(tmp_path: Path) -> None:
    image = import_oci(two_tag_layout(tmp_path), tmp_path / "cache", tag="b")
    assert (rootfs_of(image) / "which").read_bytes() == b"second"
    assert image.name.startswith("sha256:") and len(image.name) == 71


@pytest.mark.parametrize(
    ("tags", "tag", "problem"),
    [
        (("a", "b"), None, "no tag given and the layout holds several images"),
        (("a", "b"), "c", "no image tagged 'c'"),
        (("a", "a"), "a", "several images tagged 'a'"),
    ],
)
def test_ambiguous_or_missing_tag_names_the_available_tags(
    tmp_path: Path, tags: tuple[str, str], tag: str | None, problem: str
) -> None:
    with pytest.raises(ImageError) as raised:
        import_oci(two_tag_layout(tmp_path, tags), tmp_path / "cache", tag=tag)
    assert problem in str(raised.value)
    assert "'a'" in str(raised.value)


def test_single_untagged_manifest_needs_no_tag(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "layout", [Layer([File("a")])], tag=None)
    assert import_oci(layout, tmp_path / "cache").rootfs


def multi_platform_layout(tmp_path: Path, platforms: Sequence[str]) -> Path:
    builder = LayoutBuilder(tmp_path / "layout")
    manifests = [
        with_platform(
            builder.image([Layer([File("platform", p.encode())])], architecture=p.split("/")[1]), p
        )
        for p in platforms
    ]
    return builder.write_index((builder.index(manifests), "latest"))


@pytest.mark.parametrize(
    ("machine", "expected"), [("x86_64", b"linux/amd64"), ("aarch64", b"linux/arm64")]
)
def test_nested_index_picks_linux_and_the_machine_architecture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: str, expected: bytes
) -> None:
    monkeypatch.setattr("platform.machine", lambda: machine)
    layout = multi_platform_layout(
        tmp_path, ["unknown/unknown", "linux/arm64", "windows/amd64", "linux/amd64"]
    )
    image = import_oci(layout, tmp_path / "cache")
    assert (rootfs_of(image) / "platform").read_bytes() == expected


def test_nested_index_without_the_machine_platform_names_what_it_has(tmp_path: Path) -> None:
    layout = multi_platform_layout(tmp_path, ["linux/s390x", "linux/ppc64le"])
    with pytest.raises(
        ImageError, match=f"no linux/{HOST_ARCH} image .*linux/s390x, linux/ppc64le"
    ):
        import_oci(layout, tmp_path / "cache")


def test_tar_of_a_layout_imports_like_the_directory(tmp_path: Path) -> None:
    layout_tar = write_layout(
        tmp_path / "layout.tar", [Layer([File("a", b"from tar")])], as_tar=True
    )
    image = import_oci(layout_tar, tmp_path / "cache", tag="latest")
    assert (rootfs_of(image) / "a").read_bytes() == b"from tar"


def test_a_source_that_is_no_layout_is_an_image_error(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not a tar")
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "junk", tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ImageError):
            import_oci(source, tmp_path / "cache")


# --- cache ----------------------------------------------------------------------------


def test_importing_again_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = write_layout(tmp_path / "layout", [Layer([File("a", b"x")])])
    first = import_oci(layout, tmp_path / "cache")
    mtime = os.stat(rootfs_of(first) / "a").st_mtime_ns

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cached image was extracted again")

    monkeypatch.setattr(oci, "_build", no_rebuild)
    for source in (layout, tar_layout(layout, tmp_path / "layout.tar")):
        assert import_oci(source, tmp_path / "cache") == first
    assert os.stat(rootfs_of(first) / "a").st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name.removeprefix("sha256:")]


def test_load_cached_returns_the_imported_image(tmp_path: Path) -> None:
    rootfs = import_layers(tmp_path, [File("usr/bin/bash", b"#!", 0o755)])
    digest = "sha256:" + rootfs.parent.name
    image = load_cached(tmp_path / "cache", digest)
    assert (image.name, image.rootfs, image.binds) == (digest, str(rootfs), ())
    assert image.interpreters == {"bash": "/usr/bin/bash"}


def test_load_cached_of_an_unknown_or_malformed_digest_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not in the cache"):
        load_cached(tmp_path, "sha256:" + "0" * 64)
    with pytest.raises(ImageError, match="malformed"):
        load_cached(tmp_path, "sha256:../../etc")


def test_metadata_records_digest_tag_env_and_workdir(tmp_path: Path) -> None:
    rootfs = import_layers(tmp_path, [File("a")], env=["PATH=/bin", "LANG=C.UTF-8"])
    metadata = json.loads((rootfs.parent / "metadata.json").read_text())
    assert metadata == {
        "digest": "sha256:" + rootfs.parent.name,
        "tag": "latest",
        "interpreters": {},
        "env": ["PATH=/bin", "LANG=C.UTF-8"],
        "working_dir": "/",
    }


def test_created_directories_are_traversable_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        rootfs = import_layers(tmp_path, [File("implicit/parent/f")])
    finally:
        os.umask(old)
    created = [rootfs / "implicit", rootfs / "implicit/parent", rootfs / "home/baponi"]
    for path in [tmp_path / "cache", rootfs.parent, rootfs, *created]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o755, path


def test_mount_points_are_real_directories(tmp_path: Path) -> None:
    rootfs = import_layers(
        tmp_path,
        [
            Dir("etc"),
            File("etc/os-release", b"ID=test"),
            Symlink("tmp", "/var/tmp"),
            File("home", b"a file"),
        ],
        [Symlink("proc", "/elsewhere"), Symlink("data", str(tmp_path / "outside"))],
    )
    for mount_point in MOUNT_POINTS:
        assert stat.S_ISDIR(os.lstat(rootfs / mount_point).st_mode), mount_point
    assert (rootfs / "etc/os-release").read_bytes() == b"ID=test"
    assert list((rootfs / "tmp").iterdir()) == []


# --- escapes --------------------------------------------------------------------------
# Choice: ".." in an entry or hard-link name, hard links to anything not inside the image,
# and symlink loops are refused (ImageError, nothing published). Absolute names and paths
# through symlinks are neutralised: resolved as if the rootfs were "/", as in a chroot.

Layers = Callable[[str], list[list[Entry]]]  # built from the outside directory's absolute path

REFUSED: dict[str, tuple[Layers, str]] = {
    "dotdot-file": (lambda o: [[File("../../../outside/pwned")]], "'..'"),
    "dotdot-dir": (lambda o: [[Dir("a/../../../../outside/pwned")]], "'..'"),
    "dotdot-symlink-name": (lambda o: [[Symlink("../../../outside/pwned", "/")]], "'..'"),
    "dotdot-whiteout": (lambda o: [[Whiteout("../../../outside/secret")]], "'..'"),
    "dotdot-hardlink": (lambda o: [[Hardlink("stolen", "../../../outside/secret")]], "'..'"),
    "absolute-hardlink": (
        lambda o: [[Hardlink("stolen", f"{o}/secret")]],
        "no such file in the image",
    ),
    "hardlink-via-lower-symlink": (
        lambda o: [[Symlink("evil", o)], [Hardlink("stolen", "evil/secret")]],
        "no such file in the image",
    ),
    "symlink-loop": (
        lambda o: [[Symlink("a", "b"), Symlink("b", "/a"), File("a/pwned")]],
        "too many levels",
    ),
}

# Each neutralised case: its layers, a path relative to the rootfs, and whether that path
# must exist (what was written landed inside) or must not (what was deleted was inside).
NEUTRALISED: dict[str, tuple[Layers, Callable[[str], str], bool]] = {
    "absolute-name": (lambda o: [[File(f"{o}/pwned", b"x")]], lambda o: f"{o}/pwned", True),
    "through-absolute-symlink": (
        lambda o: [[Symlink("evil", o), File("evil/pwned")]],
        lambda o: f"{o}/pwned",
        True,
    ),
    "through-climbing-symlink": (
        # unclamped, "../../.." from the rootfs would be the test's tmp_path
        lambda o: [[Symlink("evil", "../../../outside"), File("evil/pwned")]],
        lambda o: "outside/pwned",
        True,
    ),
    "through-lower-layer-symlink": (
        lambda o: [[Symlink("evil", o)], [File("evil/pwned")]],
        lambda o: f"{o}/pwned",
        True,
    ),
    "through-symlinked-dir-chain": (
        lambda o: [[Symlink("a", "b/c"), Symlink("b", o)], [File("a/pwned")]],
        lambda o: f"{o}/c/pwned",
        True,
    ),
    "dir-through-symlink": (
        lambda o: [[Symlink("evil", o)], [Dir("evil/pwned", 0o777)]],
        lambda o: f"{o}/pwned",
        True,
    ),
    "overwrite-symlink-to-outside-file": (
        lambda o: [[Symlink("secret", f"{o}/secret")], [File("secret", b"overwritten")]],
        lambda o: "secret",
        True,
    ),
    "hardlink-over-symlink-to-outside-file": (
        lambda o: [
            [Symlink("secret", f"{o}/secret"), File("f", b"mine")],
            [Hardlink("secret", "f")],
        ],
        lambda o: "secret",
        True,
    ),
    "whiteout-through-symlink": (
        lambda o: [[Symlink("evil", o), File(f"{o}/secret")], [Whiteout("evil/secret")]],
        lambda o: f"{o}/secret",
        False,
    ),
    "opaque-through-symlink": (
        lambda o: [[Symlink("evil", o), File(f"{o}/secret")], [Opaque("evil")]],
        lambda o: f"{o}/secret",
        False,
    ),
}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory next to the cache holding a secret no layer may touch."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_bytes(b"host secret")
    return tmp_path / "outside"


def files_outside_rootfs(tmp_path: Path) -> set[str]:
    """Every file or symlink under tmp_path outside the layout and the cached rootfs."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        here = Path(dirpath)
        if here == tmp_path / "layout" or (
            here.name == "rootfs" and here.parent.parent == tmp_path / "cache"
        ):
            dirnames.clear()
            continue
        names = filenames + [d for d in dirnames if (here / d).is_symlink()]
        found |= {
            str((here / name).relative_to(tmp_path)) for name in names if name != "metadata.json"
        }
    return found


def assert_outside_untouched(tmp_path: Path, outside: Path) -> None:
    assert files_outside_rootfs(tmp_path) == {"outside/secret"}
    assert [p.name for p in outside.iterdir()] == ["secret"]
    assert (outside / "secret").read_bytes() == b"host secret"
    assert os.stat(outside / "secret").st_nlink == 1
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o755


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_escape_attempt_is_refused(tmp_path: Path, outside: Path, case: str) -> None:
    layers, message = REFUSED[case]
    with pytest.raises(ImageError, match=message):
        import_layers(tmp_path, *layers(str(outside)))
    assert_outside_untouched(tmp_path, outside)
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("case", NEUTRALISED, ids=list(NEUTRALISED))
def test_escape_attempt_is_neutralised_inside_the_rootfs(
    tmp_path: Path, outside: Path, case: str
) -> None:
    layers, inside, exists = NEUTRALISED[case]
    rootfs = import_layers(tmp_path, *layers(str(outside)))
    assert_outside_untouched(tmp_path, outside)
    path = rootfs / inside(str(outside)).lstrip("/")
    assert os.path.lexists(path) == exists, path
    assert not path.is_symlink()


# --- interpreters ---------------------------------------------------------------------


def test_interpreters_are_found_through_absolute_symlink_chains_inside_the_image(
    tmp_path: Path,
) -> None:
    rootfs = import_layers(
        tmp_path,
        [
            File("opt/python/bin/python3.12", b"\x7fELF", 0o755),
            Symlink("usr/bin/python3.12", "/opt/python/bin/python3.12"),
            Symlink("usr/bin/python3", "/usr/bin/python3.12"),
            Symlink("usr/bin/python", "python3"),
            Symlink("bin", "usr/bin"),
            File("usr/bin/bash", b"\x7fELF", 0o755),
        ],
    )
    image = load_cached(tmp_path / "cache", "sha256:" + rootfs.parent.name)
    assert image.interpreters == {"python": "/usr/bin/python3", "bash": "/usr/bin/bash"}
    with pytest.raises(LanguageNotInImage):
        image.interpreter("node")


def test_interpreter_links_resolve_in_the_image_never_on_the_host(tmp_path: Path) -> None:
    assert Path("/usr/bin/env").exists()
    rootfs = import_layers(
        tmp_path,
        [
            Symlink("usr/bin/python3", "/usr/bin/env"),  # exists on the host only
            Symlink("usr/bin/bash", "../" * 10 + "usr/bin/bash"),  # climbs to itself: a loop
            File("usr/bin/node", b"not executable", 0o644),
            Dir("usr/local/bin/python"),
        ],
    )
    assert load_cached(tmp_path / "cache", "sha256:" + rootfs.parent.name).interpreters == {}


def test_interpreters_follow_the_image_path_and_prefer_python3(tmp_path: Path) -> None:
    rootfs = import_layers(
        tmp_path,
        [
            File("usr/bin/python", b"", 0o755),
            File("opt/py/python3", b"", 0o755),
            File("opt/node/bin/node", b"", 0o755),
            File("usr/local/bin/node", b"", 0o755),  # not on this image's PATH
        ],
        env=["PATH=/opt/node/bin:/usr/bin:/opt/py:relative/ignored"],
    )
    image = load_cached(tmp_path / "cache", "sha256:" + rootfs.parent.name)
    assert image.interpreters == {"python": "/opt/py/python3", "node": "/opt/node/bin/node"}


# --- the bash-only image later sandbox tests use --------------------------------------


def test_bash_only_layout_has_bash_and_nothing_else(tmp_path: Path) -> None:
    image = import_oci(bash_only_layout(tmp_path / "layout"), tmp_path / "cache")
    assert image.interpreters == {"bash": "/usr/bin/bash"}
    assert image.languages == ("bash",)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chroot") is None, reason="chroot needs root")
def test_bash_from_the_bash_only_image_runs_in_its_rootfs(tmp_path: Path) -> None:
    image = import_oci(bash_only_layout(tmp_path / "layout"), tmp_path / "cache")
    result = subprocess.run(
        [
            "chroot",
            image.rootfs or "",
            image.interpreter("bash"),
            "-c",
            "echo hello from $BASH_VERSION",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hello from ")
