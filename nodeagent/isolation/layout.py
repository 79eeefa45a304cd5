"""Where things are inside every sandbox, and who runs there.

Its own module, free of imports, because the spawner (whose memory every sandbox supervisor
shares) needs these names without the agent-side modules that also use them.
"""

SANDBOX_UID = 1000
SANDBOX_GID = 1000
HOME = "/home/baponi"
DATA_DIR = "/data"
