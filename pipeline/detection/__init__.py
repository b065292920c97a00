"""Bulk detection: images (local or s3://) -> Ray Data -> model actors -> Parquet, each image once.

    config.py its options (jobs/detect.py's flags) and their checks
    run.py    the detection run: plan, resume, resources, the Ray Data chain, the summary
    plan.py   its input plan: the listing or manifest cut into shards (the unit of resumption)
    read.py   its read stage: each file's bytes and header, in CPU tasks without torch
    actor.py  its model actor: decode, canvases, batches, DETR (also training's validation)
    sink.py   its sink: whole Parquet part files per shard
    render.py pictures of predictions (jobs/detect.py --render)

Import from the modules: a read task imports read.py alone, without the actor's torch.
"""
