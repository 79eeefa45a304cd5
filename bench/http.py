"""End-to-end benchmark: `POST /v1/sandbox/execute` through a real `baponi serve`.

Run as root: `.venv/bin/python -m bench.http [--runs N]`. In the same run it measures
the agent-level warm claim (no HTTP) and a plain unisolated `python3 -c` cold start, so the
HTTP figures are read against baselines taken on the same machine at the same time. The
calls are made by curl (C, keep-alive), so the load generator costs the cores little.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from nodeagent.config import SandboxConfig
from nodeagent.runtime import Runtime

from .agent import INTERPRETERS, PROGRAMS, cli, percentile, row, subprocess_run, timed, warm_latency

CONCURRENCY = (1, 4, 16)
CONFIG = """apiVersion: baponi.dev/v1alpha1
kind: Sandbox
metadata: {name: default}
spec: {warm: 8}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Target:
    """The server under test, and where the load generator's files go."""

    url: str
    key: str
    scratch: Path


async def curl_posts(target: Target, language: str, total: int, *curl_args: str) -> tuple[float, list[float]]:
    """`total` POSTs of the language's program by one curl process (the calls per second, and
    each call's ms as curl timed it). curl is C and keeps its connections alive, so the load
    generator takes little of the two cores it shares with the server, where a Python client
    took a fifth of them. The key travels in a config on stdin, never on a command line."""
    body = target.scratch / f"{language}.json"
    body.write_text(json.dumps({"code": PROGRAMS[language], "language": language}))
    config = [
        f'header = "Authorization: Bearer {target.key}"',
        'header = "Content-Type: application/json"',
        f'data-binary = "@{body}"',
        *[f'url = "{target.url}/v1/sandbox/execute"\noutput = "/dev/null"' for _ in range(total)],
    ]
    started = time.perf_counter()
    curl = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--no-progress-meter", "--write-out", "%{http_code} %{time_total}\n", *curl_args,
        "--config", "-", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    out, _ = await curl.communicate("\n".join(config).encode())
    elapsed = time.perf_counter() - started
    answers = [line.split() for line in out.decode().splitlines()]
    statuses = {status for status, _ in answers}
    assert curl.returncode == 0 and len(answers) == total and statuses == {"200"}, (curl.returncode, statuses)
    return total / elapsed, [float(seconds) * 1000 for _, seconds in answers]


async def http_latency(target: Target, language: str, runs: int) -> list[float]:
    """One call at a time, six a second, so the pool has refilled before each."""
    return (await curl_posts(target, language, runs, "--rate", "6/s"))[1]


async def http_throughput(target: Target, language: str, concurrency: int, total: int) -> tuple[float, list[float]]:
    await asyncio.sleep(1.0)  # pools full again
    return await curl_posts(target, language, total, "--parallel", "--parallel-immediate", "--parallel-max", str(concurrency))


def _bench_key(data_dir: Path) -> str:
    """A key whose limits do not cap the benchmark's concurrency (the default allows 8)."""
    for _ in range(300):
        if (data_dir / "baponi.db").exists():
            break
        time.sleep(0.1)
    created = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "--data-dir", str(data_dir), "create", "--name", "bench",
         "--max-concurrent", "64", "--rate-per-minute", "1000000"],
        capture_output=True, text=True, check=True,
    ).stdout
    return next(line.split(":", 1)[1].strip() for line in created.splitlines() if line.startswith("api key:"))


async def baselines(runs: int, data_dir: Path) -> list[str]:
    runtime = Runtime(data_dir / "agent-only", [SandboxConfig(name="warm", warm=8)])
    await runtime.start()
    try:
        await runtime.wait_warm(timeout=120)
        lines = [row("python warm claim-to-exit, agent level (no HTTP)", await warm_latency(runtime, "python", runs))]
    finally:
        await runtime.close()
    plain = [await timed(lambda: subprocess_run([*INTERPRETERS["python"], PROGRAMS["python"]])) for _ in range(max(10, runs // 4))]
    lines.append(row("python plain subprocess `python3 -c` (baseline, unisolated)", plain))
    return lines


async def main(runs: int, languages: list[str]) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="baponi-bench-http-", dir="/tmp"))
    data_dir.chmod(0o711)
    (data_dir / "config.yaml").write_text(CONFIG)
    port = _free_port()
    print(f"# baponi HTTP benchmark, {os.cpu_count()} cores, {runs} runs per row\n")
    print("| what | p50 ms | p99 ms | notes |\n|---|---|---|---|")
    for line in await baselines(runs, data_dir):
        print(line)
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--data-dir", str(data_dir / "serve"),
         "--config", str(data_dir / "config.yaml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        key = _bench_key(data_dir / "serve")
        target = Target(f"http://127.0.0.1:{port}", key, data_dir)
        async with httpx.AsyncClient(base_url=target.url, timeout=60) as client:
            for _ in range(600):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # every pool full
        for language in languages:
            print(row(f"{language} `{PROGRAMS[language]}` through HTTP", await http_latency(target, language, runs)))
        print("\n| throughput | concurrency | executions/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
        for language in languages:
            for concurrency in CONCURRENCY:
                rate, samples = await http_throughput(target, language, concurrency, total=max(200, runs))
                print(f"| {language} over HTTP | {concurrency} | {rate:.0f} | {percentile(samples, 0.5):.1f} | {percentile(samples, 0.99):.1f} |")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    cli(main, __doc__)
