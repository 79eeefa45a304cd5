#!/usr/bin/env python3
"""Generate the Python stubs of proto/ into nodeagent/proto/ (committed; see proto/README.md).

protoc names modules after the proto path (`baponi.agent.v1`), so the generated files import
each other as `baponi.agent.v1...`; they live in the `nodeagent.proto` package instead, so
those imports are rewritten. The descriptors keep the canonical file name
`baponi/agent/v1/agent.proto`, which other languages and reflection see.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE = "baponi/agent/v1"
PYTHON_PACKAGE = "nodeagent.proto"
DEFAULT_OUT = ROOT / "nodeagent" / "proto"
_IMPORT = re.compile(rf"^from {re.escape(PROTO_PACKAGE.replace('/', '.'))} import ", re.MULTILINE)


def generate(out: Path) -> list[Path]:
    """Write the stubs into `out`; returns the files written."""
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *sources]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {sources}")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for generated in sorted((Path(tmp) / PROTO_PACKAGE).iterdir()):
            target = out / generated.name
            target.write_text(_IMPORT.sub(f"from {PYTHON_PACKAGE} import ", generated.read_text()))
            written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    for path in generate(parser.parse_args().out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
