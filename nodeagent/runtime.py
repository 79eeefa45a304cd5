"""The node agent's core: sandbox configurations, their warm pools, and executions.

The gRPC service and the one-machine server both drive this object; it knows nothing of
either protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog

from .config import SandboxConfig
from .execution import ExecutionRequest, ExecutionResult, OutputChunk
from .images import Image, ImageError, LanguageNotInImage
from .images.default import DEFAULT_IMAGE, default_image
from .isolation import launcher, seccomp
from .isolation.cgroups import Limits
from .isolation.injection import InjectionError, data_target
from .isolation.layout import HOME
from .isolation.plan import sandbox_plan
from .isolation.spawner import Recipe, Spawner
from .isolation.spec import Mode, SandboxSpec
from .pool import WarmPool
from .sandbox import Sandbox

log = structlog.get_logger("baponi.runtime")

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": HOME,
    "USER": "baponi",
    "LOGNAME": "baponi",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
}
# Variables an interpreter reads only while starting: a call that sets them needs a cold start.
_STARTUP_ENV = {"python": ("PYTHON", "LANG", "LC_"), "node": ("NODE_", "UV_", "LANG", "LC_")}
_RECYCLE_EVERY_S = 5.0


class DataDirInUse(OSError):
    """Another agent runs on this data directory: its sandboxes' cgroups are named after it,
    and a second agent would clear them as a crashed agent's leftovers."""


class UnknownSandbox(LookupError):
    """The call names a sandbox configuration this agent does not have."""


class RequestRejected(ValueError):
    """The call asks for something its sandbox does not allow."""


# Refusals of the call itself, raised before any sandbox is touched: not a sandbox failure.
REJECTIONS = (UnknownSandbox, RequestRejected, LanguageNotInImage)


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(
            f"another node agent is running on {path.parent}; stop it, or give this one another data directory"
        ) from None
    return fd


def _needs_cold_start(language: str, env: dict[str, str]) -> bool:
    prefixes = _STARTUP_ENV.get(language, ())
    return any(k.startswith(prefixes) and BASE_ENV.get(k) != v for k, v in env.items())


def _pool_mode(language: str) -> Mode:
    """How a pool's sandboxes start: bash starts in about a millisecond, so its pools wait in
    C, before the exec (docs/design.md)."""
    return "exec" if language == "bash" else "warm"


def _check_traversable(path: Path) -> None:
    """Sandbox set-up runs as an unprivileged host uid, which must be able to reach `path`."""
    for directory in [path, *path.parents]:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            raise PermissionError(
                f"{directory} is not searchable by other users (mode o+x); "
                f"choose a data directory whose every parent is, e.g. /var/lib/baponi"
            )


