"""`baponi serve` as a user runs it: one process with the node agent's runtime in it (its
spawner a child), SQLite, HTTP on localhost; and with `--agent`, a node agent served apart."""

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.local import listen

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

    def child_pid(self, marker: bytes) -> int:
        """The server's child process whose command line holds `marker`."""
        return _child_of(self.process.pid, marker)


def _child_of(parent: int, marker: bytes) -> int:
    """Of any thread: the spawner is started from a worker thread."""
    children = [pid for task in Path(f"/proc/{parent}/task").iterdir() for pid in (task / "children").read_text().split()]
    for pid in children:
        if marker in _cmdline(pid):
            return int(pid)
    raise AssertionError(f"no child with {marker!r} among {children} of {parent}")


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
def _serve(*options: str) -> Iterator[Served]:
    data_dir = Path(tempfile.mkdtemp(prefix="baponi-serve-", dir="/tmp"))
    data_dir.chmod(0o711)
    port = _free_port()
    env = {**os.environ, "BAPONI_BOOTSTRAP_API_KEY": KEY}
    env.pop("BAPONI_DATABASE_URL", None)
    process = subprocess.Popen(
        [*BAPONI, "serve", "--port", str(port), "--data-dir", str(data_dir), *options],
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


def test_metrics_show_the_gateway_and_its_node_agent(served: Served) -> None:
    assert _execute(served, code="print(3)", language="python").status_code == 200
    text = httpx.get(f"{served.url}/metrics").text
    assert 'http_requests_total{route="/v1/sandbox/execute",status="200"}' in text
    assert 'baponi_agent_executions_total{language="python",result="success"}' in text
    assert 'baponi_agent_pool_idle{pool="default/python"}' in text


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


def _call_and_kill(url: str, victim: Callable[[], int]) -> httpx.Response:
    """A long call on a thread, and `victim()` SIGKILLed while it runs."""

    async def call_and_kill() -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as client:
            pending = asyncio.ensure_future(
                client.post(
                    f"{url}/v1/sandbox/execute",
                    json={"code": "print('started', flush=True); import time; time.sleep(20)", "thread_id": "killed"},
                    headers={"Authorization": f"Bearer {KEY}"},
                )
            )
            await asyncio.sleep(1.5)
            os.kill(victim(), signal.SIGKILL)
            return await pending

    return asyncio.run(call_and_kill())


def test_the_spawner_killed_mid_call_fails_that_call_only(served: Served) -> None:
    """The spawner holds the sandboxes: the caller gets an error, the thread lock is released,
    and a new spawner takes the next call."""
    spawner = served.child_pid(b"baponi-spawner")
    response = _call_and_kill(served.url, lambda: spawner)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "agent_failed"
    again = _execute(served, code="print('after')", thread_id="killed")
    assert again.status_code == 200, again.text
    assert again.json()["stdout"] == "after\n"
    assert served.child_pid(b"baponi-spawner") != spawner


@contextlib.contextmanager
def _agent(socket_path: Path, data_dir: Path) -> Iterator[subprocess.Popen]:
    agent = subprocess.Popen(
        [sys.executable, "-m", "nodeagent.cli", "serve", "--address", f"unix://{socket_path}", "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield agent
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)


def test_with_a_separate_agent_one_killed_mid_call_fails_that_call_only() -> None:
    """`--agent`: calls go over gRPC to a node agent served apart. Killed mid-call, it fails
    that call (502, the lock released); not ready while it is down; served again, it takes
    the next call."""
    root = Path(tempfile.mkdtemp(prefix="baponi-agent-", dir="/tmp"))
    root.chmod(0o711)  # sandboxes traverse it to the agent's data
    socket_path = root / "agent.sock"
    with _agent(socket_path, root / "agent") as agent, _serve("--agent", f"unix://{socket_path}") as served:
        assert _execute(served, code="print('via grpc')").json()["stdout"] == "via grpc\n"
        response = _call_and_kill(served.url, lambda: agent.pid)
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "agent_failed"
        assert httpx.get(f"{served.url}/readyz", timeout=10).status_code == 503
        with _agent(socket_path, root / "agent"):
            _wait_ready(served.url)
            again = _execute(served, code="print('after')", thread_id="killed")
            assert again.status_code == 200, again.text
            assert again.json()["stdout"] == "after\n"
    shutil.rmtree(root, ignore_errors=True)


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


def test_a_taken_port_fails_the_start_before_anything_is_made(tmp_path: Path) -> None:
    """Exit 1 and a message saying what to change; no key made (or shown), no sandbox started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*BAPONI, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "BAPONI_DATABASE_URL"},
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr, result.stderr
    assert "API key" not in result.stdout and list((tmp_path / "data").iterdir()) == []


def test_connections_to_the_listener_send_without_delay() -> None:
    """Nagle's algorithm off (TCP_NODELAY) on the connections the server accepts, or an
    answer written in two sends waits for the client's delayed ACK (~40 ms)."""

    async def accepted_nodelay() -> int:
        listener = listen("127.0.0.1", 0)
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname())
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0


def test_the_sandboxes_stop_when_serve_is_killed() -> None:
    """Even a SIGKILLed `baponi serve` leaves no spawner nor sandbox running."""
    with _serve() as server:
        spawner = server.child_pid(b"baponi-spawner")
        sandboxes = Path(f"/proc/{spawner}/task/{spawner}/children").read_text().split()
        assert sandboxes, "the warm pools have sandboxes"
        server.process.kill()
        server.process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while alive := [pid for pid in (str(spawner), *sandboxes) if _cmdline(pid)]:
            assert time.monotonic() < deadline, f"left running: {alive}"
            time.sleep(0.1)
