"""Where float32 matters under mixed precision: the prediction heads.

Under bf16 autocast a box coordinate near 1 moves in steps of 2^-8 (about 5 px at 1333 px)
and close class scores round together, which the matcher's cost ordering and the losses
then inherit. The heads are a tiny share of the compute, so they run in float32 whatever the
autocast context (the backbone and transformer keep bf16).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def float32(device: torch.device) -> Iterator[None]:
    """Autocast off on device: operations on float32 tensors stay float32."""
    with torch.autocast(device.type, enabled=False):
        yield


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 to float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
