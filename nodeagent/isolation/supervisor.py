"""The host side of one sandbox: its cgroup, its id maps, its clock and its clean-up.

Supervisors live in the spawner, root on the host, one object per sandbox, all driven by the
spawner's poll loop (reactor.py): a process per sandbox would cost a fork of the spawner and
its exit, once the largest part of creating a sandbox. A supervisor talks to the agent over a
control socket (frames): it says when the sandbox is started, takes claim-time work (mounts,
the home archive), starts the wall clock at "run", and reports how the code ended once no
process of the sandbox can run any more. If the agent hangs up, the sandbox dies.

How the code ended comes from one of two places. A bootstrap that runs the code in its
interpreter says so itself, on the ready eventfd (which the agent reads until the code is
ready, and the supervisor once the run has begun), just before its process exits: a process's
exit is slow (a python's unmapping takes ~1 ms, node's own shutdown ~3 ms) and nothing of
the code runs in it, so the report need not wait for it. The code can write that eventfd too;
it can only end its own call early with an exit code of its choosing, which it could anyway.
Otherwise init (launcher.c's B) reports the code process's wait status once it has reaped it.

Work that may take long (claim-time mounts, the home archive in or out) runs in a forked job
process, so no sandbox waits on another's data; while a job runs, its sandbox's control
socket is the job's.
"""

from __future__ import annotations

import fcntl
import functools
import os
import select
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import cgroups, frames, injection
from .reactor import Reactor, Timer
from .zygote import Zygote

_KILL_GRACE_S = 2.0
_CLAIM_OPS = ("mount", "home", "collect_home")  # before the run, each answered "done" or "error"
STATUS = struct.Struct("!i")  # the code's wait status, as the launcher's pid 1 writes it
# Added to the ready eventfd (fd 3 in the sandbox): the code is ready (for the agent); the
# sandbox ended before it was ever run (from the supervisor, for an agent still waiting); it
# has ended, with ENDED | its wait status (for the supervisor). An eventfd's wake-up, unlike a
# pipe's, does not pull the reader onto the writer's CPU, where the ending process would
# first have to make way for it.
READY, GONE, ENDED = 1, 1 << 33, 1 << 32
# Listings of the cgroup at an announced end: a few at once, then each from the poll loop.
_KILL_ROUNDS, _LATER_LOOK_S = 3, 0.001
_HIGH_FD = 64  # above the launcher's fixed fds (0-7), so moving one never clobbers another
_JOB_FAILED = 1


@dataclass(frozen=True)
class Supervision:
    """What a supervisor needs to know of its sandbox: the cgroup's limits, the id range its
    user namespace maps to, and the most a collected home may hold."""

    limits: cgroups.Limits
    uid_base: int
    uid_count: int
    home_bytes: int
    # (argv, environment) of the interpreter to fork the sandbox from (zygote.py), if any
    zygote: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Supervision:
        zygote = data.get("zygote")
        return cls(**{
            **data,
            "limits": cgroups.Limits(**data["limits"]),
            "zygote": (tuple(zygote[0]), tuple(zygote[1])) if zygote else None,
        })


@dataclass(frozen=True)
class Launch:
    """How to start one sandbox's processes: the launcher binary and the sandbox's plan (a
    sealed memfd, shared by the sandboxes of one recipe), or the zygote to fork them from
    (which runs the same plan)."""

    path: str
    plan: int
    zygote: Zygote | None = None


@dataclass
class _Run:
    """The state of the one execution this sandbox serves."""

    deadline: Timer | None = None
    collect_home: bool = False
    timed_out: bool = False
    cancelled: bool = False
    announced: int | None = None  # the wait status the code's bootstrap said it ends with


