"""Ray Data / Ray Train building blocks: storage, COCO I/O, training, detection, evaluation."""
