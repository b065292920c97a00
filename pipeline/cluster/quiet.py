"""Ray's routine lines that say nothing to a job's user, kept out of its output.

Ray's own Python loggers are quietened where they log (token_auth_notice); lines that Ray's C++
core writes straight to the process's stderr are dropped by a filter on file descriptor 2, line
by line, for the patterns in ROUTINE only: everything else, Ray's real errors included, passes
through as it came.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

ROUTINE = (
    # Ray Data passes each actor its map function through the object store and ours may restart
    # (--actor-restarts): Ray warns that a restart would fail if that object were lost, which
    # Ray Data keeps for the run's lifetime (a test kills actors and sees them restart).
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object "
               rb"store and max_restarts > 0"),
)
_installed = False


def token_auth_notice(quiet: bool) -> None:
    """Ray's notice, at every local start, that token authentication is on by default."""
    level = logging.ERROR if quiet else logging.NOTSET
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(level)


def drop_routine_stderr() -> None:
    """Filter this process's stderr (fd 2, which C++ writes to as well) through ROUTINE, from now
    until exit. Once per process."""
    global _installed
    if _installed:
        return
    _installed = True
    original = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def forward() -> None:
        pending = b""
        while chunk := os.read(read, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = [line + b"\n" for line in lines if not any(p.search(line) for p in ROUTINE)]
            if kept:
                os.write(original, b"".join(kept))
        if pending:
            os.write(original, pending)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()

    def close() -> None:  # what is still in the pipe reaches the terminal before the process ends
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer gone: the thread reads to its end
        thread.join(timeout=2)  # (a child process that kept fd 2 holds the pipe open)

    atexit.register(close)