class Supervisor:
    def __init__(
        self,
        supervision: Supervision,
        cgroup: cgroups.Cgroup,
        launch: Launch,
        ctl: socket.socket,
        stdio: list[int],
        reactor: Reactor,
        on_done: Callable[[Supervisor, bool], None],
    ) -> None:
        self.supervision, self.cgroup, self.launch, self.ctl, self.stdio = supervision, cgroup, launch, ctl, stdio
        self.reactor, self.on_done = reactor, on_done
        self.run = _Run()
        self.pid_a = self.init_pid = 0
        self.pidfd = self.pidfd_a = self.status_r = self.ready = -1
        self.ns: injection.Namespaces | None = None
        self._listening = self._ending = self._busy = self._cleaned = self._mapped = False
        self._handshake: tuple[int, ...] = ()  # while starting: the up pipe's read end, the down pipe's write end

    # --- start -----------------------------------------------------------------------------

    def _write_id_maps(self, pid: int) -> None:
        mapping = f"0 {self.supervision.uid_base} {self.supervision.uid_count}\n"
        with open(f"/proc/{pid}/uid_map", "w") as handle:
            handle.write(mapping)
        with open(f"/proc/{pid}/setgroups", "w") as handle:
            handle.write("deny")
        with open(f"/proc/{pid}/gid_map", "w") as handle:
            handle.write(mapping)

    def _spawn_launcher(self, ready: int, up_w: int, down_r: int, status_w: int) -> int:
        """Start the launcher with its fds in place: stdin, stdout, stderr, ready, plan, up,
        down, status (launcher.c), or have the zygote fork it with them. Neither copies
        this process's memory, as a fork of it would."""
        fds = (*self.stdio, ready, self.launch.plan, up_w, down_r, status_w)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD) for fd in fds]
        try:
            if self.launch.zygote is not None:
                return self.launch.zygote.spawn(high)
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(high)]
            return os.posix_spawn(self.launch.path, ["baponi-sandbox"], {}, file_actions=actions)
        finally:
            for fd in high:
                os.close(fd)

    def start(self) -> None:
        """Start the launcher. Its two steps (namespaces, then init: an unshare and a fork,
        a millisecond or more under load) are answered in the poll loop as they come, so
        other sandboxes' news is not held up meanwhile."""
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        self._handshake = up_r, down_w
        self.status_r, status_w = os.pipe()  # closed with the sandbox, whatever happens here
        os.set_blocking(self.status_r, False)  # read once B wrote it or is gone; never waited on
        self.ready = self.stdio.pop()  # kept: read once the run has begun
        try:
            try:
                self.pid_a = self._spawn_launcher(self.ready, up_w, down_r, status_w)
                self.pidfd_a = os.pidfd_open(self.pid_a)
            finally:
                for fd in (up_w, down_r, status_w, *self.stdio):
                    os.close(fd)
        except (OSError, cgroups.CgroupError) as exc:
            self._failed(exc)
            return
        self.reactor.add_reader(up_r, self._guarded(self._on_launcher))

    def _on_launcher(self) -> None:
        """A's news on the up pipe: "u" once its namespaces exist (then the id maps and the
        cgroup are ours to give it), later the pid of init, as the host sees it ("0": A is
        init itself, as a zygote's sandbox is)."""
        up_r, down_w = self._handshake
        try:
            raw = os.read(up_r, 32)
            if not self._mapped:
                if raw != b"u":
                    raise OSError("sandbox namespaces could not be created")
                self._write_id_maps(self.pid_a)
                self.cgroup.add(self.pid_a)
                os.write(down_w, b"m")
                self._mapped = True
                return
            if not raw:
                raise OSError("sandbox init did not start")
            self.init_pid = int(raw) or self.pid_a
            self.pidfd = os.pidfd_open(self.init_pid)
        except (OSError, ValueError, cgroups.CgroupError) as exc:
            self._failed(exc)
            return
        self._end_handshake()
        self._listen()
        self.reactor.add_reader(self.pidfd, self._guarded(self._on_end))
        self.reactor.add_reader(self.status_r, self._guarded(self._on_end))
        self._send({"event": "started", "pid": self.init_pid})

    def _end_handshake(self) -> None:
        if self._handshake:
            self.reactor.remove_reader(self._handshake[0])
            for fd in self._handshake:
                os.close(fd)
            self._handshake = ()

    def _failed(self, exc: Exception) -> None:
        self._end_handshake()
        self._send({"event": "failed", "message": f"sandbox could not start: {exc}"})
        self._kill()
        self._clean_up()

    def _on_code_news(self) -> None:
        """The ready eventfd, once the run has begun: ENDED and the code's wait status.
        Anything else, and it is no longer watched (the end is then init's to report)."""
        try:
            value = os.eventfd_read(self.ready)
        except BlockingIOError:
            return
        self.reactor.remove_reader(self.ready)
        if value & ~0xFFFF == ENDED:
            self._on_announced(value & 0xFFFF)

    # --- serve -----------------------------------------------------------------------------

    def _listen(self) -> None:
        self.reactor.add_reader(self.ctl.fileno(), self._guarded(self._on_control))
        self._listening = True

    def _deafen(self) -> None:
        if self._listening:
            self.reactor.remove_reader(self.ctl.fileno())
            self._listening = False

    def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        try:
            frames.send(self.ctl, header, payload)
        except OSError:
            pass  # the agent is gone; so will the sandbox be

    def _on_control(self) -> None:
        try:
            received = frames.recv_header(self.ctl)
        except (OSError, frames.FrameError):
            received = None
        if received is None:  # the agent is gone: so is its sandbox
            self._deafen()
            self.abandon()
            return
        header, payload_len = received[0], received[1]
        op = header.get("op")
        if op == "run":
            self.reactor.add_reader(self.ready, self._guarded(self._on_code_news))
            deadline = time.monotonic() + float(header["timeout"])
            self.run.deadline = self.reactor.call_at(deadline, self._guarded(self._on_deadline))
            if not self.run.collect_home:
                self._close_namespaces()  # no claim-time work is left: see _close_namespaces
        elif op == "kill":
            self.abandon()
        elif op in _CLAIM_OPS and (self._ending or self.run.deadline is not None):
            self._refuse(op, payload_len, "claim-time work comes before the run")
        elif op in _CLAIM_OPS:
            try:
                self._open_namespaces()
            except OSError as exc:
                self._refuse(op, payload_len, str(exc))
            else:
                self._claim(op, header, payload_len)
        else:
            self._refuse(op, payload_len, f"unknown op {op!r}")

    def _refuse(self, op: str | None, payload_len: int, message: str) -> None:
        """Answer an op with an error, its payload read and dropped."""
        frames.recv_payload(self.ctl, payload_len)
        self._send({"event": "error", "op": op, "message": message})

    def _claim(self, op: str, header: dict[str, Any], payload_len: int) -> None:
        if op == "collect_home":  # kept for after the run: the namespaces stay open until then
            self.run.collect_home = True
            self._send({"event": "done", "op": op})
        else:
            self._deafen()  # the job reads the rest of the frame, and answers
            self._job(lambda: self._claim_job(header, payload_len), self._after_claim)

    def _open_namespaces(self) -> None:
        """Handles on the sandbox's namespaces, taken only for claim-time work (see
        _close_namespaces). Opened by pid, then checked through init's pidfd: init is
        alive, so that pid was still its own."""
        if self.ns is None:
            ns = injection.Namespaces.of(self.init_pid)
            try:
                signal.pidfd_send_signal(self.pidfd, 0)
            except ProcessLookupError:
                ns.close()
                raise OSError("the sandbox has ended") from None
            self.ns = ns

    def _claim_job(self, header: dict[str, Any], payload_len: int) -> None:
        """In the job process: read the payload, do the claim-time work, answer."""
        assert self.ns is not None
        payload = frames.recv_payload(self.ctl, payload_len)
        op = header["op"]
        try:
            if op == "mount":
                injection.mount_into(self.ns, header["source"], header["target"], bool(header["read_only"]))
            else:
                injection.extract_home(self.ns, payload)
            frames.send(self.ctl, {"event": "done", "op": op})
        except (OSError, injection.InjectionError, KeyError, ValueError) as exc:
            frames.send(self.ctl, {"event": "error", "op": op, "message": str(exc)})

    def _after_claim(self) -> None:
        if self._cleaned:
            return
        if self._ending:
            self._finish()  # the sandbox ended during the job
        else:
            self._listen()

    def _job(self, work: Callable[[], None], then: Callable[[], None]) -> None:
        """`work` in a forked process holding only this sandbox's fds; `then` when it exits."""
        self._busy = True
        pid = os.fork()
        if pid == 0:
            code = _JOB_FAILED
            try:
                self.reactor.close_in_child()
                keep = {self.ctl.fileno(), *((self.ns.user, self.ns.mnt) if self.ns else ())}
                _close_all_but(keep)
                work()
                code = 0
            finally:
                os._exit(code)
        def exited(_status: int) -> None:
            self._busy = False
            then()

        self.reactor.watch_child(pid, self._guarded(exited))

    def _guarded(self, callback: Callable[..., None]) -> Callable[..., None]:
        """A fault in one sandbox's supervision ends that sandbox, not the spawner's others."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:  # noqa: BLE001 - any fault: this sandbox ends, reported
                traceback.print_exc()
                self._broken(exc)

        return guarded

    def _broken(self, exc: Exception) -> None:
        if self._cleaned:
            return
        self.abandon()
        self._stop_watching()
        if not self._busy:  # else the agent sees the socket close once the job is done
            self._send(self._report(None) | {"oom_killed": False, "error": f"sandbox supervision failed: {exc}"})
        self._clean_up()

    def _on_deadline(self) -> None:
        self.run.timed_out = True
        self._kill()

    def abandon(self) -> None:
        """Kill the sandbox (the agent cancelled, went away, or the spawner stops)."""
        self.run.cancelled = True
        self._kill()

    def _kill(self) -> None:
        """SIGKILL to init (the kernel then kills the whole pid namespace), or to A when
        there is no init yet. Through pidfds: a reaped pid may already be someone else's."""
        target = self.pidfd if self.pidfd >= 0 else self.pidfd_a
        if target >= 0:
            try:
                signal.pidfd_send_signal(target, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- end -------------------------------------------------------------------------------

    def _stop_watching(self) -> None:
        """No more news of the sandbox is awaited: its end, from init or from the clock."""
        self._ending = True
        self.reactor.remove_reader(self.pidfd)
        self.reactor.remove_reader(self.status_r)
        self.reactor.remove_reader(self.ready)
        if self.run.deadline is not None:
            self.run.deadline.cancel()

    def _on_end(self) -> None:
        """The code ended (B wrote its status) or B died: report, then clean up."""
        if self._ending:
            return
        self._stop_watching()
        if not self._busy:  # else the job's end finishes: one writer at a time on the socket
            self._finish()

    def _on_announced(self, status: int) -> None:
        """The code's bootstrap said how it ends, as its last act: report that, once no
        process of the code can run any more (they may still be exiting)."""
        if self._ending:
            return
        self.run.announced = status
        self._stop_watching()
        if not self._busy:
            self._finish()

    def _finish(self) -> None:
        self._drain_control()
        if self.run.announced is not None:
            self._finish_announced(time.monotonic() + _KILL_GRACE_S, killed=set())
            return
        report = self._report(self._code_status())
        try:
            self._empty_cgroup(self.init_pid, self.pid_a)
        except cgroups.CgroupError as exc:
            report["error"] = str(exc)
        self._end(report)

    def _finish_announced(self, give_up: float, killed: set[int]) -> None:
        """The code said how it ended: the report goes once every process of it has been
        sent SIGKILL, which it can neither block, catch nor outlive, so it runs no more code.
        Its exit is left to the kernel: a python's takes ~0.5 ms of CPU, which the call's
        answer would otherwise wait for, behind this loop on a shared core. A process forked
        as the kills went out shows in the next listing and is killed in turn; the report
        waits for a listing with none left unkilled (from the poll loop, after a few at once),
        and past the grace the end is init's to report."""
        ours = (self.init_pid, self.pid_a)
        for _ in range(_KILL_ROUNDS):
            fresh = [pid for pid in self.cgroup.pids() if pid not in killed and pid not in ours]
            if not fresh:
                assert self.run.announced is not None
                self._end(self._report(self.run.announced))
                return
            cgroups.kill_pids(fresh)
            killed.update(fresh)
        if time.monotonic() > give_up:
            self.run.announced = None
            self._finish()
        else:
            later = time.monotonic() + _LATER_LOOK_S
            self.reactor.call_at(later, self._guarded(lambda: self._finish_announced(give_up, killed)))

    def _end(self, report: dict[str, Any]) -> None:
        report["oom_killed"] = self.cgroup.oom_kills() > 0
        collect = self.run.collect_home and not self.run.cancelled
        if not collect:
            self._close_namespaces()  # before the kill: the sandbox's last exit then unmounts it
        self._kill()
        if collect:
            self._deafen()
            self._job(lambda: self._send_with_home(report), self._clean_up)
        else:
            self._send(report)
            self._clean_up()

    def _close_namespaces(self) -> None:
        """Whoever drops a mount namespace last unmounts its whole tree (~1 ms, synchronous):
        better a sandbox process in its exit than this loop, which every sandbox waits on. So
        the handles are taken only for claim-time work, and go while the sandbox still runs:
        at the run, unless its home is to be collected after it (then at the end, before the
        kill)."""
        if self.ns is not None:
            self.ns.close()
            self.ns = None

    def _send_with_home(self, report: dict[str, Any]) -> None:
        """In the job process: archive the home, then report with it."""
        assert self.ns is not None
        home = b""
        try:
            home = injection.archive_home(self.ns, self.supervision.home_bytes)
        except injection.InjectionError as exc:  # the code's result still stands
            report["error"] = f"home not collected: {exc}"
        frames.send(self.ctl, report, home)

    def _drain_control(self) -> None:
        """Code can end before its `run` frame is read (it is sent before the code): take it,
        so the sandbox is on record as run (no GONE is told to an agent past waiting)."""
        while self._listening and not self.run.cancelled and select.select([self.ctl], [], [], 0)[0]:
            self._on_control()

    def _code_status(self) -> int | None:
        try:
            raw = os.read(self.status_r, STATUS.size)
        except BlockingIOError:
            raw = b""
        return STATUS.unpack(raw)[0] if len(raw) == STATUS.size else None

    def _empty_cgroup(self, *ours: int) -> None:
        """No process of the code may survive it; A and B (ours) exit right after."""
        give_up = time.monotonic() + _KILL_GRACE_S
        while [pid for pid in self.cgroup.pids() if pid not in ours]:
            if time.monotonic() > give_up:
                raise cgroups.CgroupError("sandbox processes survived the kill")
            self.cgroup.kill_all()
            time.sleep(0.001)

    def _report(self, status: int | None) -> dict[str, Any]:
        report: dict[str, Any] = {
            "event": "exited", "timed_out": self.run.timed_out, "signal": None, "error": None,
            "announced": self.run.announced is not None,
        }
        if status is None:
            report["exit_code"] = 128 + signal.SIGKILL
            if not (self.run.timed_out or self.run.cancelled):
                report["error"] = "sandbox init died"
        elif os.WIFSIGNALED(status):
            report.update(exit_code=128 + os.WTERMSIG(status), signal=os.WTERMSIG(status))
        else:
            report["exit_code"] = os.WEXITSTATUS(status)
        return report

    def _clean_up(self) -> None:
        """Once A and B are gone (killed above), in the poll loop rather than waiting for
        them here (an exit takes a millisecond or more, and other sandboxes' news waits
        meanwhile), nothing of the sandbox may be left in its cgroup."""
        if self._cleaned:
            return
        self._cleaned = True
        self._deafen()
        self._end_handshake()
        self._close_namespaces()
        if self.run.deadline is None and self.ready >= 0:  # never run: an agent may still wait on it
            os.eventfd_write(self.ready, GONE)
        for fd in (self.status_r, self.ready):
            if fd >= 0:
                # Still watched if a late run frame (read in _finish) began watching it.
                self.reactor.remove_reader(fd)
                os.close(fd)
        self.status_r = self.ready = -1
        self.ctl.close()
        waiting = [fd for fd in (self.pidfd, self.pidfd_a) if fd >= 0]
        self.pidfd = self.pidfd_a = -1
        if not waiting:
            self._release(waiting)
            return
        grace = self.reactor.call_at(time.monotonic() + _KILL_GRACE_S, lambda: self._release(waiting))
        for pidfd in waiting:  # a pidfd reads ready once its process has exited
            self.reactor.add_reader(pidfd, functools.partial(self._on_exited, pidfd, waiting, grace))

    def _on_exited(self, pidfd: int, waiting: list[int], grace: Timer) -> None:
        waiting.remove(pidfd)
        self.reactor.remove_reader(pidfd)
        os.close(pidfd)
        if not waiting:
            grace.cancel()
            self._release(waiting)

    def _release(self, waiting: list[int]) -> None:
        """The slot is lent again if nothing is left in it. `waiting`: A or B, if their grace
        ran out before they exited (whatever is left then keeps the slot)."""
        for pidfd in waiting:
            self.reactor.remove_reader(pidfd)
            os.close(pidfd)
        waiting.clear()
        try:
            self._empty_cgroup()
            self.cgroup.release()
            empty = True
        except (cgroups.CgroupError, OSError):
            empty = False  # the slot is never lent again
        self.on_done(self, empty)


def _close_all_but(keep: set[int]) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
