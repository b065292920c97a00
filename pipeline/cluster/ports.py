"""Local ports of a Ray: whether something answers on one, a free one, and the variable that
points Ray's state API at a Ray's dashboard (connect.py and head.py)."""
from __future__ import annotations

import socket

STATE_API = "RAY_API_SERVER_ADDRESS"


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
