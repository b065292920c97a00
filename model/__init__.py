"""DETR in pure PyTorch: network, matcher, losses, post-processing, checkpoints, and the
DETR family through transformers. Import from the modules (model.checkpoint, model.segmentation:
build_detr, ...): this package imports nothing, so that code which needs one part (the
evaluation job, a read task) does not import torch with the rest.
"""
