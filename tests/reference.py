"""The reference oracles: the compact ones in tests/fixtures/reference (seeded weights, in the
repository) and, where found, the full ones with stored weights (../shared/reference or
DETR_REFERENCE_DIR)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests import REPO

if TYPE_CHECKING:
    import torch

COMPACT = REPO / "tests" / "fixtures" / "reference"
FULL = Path(os.environ.get("DETR_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
REQUIRED = os.environ.get("DETR_REQUIRE_REFERENCE") == "1"  # CI: the full fixtures must be there


def seeded_state_dict(weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict a compact fixture's `weights` describe (tests/fixtures/reference/README.md):
    one generator seeded once, the keys in sorted order, each drawn in float64 and mapped by the
    key's last dotted part."""
    import torch  # (here: tests/conftest.py sets the thread count before torch is imported)

    generator = torch.Generator().manual_seed(weights["seed"])
    state = {}
    for key in sorted(weights["shapes"]):
        shape = list(weights["shapes"][key])
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            value = 0.5 + u
        elif leaf == "running_mean":
            value = (u - 0.5) * 0.2
        elif len(shape) >= 2:
            value = (2 * u - 1) * math.sqrt(6 / math.prod(shape[1:]))
        elif leaf == "weight":
            value = 0.5 + u
        else:
            value = (u - 0.5) * 0.2
        state[key] = value.to(torch.float32)
    return state


def load_compact(name: str) -> dict[str, Any]:
    """A compact fixture (detr_small_seeded.pt, detr_segm_seeded.pt) with its state_dict drawn."""
    import torch

    fixture = torch.load(COMPACT / name, weights_only=True)
    return {**fixture, "state_dict": seeded_state_dict(fixture["weights"])}


def load_full(name: str) -> dict[str, Any] | None:
    """A full fixture (detr_small_fixture.pt, detr_segm_fixture.pt), its quantized backbone
    weights restored; None where the full reference folder is not found."""
    import torch

    if not (FULL / name).is_file():
        return None
    fixture = torch.load(FULL / name, weights_only=True)
    state = dict(fixture["state_dict"])
    for key, q in fixture.get("quantized_backbone", {}).items():
        state[key] = q["int8"].float() * 2.0 ** -q["exponent"]
    return {**fixture, "state_dict": state}


FILES = {"small": ("detr_small_seeded.pt", "detr_small_fixture.pt"),
         "segm": ("detr_segm_seeded.pt", "detr_segm_fixture.pt")}


def oracle(kind: str, source: str | None = None) -> dict[str, Any]:
    """The `kind` ("small", "segm") fixture from `source` ("compact", "full"); by default the full
    one where found, else the compact one. A full one asked for and not found is skipped (a failure
    where DETR_REQUIRE_REFERENCE=1)."""
    import pytest

    compact, full = FILES[kind]
    found = None if source == "compact" else load_full(full)
    if found is not None:
        return {**found, "source": "full"}
    if source == "full" or (source is None and REQUIRED):
        message = f"the full reference fixture {FULL / full} was not found"
        pytest.fail(message) if REQUIRED else pytest.skip(message)
    return {**load_compact(compact), "source": "compact"}


def model_of(fixture: dict[str, Any]) -> torch.nn.Module:
    """The project's DETR with a small fixture's construction and weights, in eval mode."""
    from model.config import DetrConfig
    from model.detr import DETR

    c = fixture["config"]
    model = DETR(DetrConfig(**{k: c[k] for k in ("backbone", "dilation", "hidden_dim", "nheads", "enc_layers",
                                                   "dec_layers", "dim_feedforward", "dropout", "num_queries",
                                                   "num_classes", "aux_loss")}))
    model.load_state_dict(fixture["state_dict"], strict=True)
    return model.eval()
