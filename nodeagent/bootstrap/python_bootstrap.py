# Runs as `python3 -c <this file>` inside a warm sandbox; see nodeagent/bootstrap/__init__.py.
# Everything lives in one function so no name of ours leaks into the code's __main__. Only
# modules the interpreter has already loaded (or builtin ones) are imported: every import
# here is paid by every sandbox. The request format is nodeagent/isolation/request.py's.
def _baponi_bootstrap():
    import atexit
    import builtins
    import gc
    import os
    import site
    import stat
    import sys

    compile("pass", "<string>", "exec")  # the compiler's first use costs ~2 ms: pay it ahead
    trial = False  # the zygote's trial run, which stops itself where a sandbox would tell its end
    if stat.S_ISSOCK(os.fstat(3).st_mode):  # a zygote (nodeagent/isolation/zygote.py)
        trial = _baponi_zygote()  # returns in a sandbox, forked from it: what follows is the same
    gc.freeze()  # what exists now is never garbage: the final collection only scans the code's
    # fd 3, an eventfd its supervisor reads (nodeagent/isolation/supervisor.py), stays open
    # to say how the code ended; nothing the code starts inherits it.
    os.write(3, (1).to_bytes(8, sys.byteorder))
    os.set_inheritable(3, False)
    pid = os.getpid()

    data = sys.stdin.buffer.read()
    newline = data.index(b"\n")
    end = newline + 1 + int(data[:newline])
    source = data[newline + 1 : end]
    os.environb.clear()
    for item in data[end:].split(b"\0"):
        if item:
            name, _, value = item.partition(b"=")
            os.environb[name] = value
    del data

    # A home restored after start-up may now hold ~/.local: put it where `python3 -c` would.
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user_site and os.path.isdir(user_site) and user_site not in sys.path:
        before = list(sys.path)
        site.addsitedir(user_site)
        added = [p for p in sys.path if p not in before]
        system = [i for i, p in enumerate(before) if p.endswith(("site-packages", "dist-packages"))]
        at = system[0] if system else len(before)
        sys.path[:] = before[:at] + added + before[at:]

    # Line buffering, so streamed output arrives as it is printed.
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)

    original = sys.modules["__main__"]
    main = type(sys)("__main__")
    main.__dict__.update(__builtins__=builtins, __loader__=original.__loader__, __annotations__={})
    sys.modules["__main__"] = main
    outcome = {"status": 0, "sigint": False}

    def finish():
        # Registered first, so the interpreter runs it last: after joining threads and running
        # the code's own atexit callbacks, as Py_FinalizeEx does. The code's objects are then
        # released (open files flush and close) and the slow module teardown (~5 ms), which
        # nothing of the code's can observe, is skipped. Then the end is told on fd 3 unless
        # this is a fork of the code's, or the code closed fd 3.
        main.__dict__.clear()
        gc.collect()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        status = 2 if outcome["sigint"] else outcome["status"] << 8  # as wait() would say
        if trial:
            os.kill(pid, 19)  # SIGSTOP: every page a run writes up to here is written
        if os.getpid() == pid:
            try:
                os.write(3, (1 << 32 | status).to_bytes(8, sys.byteorder))
            except OSError:
                pass
        if outcome["sigint"]:
            _die_by_sigint()
        os._exit(outcome["status"])

    atexit.register(finish)
    try:
        exec(compile(source, "<string>", "exec"), main.__dict__)
    except SystemExit as stop:
        outcome["status"] = _exit_status(stop)
    except BaseException as error:
        # Drop our own frame: the traceback then reads exactly as `python3 -c` prints it (the
        # hook prints the exception's own traceback, so it is the exception that must change).
        error = error.with_traceback(error.__traceback__.tb_next)
        sys.excepthook(type(error), error, error.__traceback__)
        outcome.update(status=1, sigint=isinstance(error, KeyboardInterrupt))
        del error


