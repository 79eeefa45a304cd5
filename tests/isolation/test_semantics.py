"""Code runs in a sandbox as `python3 -c CODE`, `node -e CODE` and `bash -c CODE` run it.

The reference is the real thing: each snippet also runs as a host subprocess of the same
interpreter binary (the default image binds the host's /usr), with the same environment and
an empty stdin, and the caller must see the same stdout, stderr and exit status. Python and
node run both ways a sandbox can start: "warm" (claimed from the pool, the bootstrap runs the
code) and "cold" (an exec sandbox, forced by a start-up variable of that interpreter); the
warm path is where the bootstrap could show through.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeagent.runtime import BASE_ENV
from tests.isolation.runtimes import MODES, call_env, in_sandbox

INTERPRETERS = {
    "python": ("/usr/bin/python3", "-c"),
    "node": ("/usr/bin/node", "-e"),
    "bash": ("/usr/bin/bash", "-c"),
}


@dataclass(frozen=True)
class Ran:
    """What a caller can compare between two runs of the same code."""

    stdout: str
    stderr: str
    exit_code: int


async def on_host(code: str, language: str, env: dict[str, str], cwd: str | None = None) -> Ran:
    """The reference: the interpreter itself, as `python3 -c` etc., on the host."""
    with tempfile.TemporaryDirectory() as scratch:
        proc = await asyncio.create_subprocess_exec(
            *INTERPRETERS[language], code,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**BASE_ENV, **env}, cwd=cwd or scratch,
        )
        out, err = await proc.communicate()
    status = proc.returncode
    assert status is not None
    return Ran(out.decode(), err.decode(), 128 - status if status < 0 else status)


async def compare(run, runtime, code: str, language: str, mode: str, env: dict[str, str] | None = None) -> Ran:  # noqa: ANN001
    """Assert the sandbox and the host interpreter agree on `code`; return what they printed."""
    outcome = await in_sandbox(run, runtime, code, language, mode, env)
    sandboxed = Ran(outcome.stdout, outcome.stderr, outcome.exit_code)
    assert sandboxed == await on_host(code, language, call_env(language, mode, env))
    return sandboxed


def cases(snippets: dict[str, str], modes: tuple[str, ...] = MODES) -> list:
    return [pytest.param(mode, code, id=f"{mode}-{name}") for name, code in snippets.items() for mode in modes]


# --- python -----------------------------------------------------------------------------

PYTHON = {
    "print": "print('hello'); print(1, 2, sep='-', end='!\\n'); import sys; sys.stdout.write('no newline')",
    "stderr": "import sys; print('out'); print('err', file=sys.stderr); sys.stderr.write('tail')",
    "name-is-main": "print(__name__ == '__main__', __name__)",
    "main-globals": "print(sorted(globals()), __doc__, __package__, __spec__, __loader__)",
    "argv": "import sys; print(sys.argv)",
    "exception": "def f():\n    raise ValueError('boom')\nf()",
    "chained-exception": "try:\n    1/0\nexcept ZeroDivisionError as e:\n    raise KeyError('k') from e",
    "syntax-error": "def f(:\n    pass",
    "indentation-error": "if True:\npass",
    "exit-3": "import sys; sys.exit(3)",
    "exit-msg": "import sys; print('before'); sys.exit('msg')",
    "exit-none": "import sys; sys.exit(None)",
    "exit-true": "raise SystemExit(True)",
    "exit-256": "import sys; sys.exit(256)",
    "exit-builtin": "exit(5)",
    "os-exit": "import os; os._exit(9)",
    "atexit": "import atexit; atexit.register(print, 'bye'); print('main')",
    "atexit-raises": "import atexit; atexit.register(int, 'x')",  # int: a repr without an address
    "thread-after-main": (
        "import threading, time\n"
        "def late():\n    time.sleep(0.3)\n    print('thread done')\n"
        "threading.Thread(target=late).start()\nprint('main done')"
    ),
    "thread-exception": "import threading\nt = threading.Thread(target=lambda: 1/0, name='t')\nt.start(); t.join()",
    "input-eof": "input()",
    "stdin-empty": "import sys; print(repr(sys.stdin.read()))",
    "pickle-main-function": "import pickle\ndef f(): return 42\nprint(pickle.loads(pickle.dumps(f))())",
    "pickle-main-class": "import pickle\nclass C: pass\nprint(type(pickle.loads(pickle.dumps(C()))).__qualname__)",
    "warning": "import warnings; warnings.warn('careful')",
    "keyboard-interrupt": "raise KeyboardInterrupt",
    # A fork's exit runs the atexit callbacks it inherited: it must not end the parent's call.
    "fork-child-exits": (
        "import os, sys, time\npid = os.fork()\nif pid == 0:\n    sys.exit(4)\n"
        "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])); time.sleep(0.2); print('parent done')"
    ),
}


@pytest.mark.parametrize(("mode", "code"), cases(PYTHON))
async def test_python_matches_python3_c(run, runtime, mode, code):
    await compare(run, runtime, code, "python", mode)


@pytest.mark.parametrize("mode", MODES)
async def test_python_traceback_has_no_bootstrap_frame(run, runtime, mode):
    """The exact text `python3 -c` prints, spelled out so a failure reads at a glance."""
    result = await compare(run, runtime, "raise ValueError('boom')", "python", mode)
    assert result.stderr == 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\nValueError: boom\n'
    assert result.exit_code == 1


# Files the code never closes, held by a global and by a global list: the interpreter's
# shutdown flushes both. Checked once the process is gone, in the home archive the call
# returns (a file in the sandbox's /tmp is gone with the sandbox).
UNCLOSED = "f = open('direct.txt', 'w'); f.write('data')\nfiles = [open('listed.txt', 'w')]; files[0].write('listed')"


@pytest.mark.parametrize("mode", MODES)
async def test_python_flushes_files_left_open(run, runtime, mode):
    outcome = await in_sandbox(run, runtime, UNCLOSED, "python", mode, collect_home=True)
    assert outcome.exit_code == 0, outcome.stderr
    with tarfile.open(fileobj=io.BytesIO(outcome.result.home or b"")) as tar:
        sandboxed = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as cwd:
        assert await on_host(UNCLOSED, "python", {}, cwd=cwd) == Ran("", "", 0)
        on_host_files = {p.name: p.read_text() for p in Path(cwd).iterdir()}
    assert sandboxed == on_host_files == {"direct.txt": "data", "listed.txt": "listed"}


# --- node -------------------------------------------------------------------------------

NODE = {
    "console-log": "console.log('hi', 1 + 1, {a: [1]}); console.error('err')",
    "argv": "console.log(JSON.stringify(process.argv))",
    "exit-4": "console.log('before'); process.exit(4)",
    "exit-code": "process.exitCode = 5",
    "require": "const path = require('path'); console.log(path.join('a', 'b'), typeof require('fs').readFileSync)",
    "builtin-globals": "console.log(typeof fs, typeof path, typeof os)",
    "module-scope": "console.log(typeof module, typeof exports, __filename, __dirname, require.main === module)",
    "top-level-var": "var x = 1; console.log(globalThis.x, this === globalThis)",
    "timers-and-promises": (
        "setTimeout(() => console.log('timer'), 200);"
        "Promise.resolve().then(() => console.log('promise'));"
        "new Promise(r => setTimeout(r, 100)).then(() => console.log('later promise'));"
        "console.log('sync')"
    ),
    "exit-event": "process.on('exit', c => console.log('exit', c)); setTimeout(() => {}, 50)",
    "stdin-empty": "console.log(JSON.stringify(require('fs').readFileSync(0, 'utf8')))",
}


@pytest.mark.parametrize(("mode", "code"), cases(NODE))
async def test_node_matches_node_e(run, runtime, mode, code):
    await compare(run, runtime, code, "node", mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("code", ["throw new Error('boom')", "Promise.reject(new Error('boom'))"], ids=["throw", "rejection"])
async def test_node_uncaught_error_exits_1_with_it_on_stderr(run, runtime, mode, code):
    """Up to the code's own frame the report is node's; what follows lists node internals."""
    outcome = await in_sandbox(run, runtime, code, "node", mode)
    host = await on_host(code, "node", call_env("node", mode))
    assert outcome.exit_code == host.exit_code == 1
    head = lambda text: text.split("\n")[:6]  # noqa: E731 - location, source, caret, blank, error, first frame
    assert head(outcome.stderr) == head(host.stderr)
    assert "Error: boom\n    at [eval]:1:" in outcome.stderr


# --- bash -------------------------------------------------------------------------------

BASH = {
    "echo": "echo hello; printf '%s|' a b; echo",
    "dollar-0-and-args": "echo \"$0\" \"$#\" \"$*\"",
    "exit-7": "echo before; exit 7",
    "last-status": "false",
    "subshell-status": "(exit 3); echo $?",
    "pipeline": "echo a b c | tr ' ' '\\n' | sort -r | head -2",
    "pipe-status": "false | true; echo $?; set -o pipefail; false | true; echo $?",
    "errexit": "set -e; echo one; false; echo never",
    "read-eof": "read line; echo \"status $?\"",
    "exit-trap": "trap 'echo bye' EXIT; echo hi",
    "heredoc": "cat <<EOF\nline $((6 * 7))\nEOF",
    "stderr": "echo out; echo err >&2; ls /nonexistent-path",
    # SIGPIPE at its default: `yes` ends quietly when `head` stops reading (the agent is a
    # Python process, which ignores SIGPIPE, and an ignored signal survives exec).
    "sigpipe": "yes | head -n 2; echo ${PIPESTATUS[@]}",
}


@pytest.mark.parametrize(("mode", "code"), cases(BASH, modes=("warm",)))
async def test_bash_matches_bash_c(run, runtime, mode, code):
    await compare(run, runtime, code, "bash", mode)


# --- all three --------------------------------------------------------------------------

SELF_SIGNAL = {
    ("python", signal.SIGTERM): "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    ("python", signal.SIGKILL): "import os, signal; print('pid', os.getpid()); os.kill(os.getpid(), signal.SIGKILL)",
    ("python", signal.SIGSEGV): "import ctypes; ctypes.string_at(0)",
    ("node", signal.SIGTERM): "process.kill(process.pid, 'SIGTERM')",
    ("node", signal.SIGKILL): "process.kill(process.pid, 'SIGKILL')",
    ("bash", signal.SIGTERM): "kill -TERM $$",
    ("bash", signal.SIGKILL): "kill -KILL $$",
}


@pytest.mark.parametrize(("language", "signum"), list(SELF_SIGNAL), ids=[f"{lang}-{sig.name}" for lang, sig in SELF_SIGNAL])
async def test_death_by_signal_is_128_plus_n(run, language, signum):
    """The code is pid 2 inside (B is init), so killing itself really kills the interpreter."""
    code = SELF_SIGNAL[(language, signum)]
    outcome = await run(code, language)
    assert (outcome.exit_code, outcome.result.signal) == (128 + signum, signum), outcome.stderr
    assert outcome.result.error is None and not outcome.result.timed_out
    host = await on_host(code, language, {})
    assert outcome.exit_code == host.exit_code
    if language == "python" and signum == signal.SIGKILL:
        assert outcome.stdout == "pid 2\n"


# Each prints its own environment and what a child process it starts receives, as JSON.
ENV_PROBE = {
    "python": (
        "import json, os, subprocess\n"
        "out = subprocess.run(['/usr/bin/env', '-0'], capture_output=True, text=True).stdout\n"
        "print(json.dumps({'own': dict(os.environ), 'child': dict(e.split('=', 1) for e in out.split('\\0') if e)}))"
    ),
    "node": (
        "const out = require('child_process').execFileSync('/usr/bin/env', ['-0'], {encoding: 'utf8'});"
        "const child = Object.fromEntries(out.split('\\0').filter(Boolean).map(e => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));"
        "console.log(JSON.stringify({own: process.env, child}))"
    ),
    # What bash itself received (bash adds PWD, SHLVL and _ for its children, as on any host).
    "bash": "while IFS= read -r -d '' e; do printf '%s\\0' \"$e\"; done < /proc/$$/environ",
}
CALL_ENV = {"GREETING": "hello world", "EQUALS": "a=b=c", "UNICODE": "h\u00e9llo", "PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize(
    ("language", "mode"),
    [("python", "warm"), ("python", "cold"), ("node", "warm"), ("node", "cold"), ("bash", "warm")],
)
async def test_environment_is_exactly_base_env_and_call_env(run, runtime, language, mode):
    outcome = await in_sandbox(run, runtime, ENV_PROBE[language], language, mode, CALL_ENV)
    assert outcome.exit_code == 0, outcome.stderr
    if language == "bash":
        report = {"own": dict(e.split("=", 1) for e in outcome.stdout.split("\0") if e)}
    else:
        report = json.loads(outcome.stdout)
    expected = {**BASE_ENV, **call_env(language, mode, CALL_ENV)}
    assert report["own"] == expected
    assert report.get("child", expected) == expected


WHO_AM_I = {
    "python": "import os, sys; print(os.getcwd(), os.getuid(), os.getgid(), repr(sys.stdin.read()))",
    "node": "console.log(process.cwd(), process.getuid(), process.getgid(), `'${require('fs').readFileSync(0, 'utf8')}'`)",
    "bash": "echo \"$PWD\" $(id -u) $(id -g) \"'$(cat)'\"",
}


@pytest.mark.parametrize("language", list(WHO_AM_I))
async def test_code_runs_in_home_as_uid_1000_with_empty_stdin(run, language):
    outcome = await run(WHO_AM_I[language], language)
    assert (outcome.stdout, outcome.exit_code) == ("/home/baponi 1000 1000 ''\n", 0), outcome.stderr


STARTUP = [
    pytest.param("python", {"PYTHONPATH": "/tmp"}, "import sys; print(sys.path)", id="PYTHONPATH"),
    pytest.param("python", {"PYTHONDONTWRITEBYTECODE": "1"}, "import sys; print(sys.dont_write_bytecode)", id="PYTHONDONTWRITEBYTECODE"),
    pytest.param("python", {"PYTHONSAFEPATH": "1"}, "import sys; print(sys.flags.safe_path, sys.path[0])", id="PYTHONSAFEPATH"),
    pytest.param(
        "node", {"NODE_OPTIONS": "--max-old-space-size=64"},
        "console.log(require('v8').getHeapStatistics().heap_size_limit)", id="NODE_OPTIONS",
    ),
]


@pytest.mark.parametrize(("language", "env", "code"), STARTUP)
async def test_startup_variables_take_effect(run, runtime, language, env, code):
    """Variables read only while an interpreter starts get a cold start, and so take effect."""
    result = await compare(run, runtime, code, language, "startup", env)
    baseline = await on_host(code, language, {})
    assert result.stdout != baseline.stdout, "the variable changed nothing even on the host"
    if "PYTHONPATH" in env:
        assert eval(result.stdout)[:2] == ["", "/tmp"]  # noqa: S307 - our own probe's repr
    if "NODE_OPTIONS" in env:
        assert int(result.stdout) < 200 << 20
