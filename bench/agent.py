"""Node-agent benchmark: claim-to-exit latency, cold starts and throughput, beside baselines.

Run as root: `.venv/bin/python -m bench.agent [--runs N]`. Every figure of one run is
measured on the same machine at the same time, so the comparison with the baselines (the
same interpreter as a plain unisolated subprocess, and bubblewrap when `bwrap` is installed)
holds even where absolute numbers differ between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nodeagent import logs
from nodeagent.config import SandboxConfig
from nodeagent.execution import ExecutionRequest, ExecutionResult
from nodeagent.runtime import Runtime

PROGRAMS = {"python": "print(1)", "node": "console.log(1)", "bash": "echo 1"}
INTERPRETERS = {"python": ["/usr/bin/python3", "-c"], "node": ["/usr/bin/node", "-e"], "bash": ["/usr/bin/bash", "-c"]}
CONCURRENCY = (1, 2, 4, 8)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def row(name: str, samples_ms: list[float], extra: str = "") -> str:
    return f"| {name} | {percentile(samples_ms, 0.5):.2f} | {percentile(samples_ms, 0.99):.2f} | {extra} |"


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return (time.perf_counter() - started) * 1000


async def execute(runtime: Runtime, sandbox: str, language: str) -> ExecutionResult:
    result = None
    async for event in runtime.execute(sandbox, ExecutionRequest(code=PROGRAMS[language], language=language, timeout=30)):
        result = event
    assert isinstance(result, ExecutionResult) and result.exit_code == 0, result
    return result


async def subprocess_run(argv: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await process.communicate()
    assert process.returncode == 0, argv


def bwrap_argv(language: str) -> list[str] | None:
    """The closest bubblewrap equivalent: all namespaces, read-only /usr, fresh /proc, /dev, /tmp."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    links = [arg for name in ("bin", "lib", "lib64", "sbin") if os.path.isdir(f"/usr/{name}") for arg in ("--symlink", f"usr/{name}", f"/{name}")]
    return [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr", *links, "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--chdir", "/tmp", *INTERPRETERS[language], PROGRAMS[language]]


async def warm_latency(runtime: Runtime, language: str, runs: int) -> list[float]:
    """One claim at a time from a full pool: what a call costs when a sandbox is waiting."""
    pool = runtime.pools[("warm", language)]
    samples = []
    for _ in range(runs):
        await pool.wait_full()
        await asyncio.sleep(0.02)  # let the refill's exit settle, so only the claim is measured
        samples.append(await timed(lambda: execute(runtime, "warm", language)))
    return samples


async def concurrently(action: Callable[[], Awaitable[object]], concurrency: int, total: int) -> tuple[float, list[float]]:
    """`total` runs of `action`, `concurrency` at a time: runs per second and each run's ms."""
    samples: list[float] = []
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            samples.append(await timed(action))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started), samples


async def throughput(runtime: Runtime, language: str, concurrency: int, total: int) -> tuple[float, list[float]]:
    """Sustained executions per second, refills included: the pool must keep up."""
    await runtime.pools[("warm", language)].wait_full()
    return await concurrently(lambda: execute(runtime, "warm", language), concurrency, total)


def sandbox_memory(runtime: Runtime) -> str:
    """Proportional set size of one idle warm python sandbox's processes (the launcher above
    init, when there is one, init, the interpreter); its supervision lives in the shared
    spawner, whose child a zygote's sandbox's init is (it has no launcher)."""
    pool = runtime.pools[("warm", "python")]
    sandbox = pool._idle[0]  # noqa: SLF001 - a benchmark may look inside
    init = sandbox.init_pid
    pids = [init, *[int(p) for p in Path(f"/proc/{init}/task/{init}/children").read_text().split()]]
    parent = int(Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()[1])
    spawner = runtime._spawner._process.pid  # type: ignore[union-attr]  # noqa: SLF001
    parts = {"launcher": parent} if parent != spawner else {}
    parts.update(init=pids[0], interpreter=pids[1])
    sizes = {}
    for name, pid in parts.items():
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                sizes[name] = int(line.split()[1]) / 1024
    total = sum(sizes.values())
    detail = ", ".join(f"{k} {v:.1f}" for k, v in sizes.items())
    return f"{total:.1f} MiB PSS ({detail})"


async def main(runs: int, languages: list[str]) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="baponi-bench-", dir="/tmp"))
    data_dir.chmod(0o711)
    configs = [SandboxConfig(name="warm", warm=8), SandboxConfig(name="cold", warm=0)]
    runtime = Runtime(data_dir, configs)
    await runtime.start()
    try:
        await runtime.wait_warm(timeout=120)
        print(f"# baponi node-agent benchmark, {os.cpu_count()} cores, {runs} runs per row\n")
        print("| what | p50 ms | p99 ms | notes |\n|---|---|---|---|")
        for language in languages:
            print(row(f"{language} warm claim-to-exit", await warm_latency(runtime, language, runs)))
            cold = [await timed(lambda: execute(runtime, "cold", language)) for _ in range(max(10, runs // 4))]
            print(row(f"{language} cold start (isolated)", cold))
            plain = [await timed(lambda: subprocess_run([*INTERPRETERS[language], PROGRAMS[language]])) for _ in range(max(10, runs // 4))]
            print(row(f"{language} plain subprocess (baseline, unisolated)", plain))
            argv = bwrap_argv(language)
            if argv is None:
                print(f"| {language} bubblewrap cold start | - | - | bwrap not installed (apt-get install bubblewrap) |")
            else:
                print(row(f"{language} bubblewrap cold start (baseline)", [await timed(lambda: subprocess_run(argv)) for _ in range(max(10, runs // 4))]))
        print("\n| throughput | concurrency | executions/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
        for language in languages:
            for concurrency in CONCURRENCY:
                rate, samples = await throughput(runtime, language, concurrency, total=max(40, runs))
                print(f"| {language} | {concurrency} | {rate:.0f} | {percentile(samples, 0.5):.1f} | {percentile(samples, 0.99):.1f} |")
        await runtime.pools[("warm", "python")].wait_full()
        print(f"\nwarm python sandbox memory: {sandbox_memory(runtime)}")
        print(f"agent process RSS: {Path('/proc/self/status').read_text().split('VmRSS:')[1].split()[0]} KiB")
    finally:
        await runtime.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def cli(main: Callable[[int, list[str]], Awaitable[None]], doc: str) -> None:
    """The command line both benchmarks share: --runs N, --languages a,b,c."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--languages", default="python,node,bash")
    args = parser.parse_args()
    logs.configure("warning")
    asyncio.run(main(args.runs, args.languages.split(",")))


if __name__ == "__main__":
    cli(main, __doc__)
