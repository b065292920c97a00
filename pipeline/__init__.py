"""Ray Data / Ray Train building blocks, a subpackage per stage (training, detection,
evaluation) and, here at the top, what the stages share: COCO reading (coco.py), the
predictions table (predictions.py), the one decoder (images.py), instance masks (masks.py) and
panoptic PNGs (panoptic.py), the jobs' options (options.py: each defined once on its stage's
config dataclass, and what relative paths mean), progress lines (progress.py), the synthetic
dataset (synthetic.py), and Ray for the jobs (cluster/). The command lines are jobs/."""
