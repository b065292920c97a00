"""The COCO scorers this project runs (pipeline/evaluation/scoring.py), named apart from it so
that settings can name them without loading a scorer."""

BACKENDS = ("hotcoco", "faster-coco-eval", "pycocotools")
# hotcoco (Rust) and faster-coco-eval (C++) are proven equal to pycocotools on boxes and masks
# (tests/pipeline/evaluation/test_scoring.py, test_masks.py); hotcoco is the faster (bench/evaluation.py)
DEFAULT_BACKEND = "hotcoco"