class Runtime:
    """Owns the spawner, the images, the configurations and one warm pool per (config, language)."""

    def __init__(
        self,
        data_dir: Path,
        configs: list[SandboxConfig],
        images: dict[str, Image] | None = None,
        uid_base: int = 200_000,
    ) -> None:
        self.data_dir = data_dir
        self.configs = {c.name: c for c in configs}
        self.images = {DEFAULT_IMAGE: default_image(), **(images or {})}
        for config in configs:
            if config.image not in self.images:
                raise ImageError(f"sandbox {config.name!r} uses image {config.image!r}, which is not loaded")
        self.uid_base = uid_base
        self.pools: dict[tuple[str, str], WarmPool] = {}
        self.running = 0
        self._spawner: Spawner | None = None
        self._launcher_path = ""
        self._respawning = asyncio.Lock()
        self._bpf = b""
        # One recipe per (config, language, mode): nothing in it differs between sandboxes.
        self._recipes: dict[tuple[str, str, str], Recipe] = {}
        self._recycler: asyncio.Task | None = None
        self._lock = -1  # the data directory's lock, held from start() to close()

    @property
    def cgroup_parent(self) -> str:
        """This agent's cgroup subtree, named after its data directory."""
        return "baponi-" + hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:10]

    @property
    def stage_dir(self) -> Path:
        return self.data_dir / "stage"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.data_dir / "agent.lock")
        self.stage_dir.mkdir(mode=0o711, exist_ok=True)
        os.chmod(self.stage_dir, 0o711)
        _check_traversable(self.stage_dir)
        self._launcher_path = str(await asyncio.to_thread(launcher.ensure, self.data_dir / "bin"))
        self._bpf = await asyncio.to_thread(seccomp.compile_filter)
        self._spawner = await asyncio.to_thread(Spawner, self.cgroup_parent, self._launcher_path)
        for config in self.configs.values():
            for language in self.images[config.image].languages:
                key = (config.name, language)
                pool = WarmPool(f"{config.name}/{language}", self._starter(config, language), config.warm, config.max_idle_s)
                self.pools[key] = pool
                pool.refill()
        self._recycler = asyncio.ensure_future(self._recycle_forever())
        log.info("runtime started", cgroup_version=self._spawner.cgroup_version, pools=len(self.pools))

    def _starter(self, config: SandboxConfig, language: str):  # noqa: ANN202 - a closure for the pool
        mode = _pool_mode(language)

        async def start() -> Sandbox:
            return await self._start_sandbox(config, language, mode)

        return start

    def _spec(self, config: SandboxConfig, language: str, mode: Mode) -> SandboxSpec:
        return SandboxSpec(
            image=self.images[config.image],
            language=language,
            mode=mode,
            limits=Limits(memory_bytes=config.memory_bytes, cpu_cores=config.cpu, pids_max=config.pids_max),
            stage_dir=str(self.stage_dir),
            uid_base=self.uid_base,
            tmp_bytes=config.tmp_bytes,
            home_bytes=config.home_bytes,
            base_env=BASE_ENV,
        )

    async def _live_spawner(self) -> Spawner:
        """The spawner, started anew if it died. Every sandbox it supervised died with it
        (parent-death signals): the pools' idle ones are dropped and refilled."""
        assert self._spawner is not None, "Runtime.start() first"
        if self._spawner.alive:
            return self._spawner
        async with self._respawning:
            if not self._spawner.alive:
                # The dead one stays in place until its successor is up: a call racing this
                # one waits on the lock above, and a failed start is retried by the next call.
                log.error("sandbox spawner died; starting a new one")
                await asyncio.to_thread(self._spawner.close)
                self._spawner = await asyncio.to_thread(Spawner, self.cgroup_parent, self._launcher_path)
                for pool in self.pools.values():
                    pool.drop_idle()
        return self._spawner

    def _recipe(self, config: SandboxConfig, language: str, mode: Mode) -> Recipe:
        recipe = self._recipes.get((config.name, language, mode))
        if recipe is None:
            spec = self._spec(config, language, mode)
            recipe = self._recipes[(config.name, language, mode)] = Recipe(spec.supervision(), sandbox_plan(spec, self._bpf))
        return recipe

    def _unpooled_mode(self, config: SandboxConfig, language: str, fresh_interpreter: bool) -> Mode:
        """How a call that got no warm sandbox has one started for it alone: forked from the
        zygote, as the pool's are where they are (a fork costs a fifth of the CPU of an
        interpreter's start, and a busy node is when pools run dry), else its interpreter
        started with the code."""
        mode = _pool_mode(language)
        if not fresh_interpreter and self._recipe(config, language, mode).supervision.zygote is not None:
            return mode
        return "exec"

    async def _start_sandbox(self, config: SandboxConfig, language: str, mode: Mode) -> Sandbox:
        spawner = await self._live_spawner()
        sandbox = Sandbox(spawner.spawn(self._recipe(config, language, mode)), config.output_limit)
        try:
            await sandbox.wait_ready()
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    def _validate(self, sandbox: str, request: ExecutionRequest) -> SandboxConfig:
        try:
            config = self.configs[sandbox]
        except KeyError:
            raise UnknownSandbox(f"no sandbox configuration named {sandbox!r}") from None
        self.images[config.image].interpreter(request.language)
        if not 0 < request.timeout <= config.max_timeout:
            raise RequestRejected(f"timeout must be between 1 and {config.max_timeout:g} seconds for sandbox {sandbox!r}")
        for mount in request.mounts:
            try:
                data_target(mount.target)
            except InjectionError as exc:
                raise RequestRejected(str(exc)) from None
        return config

    async def execute(
        self, sandbox: str, request: ExecutionRequest, *, on_start: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[OutputChunk | ExecutionResult]:
        """Run one request in a fresh sandbox of configuration `sandbox`; output, then the result.

        `on_start` is awaited once a sandbox is held and the code is about to be handed over:
        a failure before it means the code certainly did not run (a caller may retry elsewhere).
        """
        config = self._validate(sandbox, request)
        request = dataclasses.replace(request, env={**BASE_ENV, **request.env})
        pool = self.pools.get((sandbox, request.language))
        instance = None
        fresh_interpreter = _needs_cold_start(request.language, request.env)
        if pool is not None and not fresh_interpreter:
            await self._live_spawner()  # a warm sandbox of a dead spawner is dead too
            instance = await pool.take()
        cold = instance is None
        if instance is None:
            mode = self._unpooled_mode(config, request.language, fresh_interpreter)
            instance = await self._start_sandbox(config, request.language, mode)
        self.running += 1
        try:
            await instance.prepare(request)
            if on_start is not None:
                await on_start()
            async for event in instance.run(request, cold_start=cold):
                yield event
        finally:
            self.running -= 1
            await instance.destroy()
            if pool is not None:
                pool.refill()

    @property
    def cgroup_version(self) -> int:
        assert self._spawner is not None, "Runtime.start() first"
        return self._spawner.cgroup_version

    def status(self) -> dict[str, object]:
        return {
            "running": self.running,
            "pools": {
                f"{name}/{language}": {"idle": pool.idle, "target": pool.target, "claims": pool.claims, "misses": pool.misses}
                for (name, language), pool in self.pools.items()
            },
        }

    async def _recycle_forever(self) -> None:
        while True:
            await asyncio.sleep(_RECYCLE_EVERY_S)
            for pool in self.pools.values():
                pool.recycle()

    async def wait_warm(self, timeout: float = 60.0) -> None:
        await asyncio.gather(*(pool.wait_full(timeout) for pool in self.pools.values()))

    async def close(self) -> None:
        if self._recycler is not None:
            self._recycler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recycler
        await asyncio.gather(*(pool.close() for pool in self.pools.values()))
        if self._spawner is not None:
            await asyncio.to_thread(self._spawner.close)
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1
