"""End-to-end benchmark: `POST /v1/sandbox/execute` through a real `baponi serve`.

Run as root: `sudo .venv/bin/python -m bench.http [--runs N]`. In the same run it measures
the agent-level warm claim (no HTTP) and a plain unisolated `python3 -c` cold start, so the
HTTP figures are read against baselines taken on the same machine at the same time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from nodeagent.config import SandboxConfig
from nodeagent.runtime import Runtime

from .agent import INTERPRETERS, PROGRAMS, cli, concurrently, percentile, row, subprocess_run, timed, warm_latency

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


async def _post(client: httpx.AsyncClient, language: str) -> None:
    response = await client.post("/v1/sandbox/execute", json={"code": PROGRAMS[language], "language": language})
    assert response.status_code == 200 and response.json()["exit_code"] == 0, response.text


async def http_latency(client: httpx.AsyncClient, language: str, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        await asyncio.sleep(0.15)  # one call at a time, with the pool refilled in between
        samples.append(await timed(lambda: _post(client, language)))
    return samples


async def http_throughput(client: httpx.AsyncClient, language: str, concurrency: int, total: int) -> tuple[float, list[float]]:
    await asyncio.sleep(1.0)  # pools full again
    return await concurrently(lambda: _post(client, language), concurrency, total)


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
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for _ in range(600):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)  # every pool full
            for language in languages:
                print(row(f"{language} `{PROGRAMS[language]}` through HTTP", await http_latency(client, language, runs)))
            print("\n| throughput | concurrency | executions/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
            for language in languages:
                for concurrency in CONCURRENCY:
                    rate, samples = await http_throughput(client, language, concurrency, total=max(48, runs))
                    print(f"| {language} over HTTP | {concurrency} | {rate:.0f} | {percentile(samples, 0.5):.1f} | {percentile(samples, 0.99):.1f} |")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    cli(main, __doc__)
