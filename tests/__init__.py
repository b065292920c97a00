"""The test suite: tests/model for model/, tests/pipeline (and its training, detection and
evaluation folders) for pipeline/, tests/jobs for jobs/, tests/cluster for cluster.yaml,
submission and multi-node runs. docs/testing.md indexes them by feature."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "detr-tiny-shapes.pt"  # a trained detr-tiny (checkpoints/README.md)
SHIPPED_MASKS = REPO / "checkpoints" / "detr-tiny-shapes-masks.pt"  # the same with its mask head
