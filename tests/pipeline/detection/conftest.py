import pytest
import torch

from model.checkpoint import save_checkpoint
from model.segmentation import build_detr


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A detr-tiny with random weights, recording no input contract (the tests give sizes)."""
    torch.manual_seed(0)
    return save_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.pt"), build_detr("detr-tiny", num_classes=12))
