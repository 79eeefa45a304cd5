"""`baponi serve` as a user runs it: one process, a real agent child, SQLite, HTTP on localhost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

KEY = "sk-test-" + "k" * 40
BAPONI = [sys.executable, "-m", "gateway.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    process: subprocess.Popen
    url: str
    data_dir: Path

    def agent_pid(self) -> int:
        """The node agent child of the server (the one serving its Unix socket)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        for pid in children:
            if b"nodeagent.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        raise AssertionError(f"no agent child among {children}")


def _wait_ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never became ready")


@contextlib.contextmanager
def _serve() -> Iterator[Served]:
    data_dir = Path(tempfile.mkdtemp(prefix="baponi-serve-", dir="/tmp"))
    data_dir.chmod(0o711)
    port = _free_port()
    env = {**os.environ, "BAPONI_BOOTSTRAP_API_KEY": KEY}
    env.pop("BAPONI_DATABASE_URL", None)
    process = subprocess.Popen(
        [*BAPONI, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url)
        yield Served(process, url, data_dir)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with _serve() as server:
        yield server


def _execute(served: Served, timeout: float = 60, **body: object) -> httpx.Response:
    return httpx.post(
        f"{served.url}/v1/sandbox/execute", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout
    )


def test_the_first_example_of_the_reference(served: Served) -> None:
    response = _execute(served, code="print(sum(range(100)))", language="python")
    assert response.status_code == 200, response.text
    payload = response.json()
    assert (payload["success"], payload["stdout"], payload["stderr"], payload["exit_code"]) == (True, "4950\n", "", 0)
    assert payload["execution_id"]


def test_baponi_exec_prints_output_and_returns_the_exit_code(served: Served) -> None:
    result = subprocess.run(
        [*BAPONI, "exec", "--url", served.url, "--language", "bash", "echo out; echo err >&2; exit 3"],
        env={**os.environ, "BAPONI_API_KEY": KEY}, capture_output=True, text=True, timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_a_wrong_key_is_refused(served: Served) -> None:
    response = httpx.post(
        f"{served.url}/v1/sandbox/execute", json={"code": "print(1)"}, headers={"Authorization": "Bearer sk-nope"}
    )
    assert response.status_code == 401


def test_keys_create_list_revoke(served: Served) -> None:
    keys = [*BAPONI, "keys", "--data-dir", str(served.data_dir)]
    created = subprocess.run([*keys, "create", "--name", "ci"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in created.splitlines() if ":" in line)
    key_id, secret = fields["id"].strip(), fields["api key"].strip()
    ok = httpx.post(f"{served.url}/v1/sandbox/execute", json={"code": "print(2)"}, headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    assert ok.status_code == 200 and ok.json()["stdout"] == "2\n"
    listed = subprocess.run([*keys, "list"], capture_output=True, text=True, check=True).stdout
    assert key_id in listed and secret not in listed
    subprocess.run([*keys, "revoke", key_id], check=True)
    refused = httpx.post(f"{served.url}/v1/sandbox/execute", json={"code": "print(2)"}, headers={"Authorization": f"Bearer {secret}"})
    assert refused.status_code == 401


def test_an_agent_killed_mid_call_fails_that_call_only(served: Served) -> None:
    """The caller gets an error, the thread lock is released, and a new agent takes the next call."""

    async def call_and_kill() -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as client:
            pending = asyncio.ensure_future(
                client.post(
                    f"{served.url}/v1/sandbox/execute",
                    json={"code": "import time; time.sleep(20)", "thread_id": "killed-thread"},
                    headers={"Authorization": f"Bearer {KEY}"},
                )
            )
            await asyncio.sleep(1.5)
            os.kill(served.agent_pid(), signal.SIGKILL)
            return await pending

    response = asyncio.run(call_and_kill())
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "agent_failed"
    _wait_ready(served.url)
    again = _execute(served, code="print('after')", thread_id="killed-thread")
    assert again.status_code == 200, again.text
    assert again.json()["stdout"] == "after\n"


def test_sigterm_stops_the_server_cleanly(served: Served) -> None:
    """Runs last in this module: the server drains and exits 0, leaving no sandbox behind."""
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=60) == 0
    leftover = [
        pid for pid in os.listdir("/proc") if pid.isdigit() and f"{served.data_dir}".encode() in _cmdline(pid)
    ]
    assert leftover == []


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_the_agent_stops_when_serve_is_killed() -> None:
    """Even a SIGKILLed `baponi serve` leaves no node agent (nor its sandboxes) running."""
    with _serve() as server:
        agent = server.agent_pid()
        server.process.kill()
        server.process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{agent}").exists() and _cmdline(str(agent)):
            assert time.monotonic() < deadline, "the orphaned agent kept running"
            time.sleep(0.1)
