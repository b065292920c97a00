"""The token of the Ray clusters the user starts (`make token` writes it; `make head` and
cluster.yaml start Ray with it), and token mode for a process that joins one."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TOKEN = Path.home() / ".config" / "detr-ray" / "auth_token"  # what `make token` writes
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
_missing: list[str] = []  # a RAY_AUTH_TOKEN_PATH that named no token (said where a token is needed)


def use_token() -> str | None:
    """Token mode for this process when a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or
    the file `make token` wrote); returns where it comes from. A RAY_AUTH_TOKEN_PATH that names a
    missing or empty file is set aside (Ray would fail on it even for a Ray of the job's own) and
    said by missing_token() where a token is needed."""
    path = os.environ.get(TOKEN_PATH)
    if path and not (os.path.isfile(path) and os.path.getsize(path) > 0):
        _missing.append(os.environ.pop(TOKEN_PATH))
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "RAY_AUTH_TOKEN"
    elif os.environ.get(TOKEN_PATH):
        source = os.environ[TOKEN_PATH]
    elif DEFAULT_TOKEN.is_file():
        source = os.environ[TOKEN_PATH] = str(DEFAULT_TOKEN)
    else:
        return None
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return source


def missing_token(what: str) -> str:
    """One line: `what` needs the cluster's token, none is at hand, and how to give one."""
    named = f" (RAY_AUTH_TOKEN_PATH names {_missing[-1]}, which is missing or empty)" if _missing else ""
    return (f"{what} needs the cluster's token and none was given{named}: run `make token` where the head was "
            "started, or set RAY_AUTH_TOKEN_PATH to its file")
