"""The spawner's poll loop: timers in order and cancellable, readers, and exited children.

Each test runs the reactor in a fresh interpreter: it takes over the process's SIGCHLD and
signal wakeup fd, which belong to pytest's event loop here.
"""

from __future__ import annotations

import json
import subprocess
import sys

PRELUDE = """
import json, os, time
from nodeagent.isolation.reactor import Reactor
reactor = Reactor()
seen = []
"""


def _run(body: str) -> list:
    done = subprocess.run([sys.executable, "-c", PRELUDE + body + "\nprint(json.dumps(seen))"],
                          capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def test_timers_fire_in_time_order_and_a_cancelled_one_never() -> None:
    assert _run("""
now = time.monotonic()
reactor.call_at(now + 0.03, lambda: seen.append("late"))
reactor.call_at(now + 0.01, lambda: seen.append("early"))
reactor.call_at(now + 0.02, lambda: seen.append("cancelled")).cancel()
while len(seen) < 2 and time.monotonic() < now + 5:
    reactor.run_once(max_wait=0.1)
reactor.run_once(max_wait=0.05)
""") == ["early", "late"]


def test_a_reader_is_called_while_readable_and_not_once_removed() -> None:
    assert _run("""
r, w = os.pipe()
def on_readable():
    seen.append(os.read(r, 10).decode())
    reactor.remove_reader(r)
reactor.add_reader(r, on_readable)
reactor.run_once(max_wait=0.05)
os.write(w, b"one")
reactor.run_once(max_wait=1)
os.write(w, b"two")
reactor.run_once(max_wait=0.05)
""") == ["one"]


def test_a_watched_child_reports_its_status_and_no_child_stays_a_zombie() -> None:
    assert _run("""
watched = os.fork()
if watched == 0:
    os._exit(7)
unwatched = os.fork()
if unwatched == 0:
    os._exit(0)
reactor.watch_child(watched, lambda status: seen.append(os.waitstatus_to_exitcode(status)))
give_up = time.monotonic() + 5
while not seen and time.monotonic() < give_up:
    reactor.run_once(max_wait=0.1)
while os.path.exists(f"/proc/{unwatched}") and time.monotonic() < give_up:
    reactor.run_once(max_wait=0.1)
seen.append(os.path.exists(f"/proc/{unwatched}"))
""") == [7, False]


def test_an_event_of_a_closed_fd_never_reaches_the_reader_that_reuses_its_number() -> None:
    """One round's callbacks may close an fd whose event is still to be handled and open a
    new fd under the same number (a new sandbox's): the new reader is not called for it."""
    assert _run("""
r1, w1 = os.pipe()
r2, w2 = os.pipe()
os.write(w1, b"x")
os.write(w2, b"x")
first, second = sorted((r1, r2))
def on_first():
    seen.append("first")
    os.read(first, 1)
    reactor.remove_reader(second)
    os.close(second)
    fresh_r, _ = os.pipe()  # takes the number just closed; nothing to read on it
    assert fresh_r == second
    reactor.add_reader(fresh_r, lambda: seen.append("fresh, wrongly"))
reactor.add_reader(first, on_first)
reactor.add_reader(second, lambda: seen.append("closed, wrongly"))
reactor.run_once(max_wait=1)
reactor.run_once(max_wait=0.05)
""") == ["first"]
