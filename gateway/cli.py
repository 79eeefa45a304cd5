"""`baponi`: serve Baponi on one machine, run code against a server, manage API keys."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import httpx

from nodeagent import logs
from nodeagent.config import ConfigError
from nodeagent.images import ImageError
from nodeagent.isolation.launcher import LauncherError
from nodeagent.isolation.spawner import SpawnerError

from .local import DEFAULT_DATA_DIR, LocalServer, ServeOptions
from .settings import Settings
from .store import open_store

DATABASE_URL_ENV = "BAPONI_DATABASE_URL"
API_KEY_ENV = "BAPONI_API_KEY"
URL_ENV = "BAPONI_URL"


def _serve(args: argparse.Namespace) -> int:
    options = ServeOptions(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir),
        config=Path(args.config) if args.config else None,
        database_url=os.environ.get(DATABASE_URL_ENV),
        agents=tuple(args.agent or ()),
    )
    try:
        asyncio.run(LocalServer(options).run())
    except (ConfigError, ImageError, LauncherError, SpawnerError, OSError, ValueError) as exc:
        print(f"baponi: {exc}", file=sys.stderr)
        return 1
    return 0


def _exec(args: argparse.Namespace) -> int:
    """One execution against a running server; exits with the code's exit code."""
    key = args.api_key or os.environ.get(API_KEY_ENV)
    if not key:
        print(f"baponi: give an API key with --api-key or {API_KEY_ENV}", file=sys.stderr)
        return 2
    code = sys.stdin.read() if args.code == "-" else args.code
    body: dict[str, object] = {"code": code, "language": args.language, "timeout": args.timeout}
    if args.thread_id:
        body["thread_id"] = args.thread_id
    try:
        response = httpx.post(
            f"{args.url.rstrip('/')}/v1/sandbox/execute",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=args.timeout + 30,
        )
    except httpx.HTTPError as exc:
        print(f"baponi: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    payload = response.json()
    if response.status_code != 200:
        error = payload.get("error", {})
        print(f"baponi: {response.status_code} {error.get('code')}: {error.get('message')}", file=sys.stderr)
        return 2
    sys.stdout.write(payload["stdout"])
    sys.stderr.write(payload["stderr"])
    if payload.get("timed_out"):
        print(f"baponi: timed out after {args.timeout:g} s", file=sys.stderr)
    return int(payload["exit_code"])


async def _keys(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    store = await open_store(os.environ.get(DATABASE_URL_ENV), data_dir)
    try:
        if args.keys == "create":
            key, secret = await store.create_key(
                args.name, args.sandbox, max_concurrent=args.max_concurrent, rate_per_minute=args.rate_per_minute
            )
            webhook_secret = Settings.load(data_dir).webhook_secret_for(key.id)
            print(f"id:             {key.id}\nsandbox:        {key.sandbox}\napi key:        {secret}")
            print(f"webhook secret: {webhook_secret}\n(the API key is shown once; only its hash is stored)")
        elif args.keys == "list":
            for key in await store.list_keys():
                state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                print(f"{key.id}  sk-{key.prefix}…  {key.name:20}  {key.sandbox:12}  {state}")
        elif not await store.revoke_key(args.id):
            print(f"baponi: no active key with id {args.id!r}", file=sys.stderr)
            return 1
        return 0
    finally:
        await store.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baponi", description="Run untrusted code in isolated sandboxes.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the gateway and a node agent on this machine")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    serve.add_argument("--config", help="YAML file of Baponi resources (Sandbox); default: the built-in sandbox")
    serve.add_argument(
        "--agent", action="append", metavar="ADDRESS",
        help="a node agent served elsewhere (unix:///path or host:port; repeat for several) to run the code "
        "instead of the one in this process",
    )

    run = commands.add_parser("exec", help="run code on a running server and print its output")
    run.add_argument("code", help="the code, or - to read it from stdin")
    run.add_argument("--language", "-l", choices=("python", "node", "bash"), default="python")
    run.add_argument("--timeout", type=float, default=60.0)
    run.add_argument("--thread-id")
    run.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8080"))
    run.add_argument("--api-key", help=f"default: ${API_KEY_ENV}")

    keys = commands.add_parser("keys", help="create, list or revoke API keys (needs the server's data dir or database)")
    keys.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    actions = keys.add_subparsers(dest="keys", required=True)
    create = actions.add_parser("create")
    create.add_argument("--name", required=True)
    create.add_argument("--sandbox", default="default")
    create.add_argument("--max-concurrent", type=int, default=8, help="executions at once (over it: 429)")
    create.add_argument("--rate-per-minute", type=int, default=600, help="executions a minute (over it: 429)")
    actions.add_parser("list")
    revoke = actions.add_parser("revoke")
    revoke.add_argument("id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure("info" if args.command == "serve" else "warning")
    if args.command == "serve":
        return _serve(args)
    if args.command == "exec":
        return _exec(args)
    return asyncio.run(_keys(args))


if __name__ == "__main__":
    sys.exit(main())
