"""The Ray a benchmark runs on: the one its caller has connected (the tests'), as it is, or a
local Ray of its own, started for the block and stopped after (even beside another Ray)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray


@contextmanager
def ray_unless_connected(**init_args: Any) -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    ray.init(address="local", **init_args)
    try:
        yield
    finally:
        ray.shutdown()
