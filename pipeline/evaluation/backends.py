"""The COCO scorers this project runs (pipeline/evaluation/scoring.py), named apart from it so
that settings can name them without loading a scorer."""

BACKENDS = ("faster-coco-eval", "pycocotools")
DEFAULT_BACKEND = "faster-coco-eval"  # proven equal to pycocotools: tests/pipeline/evaluation/test_scoring.py
