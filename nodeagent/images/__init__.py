"""Runtime images: the read-only root filesystems sandboxes start from."""

from __future__ import annotations

from dataclasses import dataclass, field

LANGUAGES = ("python", "node", "bash")

# Directories every sandbox root needs as mount points, whatever the image holds.
MOUNT_POINTS = ("proc", "dev", "tmp", "home/baponi", "data", "sys", "etc")


class ImageError(Exception):
    """An image cannot be built, imported or used as asked."""


class LanguageNotInImage(ImageError):
    """The image has no interpreter for the language a call asked for."""

    def __init__(self, image: str, language: str, available: tuple[str, ...]) -> None:
        self.image, self.language, self.available = image, language, available
        have = ", ".join(available) or "none"
        super().__init__(f"image {image!r} has no {language} interpreter (it has: {have})")


@dataclass(frozen=True)
class Image:
    """What a sandbox root is made of.

    With `rootfs` set, that directory (already holding every mount point) is the root.
    Without it, the root is a fresh tmpfs per sandbox, populated with `symlinks` and
    `etc_files`, so nothing of the host's directory layout shows in mountinfo.
    `binds` are (host path, path inside) pairs mounted read-only on top. `host_interpreters`:
    each interpreter is the host's own file at the same path, so one started on the host is
    the one a sandbox would start (its warm sandboxes may be forked from a zygote).
    """

    name: str
    interpreters: dict[str, str]
    rootfs: str | None = None
    binds: tuple[tuple[str, str], ...] = ()
    symlinks: tuple[tuple[str, str], ...] = ()
    etc_files: dict[str, bytes] = field(default_factory=dict)
    host_interpreters: bool = False

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(lang for lang in LANGUAGES if lang in self.interpreters)

    def interpreter(self, language: str) -> str:
        """The absolute path, inside the image, of the interpreter for `language`."""
        try:
            return self.interpreters[language]
        except KeyError:
            raise LanguageNotInImage(self.name, language, self.languages) from None
