"""Training DETR with Ray Train across workers and nodes.

    config.py      TrainConfig: a run's settings, with its preset's recipe
    augment.py     the paper's box-aware augmentation
    stream.py      the data stream: records -> read, decode, augment (Ray Data tasks) -> batches
    step.py        one optimizer step and its learning rates (torch only)
    entry.py       the loop's entry point and inputs, as Ray Train's controller unpickles them
    loop.py        the training loop on each worker: build, restore, train, validate, report
    validation.py  validation: the detection path itself, scored as jobs/evaluate.py scores
    run.py         a run on the cluster: checks, TorchTrainer, the summary
    preflight.py   `jobs/train.py --dry-run`: a run's inputs checked before anything starts
    watch.py       what rank 0 keeps for the people watching: progress files, TensorBoard's
                   event files (events.py), curves.png (curves.py), MLflow (tracking.py)

Import from the modules (this package imports nothing).
"""
