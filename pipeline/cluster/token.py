"""The token of the Ray clusters the user starts (`make token` writes it; `make head` and
cluster.yaml start Ray with it), and token mode for a process that joins one."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TOKEN = Path.home() / ".config" / "detr-ray" / "auth_token"  # what `make token` writes


def use_token() -> str | None:
    """Token mode for this process when a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or
    the file `make token` wrote); returns where it comes from."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        source = os.environ["RAY_AUTH_TOKEN_PATH"]
    elif DEFAULT_TOKEN.is_file():
        source = os.environ["RAY_AUTH_TOKEN_PATH"] = str(DEFAULT_TOKEN)
    else:
        return None
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return source
