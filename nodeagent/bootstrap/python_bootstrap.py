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
    main.__dict__.update(__builtins__=builtins, __loader__=original.__loader__)
    sys.modules["__main__"] = main
    status = 0
    try:
        exec(compile(source, "<string>", "exec"), main.__dict__)
    except SystemExit as stop:
        status = _exit_status(stop)
    except BaseException:
        kind, value, tb = sys.exc_info()
        # Drop our own frame: the traceback then reads exactly as `python3 -c` prints it.
        sys.excepthook(kind, value, tb.tb_next if tb is not None and tb.tb_next else None)
        status = 1
    del source
    # Interpreter shutdown as Py_FinalizeEx begins it (threads, atexit, flush), and the code's
    # own objects released so open files are flushed and closed; then skip the slow module
    # teardown (~5 ms), which nothing of the code's can observe.
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        atexit._run_exitfuncs()
        main.__dict__.clear()
        gc.collect()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except SystemExit as stop:
        status = _exit_status(stop)
    except BaseException:
        sys.excepthook(*sys.exc_info())
    os._exit(status)


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
