"""`baponi-agent`: run code in a sandbox from the command line, or serve the node agent's gRPC API."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from . import logs
from .config import ConfigError, SandboxConfig
from .execution import ExecutionRequest, ExecutionResult, OutputChunk
from .images import ImageError
from .isolation.launcher import LauncherError
from .isolation.spawner import SpawnerError
from .resources import load_documents, sandbox_configs
from .runtime import Runtime
from .server import AgentServer


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


def _serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM (exit 0 after draining); a configuration or start-up failure exits 1."""
    try:
        configs = sandbox_configs(load_documents(Path(args.config))) if args.config else [SandboxConfig()]
        runtime = Runtime(Path(args.data_dir), configs)
        server = AgentServer(runtime, args.address, metrics_address=args.metrics_address, grace=args.grace)
        asyncio.run(server.run())
    except (ConfigError, ImageError, LauncherError, SpawnerError, OSError) as exc:
        print(f"baponi-agent: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baponi-agent", description="Run code in an isolated Baponi sandbox.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one piece of code in a fresh sandbox and print its output")
    run.add_argument("code")
    run.add_argument("--language", "-l", choices=("python", "node", "bash"), default="python")
    run.add_argument("--timeout", type=float, default=60.0)
    run.add_argument("--data-dir", default="/var/lib/baponi")
    serve = commands.add_parser("serve", help="serve the node agent's gRPC API until SIGTERM")
    serve.add_argument("--address", required=True, help="where to listen: unix:///path or host:port")
    serve.add_argument("--data-dir", default="/var/lib/baponi")
    serve.add_argument("--config", help="YAML file of Sandbox resources (default: the built-in default sandbox)")
    serve.add_argument("--metrics-address", help="host:port to serve Prometheus metrics on (default: none)")
    serve.add_argument("--grace", type=float, default=30.0, help="seconds running calls get to finish on SIGTERM")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    if args.command == "serve":
        logs.configure(args.log_level)
        return _serve(args)
    logs.configure("warning")
    return asyncio.run(_run_once(args))


if __name__ == "__main__":
    sys.exit(main())
