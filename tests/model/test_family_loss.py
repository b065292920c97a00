"""Every listed family's loss normalised across data-parallel ranks: 2 ranks x batch b give the
gradients of 1 rank x 2b (what DistributedDataParallel averages), where transformers alone does
not (RT-DETR, D-FINE, DEIMv2, Deformable and Conditional DETR divide by each rank's own box count;
LW-DETR and RF-DETR reduce it themselves, and are left as they are).

Two terms of such a loss depend on the batch by design and are set aside here: denoising groups
(their number is num_denoising // the batch's largest box count) and batch-norm statistics (per
rank; training converts to SyncBatchNorm on GPUs). D-FINE's and DEIMv2's DDF term is a per-rank
mean, as in their authors' code (Family.per_rank_terms), so its weight is 0 in this comparison.
RF-DETR's mask terms sample random points, so ranks and one device see other points: its box
model is what is compared.
"""
from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.families import FAMILIES, FamilyConfig
from model.interface import build_model
from tests.families import tiny_config

# One test process computes the two ranks' gradients once (tests/conftest.py: xdist groups)
pytestmark = pytest.mark.xdist_group("family_loss")
NO_DENOISING = {"num_denoising": 0}
NO_DROPOUT = {"dropout": 0.0}  # random per process: one device and two ranks would drop other units
CASES = {"rt_detr": NO_DENOISING, "rt_detr_v2": NO_DENOISING, "d_fine": {**NO_DENOISING, "weight_loss_ddf": 0.0},
         "deimv2": {**NO_DENOISING, "weight_loss_ddf": 0.0}, "rf_detr": NO_DROPOUT, "lw_detr": {},
         "deformable_detr": NO_DROPOUT, "conditional_detr": NO_DROPOUT}
assert CASES.keys() == FAMILIES.keys()
# 4 images whose box counts differ between the ranks' halves (2 + 1 against 4 + 3), so that
# normalising by each rank's own count gives other gradients than normalising by the mean
BOXES = [2, 1, 4, 3]


def _batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(len(BOXES), 3, 128, 128, generator=generator)
    targets = []
    for n in BOXES:
        centre = 0.3 + 0.4 * torch.rand(n, 2, generator=generator)
        size = 0.1 + 0.2 * torch.rand(n, 2, generator=generator)
        targets.append({"labels": torch.randint(0, 4, (n,), generator=generator), "boxes": torch.cat([centre, size], 1)})
    return pixels, targets


def _model(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(FamilyConfig(model_type, {**tiny_config(model_type, 4), **CASES[model_type]})).train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def gradients(model_type: str, images: slice) -> dict[str, torch.Tensor]:
    model = _model(model_type)
    pixels, targets = _batch()
    losses = model(pixels[images], None, targets[images])
    losses["loss"].backward()
    # a parameter without a gradient on this rank's images (DDP's find_unused_parameters: zeros)
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in model.named_parameters()}
    if dist.is_initialized():  # as DistributedDataParallel: the mean over ranks
        for grad in grads.values():
            dist.all_reduce(grad)
            grad /= dist.get_world_size()
    return grads


def _rank(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    half = len(BOXES) // 2
    results = {t: gradients(t, slice(rank * half, (rank + 1) * half)) for t in CASES}
    if rank == 0:
        torch.save(results, os.path.join(folder, "ranks.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks() -> dict[str, dict[str, torch.Tensor]]:
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_rank, args=(_free_port(), folder), nprocs=2, join=True)
        return torch.load(os.path.join(folder, "ranks.pt"), weights_only=True)


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_two_ranks_give_one_device_gradients(model_type, two_ranks):
    one = gradients(model_type, slice(None))
    two = two_ranks[model_type]
    assert one.keys() == two.keys()
    worst = max(_relative(one[n], two[n]) for n in one)
    assert worst < 1e-5, f"{model_type}: largest gradient difference {worst:.2e} of the gradient's scale"


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference over the larger of the gradient's largest value and 1 (float32 sums
    in another order differ in their last bits)."""
    return (a - b).abs().max().item() / max(a.abs().max().item(), 1.0)


def test_without_normalisation_the_gradients_differ(two_ranks, monkeypatch):
    """The check above can fail: each rank normalising by its own box count (transformers' rule)
    gives other gradients than one device."""
    from model import transformers_detector

    one = gradients("rt_detr_v2", slice(None))
    half = len(BOXES) // 2
    monkeypatch.setattr(transformers_detector, "box_shares", lambda counts, device: [1.0] * len(counts))
    local = [gradients("rt_detr_v2", slice(r * half, (r + 1) * half)) for r in range(2)]
    worst = max(_relative(one[n], (local[0][n] + local[1][n]) / 2) for n in one)
    assert worst > 1e-2
