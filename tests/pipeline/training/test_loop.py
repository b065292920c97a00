"""The training loop's parts: the model it builds, its learning rates, one step, data parallelism."""
from __future__ import annotations

import argparse
import os

import pytest
import torch

from model.segmentation import build_detr
from pipeline.training.config import TrainConfig
from pipeline.training.loop import build_model
from pipeline.training.step import param_groups, train_step, warm_up
from tests.pipeline.training import small_run


def test_fine_tune_from_reference_weights_reinitialises_the_class_head(small_fixture, tmp_path, tiny_shapes):
    path = tmp_path / "detr-small.pth"
    torch.save({"model": small_fixture["state_dict"], "args": argparse.Namespace(nheads=4, dropout=0.0)}, path)
    config = small_run(tiny_shapes, tmp_path, "ft", init=str(path), model_overrides={})
    model = build_model(config, num_classes=12)
    assert model.config.num_classes == 12 and model.class_embed.out_features == 13
    state = model.state_dict()
    for key, value in small_fixture["state_dict"].items():
        if not key.startswith("class_embed."):
            assert torch.equal(state[key], value), key
    assert model.training


def test_backbone_weights_are_loaded_and_frozen_layers_keep_them(tmp_path):
    """--backbone-weights: a torchvision ResNet state_dict (as ImageNet's is saved) lands in the
    backbone, BatchNorm statistics included; frozen layers keep exactly those values."""
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    for module in resnet.modules():  # non-trivial statistics, as a trained network has
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pt")
    cfg = TrainConfig("", "", "", "", preset="detr-r50", model_overrides={"backbone": "resnet18"},
                      backbone_weights=str(tmp_path / "resnet18.pt"))
    model = build_model(cfg, num_classes=5)
    body = model.backbone[0].body.state_dict()
    expected = resnet.state_dict()
    loaded = [k for k in body if not k.endswith("num_batches_tracked")]
    assert loaded and all(torch.equal(body[k], expected[k]) for k in loaded)
    assert "bn1.running_mean" in loaded and "layer4.1.bn2.running_var" in loaded

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(torch.randn(1, 3, 64, 64))
    (out["pred_logits"].sum() + out["pred_boxes"].sum()).backward()
    optimizer.step()
    after = model.backbone[0].body.state_dict()
    frozen = [k for k in loaded if k.startswith(("conv1", "bn1", "layer1")) or "bn" in k or "downsample.1" in k]
    assert all(torch.equal(after[k], expected[k]) for k in frozen)  # conv1, layer1, every (frozen) BatchNorm
    assert not torch.equal(after["layer2.0.conv1.weight"], expected["layer2.0.conv1.weight"])  # the rest learns

    for name, state in (("other.pt", {"fc.weight": torch.zeros(3)}), ("partial.pt", {"conv1.weight": torch.zeros(3)})):
        torch.save(state, tmp_path / name)
        with pytest.raises(ValueError, match="is not a state_dict of this backbone"):
            build_model(TrainConfig("", "", "", "", preset="detr-r50", model_overrides={"backbone": "resnet18"},
                                     backbone_weights=str(tmp_path / name)), num_classes=5)


def test_warm_up_is_linear_then_hands_over_to_the_step_drop():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    seen = []
    for step in range(6):
        warm_up(optimizer, step, 4)
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([7.5e-5, 1.5e-4, 2.25e-4, 3e-4, 3e-4, 3e-4])
    scheduler.step()  # an epoch ends after the warm-up: the drop applies
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-5)


def _data_parallel_worker(rank: int, world_size: int, port: int, folder: str) -> None:
    """Three training steps (train_step) on 4 images, split over world_size
    DistributedDataParallel ranks; rank 0 saves the parameters."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from model.criterion import build_criterion

    torch.use_deterministic_algorithms(True)
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # the same initial weights and data on every rank
    # the paper's one-stage DETR and frozen BatchNorm (batch statistics are per worker by nature)
    model = build_detr("detr-tiny", num_classes=5, two_stage=False, distinct_query_iou=None,
                       backbone_norm="frozen_bn").double().train()
    images = torch.randn(4, 3, 64, 96, dtype=torch.float64)
    mask = torch.zeros(4, 64, 96, dtype=torch.bool)
    # image i has i + 1 boxes: the ranks hold 3 and 7, so each must normalise by the mean, 5
    targets = [{"labels": torch.arange(i + 1) % 4 + 1,
                "boxes": torch.rand(i + 1, 2, dtype=torch.float64).mul(0.5).add(0.25).repeat(1, 2).mul(
                    torch.tensor([1.0, 1.0, 0.4, 0.4], dtype=torch.float64))} for i in range(4)]
    cfg = TrainConfig("", "", "", "", lr=1e-4, lr_backbone=1e-4)
    criterion = build_criterion(5, model.config.dec_layers)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    ddp = DistributedDataParallel(model) if world_size > 1 else model
    share = slice(rank * 4 // world_size, (rank + 1) * 4 // world_size)
    try:
        for step in range(3):
            train_step(ddp, criterion, optimizer, (images[share], mask[share], targets[share]), cfg, step)
        if rank == 0:
            torch.save(model.state_dict(), os.path.join(folder, f"{world_size}.pt"))
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def test_two_workers_of_batch_b_train_as_one_worker_of_batch_2b(tmp_path):
    """Data parallelism proven, not assumed: after three steps the parameters of 2 workers x
    batch 2 equal those of 1 worker x batch 4 (the loss's box normalisation, gradient averaging,
    clipping and AdamW included)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _data_parallel_worker(0, 1, port, str(tmp_path))
    mp.start_processes(_data_parallel_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    one, two = torch.load(tmp_path / "1.pt"), torch.load(tmp_path / "2.pt")
    torch.manual_seed(0)
    start = build_detr("detr-tiny", num_classes=5, two_stage=False, distinct_query_iou=None,
                       backbone_norm="frozen_bn").double().state_dict()
    moved = [k for k in one if not torch.equal(one[k], start[k])]
    assert len(moved) > 50  # the steps did train
    worst = max(float((one[k] - two[k]).norm() / one[k].norm()) for k in one if one[k].norm() > 0)
    assert worst <= 1e-5, worst
