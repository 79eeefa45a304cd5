"""Code runs in real sandboxes whose root is an imported OCI image, and only there.

The image holds the host's bash and the libraries it links, nothing else: no python, no
node, not even `ls`, so what the code sees can only have come from the image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from nodeagent.config import SandboxConfig
from nodeagent.execution import ExecutionRequest
from nodeagent.images import Image, LanguageNotInImage
from nodeagent.images.oci import import_oci
from nodeagent.runtime import Runtime
from tests.conftest import Runner
from tests.images.oci_builder import bash_only_layout
from tests.isolation.runtimes import own_runtime

# bash builtins only: the image has no coreutils.
SHOW_ROOT = 'echo "$BASH_VERSION"; for entry in /*; do echo "${entry#/}"; done; [[ -e /usr/bin/python3 ]] && echo python3 || echo no python3'


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """The bash-only image, imported into a cache every sandbox uid can traverse."""
    scratch = Path(tempfile.mkdtemp(prefix="baponi-oci-", dir="/tmp"))
    scratch.chmod(0o711)
    yield import_oci(bash_only_layout(scratch / "layout"), scratch / "cache")
    shutil.rmtree(scratch, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def oci_runtime(image: Image) -> AsyncIterator[Runtime]:
    configs = [SandboxConfig(name="bashonly", image=image.name, warm=0), SandboxConfig(name="bashwarm", image=image.name, warm=1)]
    async with own_runtime(*configs, images={image.name: image}) as runtime:
        yield runtime


def test_only_bash_is_discovered(image):
    assert image.languages == ("bash",)


@pytest.mark.parametrize("sandbox", ["bashonly", "bashwarm"])
async def test_bash_runs_in_the_images_own_root(oci_runtime, image, sandbox):
    if sandbox == "bashwarm":
        await oci_runtime.pools[(sandbox, "bash")].wait_full(60)
    outcome = await Runner(oci_runtime)(SHOW_ROOT, "bash", sandbox=sandbox)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.result.cold_start == (sandbox == "bashonly")
    version, *entries, python = outcome.stdout.splitlines()
    host_version = subprocess.run(["/usr/bin/bash", "-c", 'echo "$BASH_VERSION"'], capture_output=True, text=True).stdout
    assert version == host_version.strip()
    assert entries == sorted(os.listdir(image.rootfs))  # type: ignore[arg-type]
    assert {"boot", "var", "root"}.isdisjoint(entries), "the host's root shows"
    assert python == "no python3"


async def test_image_root_is_read_only_and_tmp_writable(oci_runtime):
    code = "{ echo x > /usr/bin/new; } 2>/dev/null; echo $?; echo data > /tmp/f && read -r line < /tmp/f && echo \"$line\"; type ls 2>&1"
    outcome = await Runner(oci_runtime)(code, "bash", sandbox="bashonly")
    assert outcome.stdout.splitlines() == ["1", "data", "/usr/bin/bash: line 1: type: ls: not found"]


@pytest.mark.parametrize("language", ["python", "node"])
async def test_a_language_the_image_lacks_is_refused_by_name(oci_runtime, image, language):
    with pytest.raises(LanguageNotInImage) as refused:
        async for _ in oci_runtime.execute("bashonly", ExecutionRequest(code="print(1)", language=language)):
            pass
    assert str(refused.value) == f"image {image.name!r} has no {language} interpreter (it has: bash)"
    assert (refused.value.image, refused.value.language, refused.value.available) == (image.name, language, ("bash",))