def _baponi_zygote():
    """Fork a sandbox for each request of the spawner, until it closes the socket; returns
    only in a sandbox's code process (False) or the trial's fork (True), with the interpreter
    as a fresh start would have it."""
    import ctypes
    import gc
    import os
    import signal
    import site
    import socket

    os.closerange(4, os.sysconf("SC_OPEN_MAX"))  # what the spawner held when it started us
    spawner = socket.socket(fileno=os.dup(3))
    os.close(3)  # in each sandbox, fd 3 is its ready eventfd
    # Loaded from a copy in memory, so no sandbox's /proc/self/maps names the host's path to it.
    copy = os.memfd_create("baponi-launch")
    with open(spawner.recv(4096).decode(), "rb") as library:
        view = memoryview(library.read())
    while view:
        view = view[os.write(copy, view):]
    launcher = ctypes.PyDLL(f"/proc/self/fd/{copy}")  # PyDLL: the GIL stays held
    os.close(copy)
    spawn, learn = launcher.baponi_zygote_spawn, launcher.baponi_zygote_learn
    spawn.argtypes, spawn.restype = [ctypes.c_int * 8], ctypes.c_int
    gc.freeze()  # shared by every sandbox: no collection there touches (so copies) these pages
    trial = _baponi_trial(learn)
    if not trial:  # in the trial's fork, the same path from here on
        spawner.sendall(b"R")
        while True:
            _, fds, _, _ = socket.recv_fds(spawner, 1, 8)
            if len(fds) != 8:
                os._exit(0)  # the spawner is gone (or broke the protocol): so is every sandbox
            pid = spawn((ctypes.c_int * 8)(*fds))
            if pid == 0:
                break
            for fd in fds:
                os.close(fd)
            spawner.sendall(str(pid).encode())
        # In C of the sandbox: the launcher closed every other fd, dropped privileges and reset
        # the signal dispositions. Now what os.fork() does for Python, then the dispositions
        # python sets at start-up.
        ctypes.pythonapi.PyOS_AfterFork_Child()
    spawner.detach()
    site.USER_BASE = site.USER_SITE = None  # the zygote's were made from another home
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for quiet in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(quiet, signal.SIG_IGN)
    return trial


def _baponi_trial(learn):
    """Run a trivial request in a fork of the zygote, stopped where a sandbox would tell its
    end (its code run, its objects released, its output flushed), and tell the launcher which
    pages it wrote, for every sandbox to copy ahead (launcher.c, own_written_pages). True in
    the fork, which goes on as a sandbox would; on the host, as root, but running only this
    constant request."""
    import ctypes
    import os
    import signal

    source = b"print(1)\n"
    request, ready = os.pipe(), os.eventfd(0)
    os.write(request[1], b"%d\n%sHOME=/nonexistent\0" % (len(source), source))
    os.close(request[1])
    child = os.fork()
    if child == 0:
        os.dup2(request[0], 0)
        os.dup2(ready, 3)
        return True
    os.close(request[0])
    os.close(ready)
    _, status = os.waitpid(child, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        runs = _written_runs(child)
        learn((ctypes.c_ulong * len(runs))(*runs), len(runs) // 2)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    return False


def _written_runs(pid):
    """Start and length of each run of private writable pages that only `pid` maps, flat:
    in a fork, the pages it has written (copied on write) or touched first (bit 56 of
    /proc/pid/pagemap; see proc(5))."""
    import os

    page = os.sysconf("SC_PAGE_SIZE")
    runs = []
    pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                span, perms = line.split()[:2]
                if perms != "rw-p":
                    continue
                start, end = (int(bound, 16) for bound in span.split("-"))
                entries = memoryview(os.pread(pagemap, (end - start) // page * 8, start // page * 8)).cast("Q")
                for index, entry in enumerate(entries):
                    if entry >> 56 & 1:
                        address = start + index * page
                        if runs and runs[-2] + runs[-1] == address:
                            runs[-1] += page
                        else:
                            runs += [address, page]
    finally:
        os.close(pagemap)
    return runs


def _die_by_sigint():
    """An unhandled KeyboardInterrupt ends `python3 -c` by SIGINT, so the caller sees 130."""
    import _signal
    import os

    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    os.kill(os.getpid(), _signal.SIGINT)


def _exit_status(stop):
    """What the interpreter makes of SystemExit: None is 0, an int is itself, else print it, 1."""
    import sys

    code = stop.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr, flush=True)
    except Exception:
        pass
    return 1


_baponi_bootstrap()
