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
    import sys

    compile("pass", "<string>", "exec")  # the compiler's first use costs ~2 ms: pay it ahead
    gc.freeze()  # what exists now is never garbage: the final collection only scans the code's
    os.write(3, b"R")
    os.close(3)

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
        # nothing of the code's can observe, is skipped.
        main.__dict__.clear()
        gc.collect()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
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
