"""Bootstraps: small programs an interpreter runs ahead of the call, inside the sandbox.

Each one signals readiness on fd 3, reads the request (code and env, in
nodeagent/isolation/request.py's format) from stdin to its end, takes the call's environment
as its own and runs the code the way `python3 -c` or `node -e` would; as its last act it
tells on fd 3 how the code ended, so the call need not wait for the process's slow exit.
They are passed on the command line, so no file of Baponi's needs to exist inside the image.
"""

from importlib.resources import files

BOOTSTRAPS: dict[str, str] = {
    "python": files(__package__).joinpath("python_bootstrap.py").read_text(),
    "node": files(__package__).joinpath("node_bootstrap.js").read_text(),
}
