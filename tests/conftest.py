"""Shared fixtures: the reference data beside the repository."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("DETR_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"reference data missing at {REFERENCE} (set DETR_REFERENCE_DIR)")
        pytest.skip(f"reference data not found at {REFERENCE} (set DETR_REFERENCE_DIR)")
    return REFERENCE


@pytest.fixture(scope="session")
def small_fixture(reference_dir: Path) -> dict:
    return torch.load(reference_dir / "detr_small_fixture.pt", weights_only=True)


@pytest.fixture(scope="session")
def fixture_config(small_fixture):
    from model import DetrConfig

    c = small_fixture["config"]
    return DetrConfig(
        backbone=c["backbone"],
        dilation=c["dilation"],
        hidden_dim=c["hidden_dim"],
        nheads=c["nheads"],
        enc_layers=c["enc_layers"],
        dec_layers=c["dec_layers"],
        dim_feedforward=c["dim_feedforward"],
        dropout=c["dropout"],
        num_queries=c["num_queries"],
        num_classes=c["num_classes"],
        aux_loss=c["aux_loss"],
    )


@pytest.fixture(scope="session")
def fixture_model(small_fixture, fixture_config):
    from model import DETR

    model = DETR(fixture_config)
    model.load_state_dict(small_fixture["state_dict"], strict=True)
    return model.eval()
