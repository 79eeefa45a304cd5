"""`baponi-agent`: run code in a sandbox of the local node agent, from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from . import logs
from .config import SandboxConfig
from .execution import ExecutionRequest, ExecutionResult, OutputChunk
from .runtime import Runtime


async def _run_once(args: argparse.Namespace) -> int:
    runtime = Runtime(Path(args.data_dir), [SandboxConfig(warm=0, max_timeout=max(args.timeout, 1))])
    await runtime.start()
    try:
        request = ExecutionRequest(code=args.code, language=args.language, timeout=args.timeout)
        result: ExecutionResult | None = None
        async for event in runtime.execute("default", request):
            if isinstance(event, OutputChunk):
                stream = sys.stdout if event.stream == "stdout" else sys.stderr
                stream.buffer.write(event.data)
                stream.flush()
            else:
                result = event
        assert result is not None
        if result.timed_out:
            print(f"baponi-agent: timed out after {args.timeout:g} s", file=sys.stderr)
        return result.exit_code
    finally:
        await runtime.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baponi-agent", description="Run code in an isolated Baponi sandbox.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one piece of code in a fresh sandbox and print its output")
    run.add_argument("code")
    run.add_argument("--language", "-l", choices=("python", "node", "bash"), default="python")
    run.add_argument("--timeout", type=float, default=60.0)
    run.add_argument("--data-dir", default="/var/lib/baponi")
    args = parser.parse_args(argv)
    logs.configure("warning")
    return asyncio.run(_run_once(args))


if __name__ == "__main__":
    sys.exit(main())
