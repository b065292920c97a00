"""Behaviour of the network, matcher, criterion and post-processing beyond the fixture."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.config import PRESETS, DetrConfig, get_config
from model.criterion import build_criterion
from model.detr import pad_images
from model.matcher import HungarianMatcher
from model.postprocess import PostProcess
from model.segmentation import build_detr

# The reference structure (ResNet-18, frozen stem and batch norm, learned queries) at detr-tiny's size.
R18 = dict(backbone="resnet18", backbone_norm="frozen_bn", train_stem=False, two_stage=False, masked_backbone=False)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_detr("detr-tiny", num_classes=4).eval()


def test_r50_keys_and_shapes_match_reference_release(reference_dir):
    reference = json.loads((reference_dir / "detr_r50_state_dict.json").read_text())
    model = build_detr("detr-r50")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == reference["state_dict"]
    meta = reference["_meta"]
    assert sum(p.numel() for p in model.parameters()) == meta["num_parameters_total"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == meta["num_parameters_requires_grad"]


def test_r101_parameter_count():
    assert sum(p.numel() for p in build_detr("detr-r101").parameters()) == 60_464_672


def test_dc5_halves_the_stride():
    model = build_detr("detr-r50-dc5", enc_layers=1, dec_layers=1).eval()
    with torch.inference_mode():
        features, _ = model.backbone[0](torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    assert features.shape[-2:] == (4, 4)  # stride 16, not 32


def test_eval_accepts_list_batch_and_single_image(tiny):
    torch.manual_seed(1)
    images = [torch.randn(3, 96, 128), torch.randn(3, 64, 80), torch.randn(3, 70, 70)]
    with torch.inference_mode():
        from_list = tiny(images)
        padded, mask = pad_images(images)
        from_batch = tiny(padded, mask)
        single = tiny(images[0])
        unmasked = tiny(images[0][None])
    assert from_list["pred_logits"].shape == (3, 20, 5)
    assert from_list["pred_boxes"].shape == (3, 20, 4)
    assert len(from_list["aux_outputs"]) == 1
    torch.testing.assert_close(from_list["pred_logits"], from_batch["pred_logits"])
    torch.testing.assert_close(single["pred_logits"], unmasked["pred_logits"])
    assert single["pred_logits"].shape == (1, 20, 5)
    assert ((from_list["pred_boxes"] >= 0) & (from_list["pred_boxes"] <= 1)).all()


def test_bad_inputs_are_explained(tiny):
    with pytest.raises(ValueError, match="at least one image"):
        tiny([])
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        tiny(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="mask shape"):
        tiny(torch.zeros(1, 3, 32, 32), torch.zeros(1, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="padded 4-D batch"):
        tiny([torch.zeros(3, 32, 32)], torch.zeros(1, 32, 32, dtype=torch.bool))


def test_training_step_updates_only_trainable_parts():
    torch.manual_seed(0)
    model = build_detr("detr-tiny", num_classes=3, **R18).train()
    criterion = build_criterion(3, model.config.dec_layers)
    targets = [
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.4]])},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
    ]
    losses = criterion(model([torch.randn(3, 64, 64), torch.randn(3, 48, 80)]), targets)
    total = criterion.total_loss(losses)
    assert torch.isfinite(total)
    total.backward()
    body = model.backbone[0].body
    assert body.conv1.weight.grad is None and body.layer1[0].conv1.weight.grad is None
    assert body.layer2[0].conv1.weight.grad is not None
    assert model.query_embed.weight.grad is not None and model.class_embed.weight.grad is not None
    assert {"loss_ce_0", "loss_bbox_0", "loss_giou_0", "cardinality_error_0"} <= set(losses)


@pytest.mark.parametrize("norm", ["batch_norm", "group_norm"])
def test_trainable_backbone_norms(norm):
    model = build_detr("detr-tiny", **{**R18, "backbone_norm": norm}).train()
    out = model([torch.randn(3, 64, 64), torch.randn(3, 64, 96)])
    out["pred_logits"].sum().backward()
    assert model.backbone[0].body.layer2[0].bn1.weight.grad is not None


def test_from_scratch_backbone_options():
    model = build_detr("detr-tiny", **{**R18, "backbone_norm": "batch_norm", "train_stem": True}, backbone_stages=3)
    model.train()
    body = model.backbone[0].body
    assert body.conv1.weight.requires_grad and body.layer1[0].conv1.weight.requires_grad
    assert not hasattr(body, "layer4")  # never computed, never in the state_dict
    features, _ = model.backbone[0](torch.zeros(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool))
    assert features.shape[1:] == (256, 4, 6)  # layer3: stride 16, half of layer4's channels
    out = model([torch.randn(3, 64, 64)])
    assert out["pred_boxes"].shape == (1, model.config.num_queries, 4)


def test_two_stage_training_step_reaches_every_part():
    """detr-tiny trains from scratch: small_cnn (stem included), encoder proposals, queries."""
    torch.manual_seed(0)
    model = build_detr("detr-tiny", num_classes=3).train()
    criterion = build_criterion(3, model.config.dec_layers, two_stage=True, encoder_matches=4)
    targets = [
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.4]])},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
    ]
    outputs = model([torch.randn(3, 96, 96), torch.randn(3, 64, 128)])
    proposals = outputs["enc_outputs"]
    assert proposals["pred_logits"].shape == (2, 6 * 8, 4) and proposals["padding"].shape == (2, 48)
    assert proposals["padding"].sum(1).tolist() == [48 - 36, 48 - 32]  # 6x6 and 4x8 tokens of 6x8
    losses = criterion(outputs, targets)
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc", "loss_ce_0"} <= set(losses)
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(criterion.weight_dict)
    criterion.total_loss(losses).backward()
    assert all(p.grad is not None for p in model.parameters()), "a parameter that never learns"
    assert model.backbone[0].body.layer1[0][0].weight.requires_grad  # the stem trains from scratch


def test_two_stage_queries_start_on_their_proposals():
    """At initialisation the decoder's boxes are its reference boxes: encoder tokens' anchors."""
    from model.query_selection import ANCHOR_SIZE, token_anchors

    torch.manual_seed(0)
    model = build_detr("detr-tiny", num_classes=3).eval()
    with torch.inference_mode():
        outputs = model([torch.randn(3, 64, 96)])  # 4x6 tokens -> 20 of 24 selected
    anchors = token_anchors(torch.zeros(1, 4, 6, dtype=torch.bool))[0]
    torch.testing.assert_close(outputs["enc_outputs"]["pred_boxes"][0], anchors, atol=1e-4, rtol=0)
    boxes = outputs["pred_boxes"][0]
    assert boxes.shape == (20, 4)
    distances = torch.cdist(boxes, anchors)
    assert torch.all(distances.min(1).values < 1e-4)  # every query sits on a distinct token's anchor
    assert len(set(distances.argmin(1).tolist())) == 20
    torch.testing.assert_close(boxes[:, 2:], torch.full((20, 2), ANCHOR_SIZE), atol=1e-4, rtol=0)


def test_distinct_queries_skip_duplicate_proposals():
    """With distinct_iou, a proposal overlapping a better one waits until the distinct ones are
    taken; padding tokens come last; without it, the plain top-k."""
    from model.query_selection import distinct_top_k

    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]])
    scores = torch.tensor([[0.9, 0.8, 0.3, -1.0]])  # token 1 duplicates token 0; token 3 is padding
    assert distinct_top_k(scores, boxes, 2, None).tolist() == [[0, 1]]
    assert distinct_top_k(scores, boxes, 2, 0.7).tolist() == [[0, 2]]
    assert distinct_top_k(scores, boxes, 4, 0.7).tolist() == [[0, 2, 1, 3]]
    assert distinct_top_k(scores, boxes, 2, 0.95).tolist() == [[0, 1]]  # IoU 0.9: not a duplicate at 0.95
    # images are independent: the second image's tokens never suppress the first's
    two = distinct_top_k(torch.cat([scores, scores]), torch.cat([boxes, boxes]), 2, 0.7)
    assert two.tolist() == [[0, 2], [0, 2]]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        get_config("detr-tiny", distinct_query_iou=0.0)


def test_encoder_matches_one_to_many():
    """Each object is matched to k proposals; padding tokens are never matched."""
    from model.matcher import HungarianMatcher

    logits = torch.zeros(1, 6, 3)
    boxes = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1],
                           [0.5, 0.52, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]])
    padding = torch.tensor([[False, False, False, False, False, True]])  # the best match, but padding
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    repeated = {"labels": target["labels"].repeat(3), "boxes": target["boxes"].repeat(3, 1)}
    rows, _ = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes, "padding": padding}, [repeated])[0]
    assert sorted(rows.tolist()) == [1, 2, 4]


def test_small_cnn_backbone():
    model = build_detr("detr-tiny", num_classes=3)
    features, mask = model.backbone[0](torch.zeros(2, 3, 96, 160), torch.zeros(2, 96, 160, dtype=torch.bool))
    assert features.shape == (2, 128, 6, 10) and mask.shape == (2, 6, 10)  # stride 16
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_detr("detr-tiny", backbone_weights="resnet18.pth")


def test_presets_and_config_validation():
    assert set(PRESETS) == {"detr-r50", "detr-r101", "detr-r50-dc5", "detr-r101-dc5", "detr-tiny"}
    assert build_detr("detr-tiny", num_classes=12).class_embed.out_features == 13
    config = get_config("detr-tiny", num_queries=15)
    assert DetrConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("detr-r51")
    with pytest.raises(ValueError, match="unknown DetrConfig fields"):
        DetrConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="bottleneck"):
        DetrConfig(backbone="resnet18", dilation=True)
    with pytest.raises(ValueError, match="divisible"):
        DetrConfig(hidden_dim=100, nheads=8)
    with pytest.raises(ValueError, match="num_classes"):
        DetrConfig(num_classes=0)
    with pytest.raises(ValueError, match="backbone_stages"):
        DetrConfig(backbone_stages=2)


def test_matcher_handles_images_without_targets():
    outputs = {"pred_logits": torch.randn(2, 5, 4), "pred_boxes": torch.rand(2, 5, 4) * 0.5 + 0.25}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
    ]
    (q0, t0), (q1, t1) = HungarianMatcher()(outputs, targets)
    assert len(q0) == len(t0) == 0 and len(q1) == len(t1) == 1


def test_criterion_with_no_targets_at_all():
    criterion = build_criterion(3, 2)
    outputs = {"pred_logits": torch.randn(2, 5, 4, requires_grad=True), "pred_boxes": torch.rand(2, 5, 4)}
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    losses = criterion(outputs, [empty, empty])
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0 and losses["class_error"] == 0
    assert torch.isfinite(losses["loss_ce"]) and losses["loss_ce"] > 0


def test_postprocess_threshold_and_top_k():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0], [2.0, 0.0, 0.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4]] * 4])
    sizes = torch.tensor([[100, 200]])
    outputs = {"pred_logits": logits, "pred_boxes": boxes}
    (all_queries,) = PostProcess()(outputs, sizes)
    assert all_queries["labels"].tolist() == [0, 1, 0, 0]  # best real class, even for "no object" queries
    torch.testing.assert_close(all_queries["boxes"][0], torch.tensor([80.0, 30.0, 120.0, 70.0]))
    (kept,) = PostProcess(score_threshold=0.5)(outputs, sizes)
    assert kept["scores"].tolist() == sorted(kept["scores"].tolist(), reverse=True)
    assert (kept["scores"] >= 0.5).all() and len(kept["scores"]) == 3
    (top,) = PostProcess(top_k=1)(outputs, sizes)
    assert len(top["scores"]) == 1 and top["labels"].tolist() == [0]


def _num_boxes_worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        criterion = build_criterion(3, 1, aux_loss=False)
        n = 1 if rank == 0 else 5  # 6 boxes over 2 ranks: each normalises by 3
        targets = [{"labels": torch.ones(n, dtype=torch.int64), "boxes": torch.full((n, 4), 0.3)}]
        outputs = {"pred_logits": torch.zeros(1, 6, 4), "pred_boxes": torch.full((1, 6, 4), 0.5)}
        loss_bbox = criterion(outputs, targets)["loss_bbox"].item()
        queue.put((rank, loss_bbox, n))
    finally:
        dist.destroy_process_group()


def test_num_boxes_is_averaged_across_data_parallel_ranks():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_num_boxes_worker, args=(2, port, queue), nprocs=2, start_method="spawn")
    for _ in range(2):
        rank, loss_bbox, n = queue.get()
        # every matched box has L1 = 4 * 0.2; normalised by the mean box count (3), not the local one
        assert loss_bbox == pytest.approx(n * 0.8 / 3, rel=1e-5)


@pytest.mark.parametrize("backbone,norm", [("resnet18", "frozen_bn"), ("resnet18", "batch_norm"),
                                           ("small_cnn", "batch_norm")])
def test_optimize_for_inference_keeps_outputs(backbone, norm, tmp_path):
    from model.checkpoint import save_checkpoint
    from model.inference import optimize_for_inference

    torch.manual_seed(0)
    model = build_detr("detr-tiny", backbone=backbone, backbone_norm=norm,
                       masked_backbone=backbone == "small_cnn").eval()
    with torch.no_grad():  # non-trivial normalisation statistics, so folding matters
        for name, buffer in model.backbone.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d,)) for m in fast.modules())
    images = [torch.randn(3, 96, 128), torch.randn(3, 64, 80)]
    with torch.inference_mode():
        expected, actual = model(images), fast(images)
    torch.testing.assert_close(actual["pred_logits"], expected["pred_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(actual["pred_boxes"], expected["pred_boxes"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="save the original"):
        save_checkpoint(str(tmp_path), fast)


@pytest.mark.parametrize("two_stage", [True, False])
def test_heads_run_in_float32_under_bf16_autocast(two_stage):
    """Only the backbone and transformer run in bf16: the heads' outputs are exactly what the
    float32 heads give on the decoder's output, far closer than bf16 heads (steps of 2^-8)."""
    from model.criterion import build_criterion

    overrides = {} if two_stage else {"two_stage": False, "distinct_query_iou": None}
    torch.manual_seed(0)
    model = build_detr("detr-tiny", num_classes=5, **overrides).eval()
    decoded = {}
    model.transformer.decoder.register_forward_hook(lambda module, args, out: decoded.update(hs=out))
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
        hs = decoded["hs"]
        bf16_logits = model.class_embed(hs)  # what the heads gave before: bf16 under autocast
    assert bf16_logits.dtype == torch.bfloat16  # autocast was on: a head left to it runs in bf16
    tensors = [out["pred_logits"], out["pred_boxes"]] + [t for a in out["aux_outputs"] for t in a.values()]
    if two_stage:
        tensors += [out["enc_outputs"]["pred_logits"], out["enc_outputs"]["pred_boxes"]]
    assert all(t.dtype == torch.float32 for t in tensors)

    with torch.no_grad():
        logits = model.class_embed(hs[-1].float())
        raw = model.bbox_embed(hs[-1].float())
    assert torch.equal(out["pred_logits"], logits)
    if not two_stage:  # two-stage boxes add the reference's offset: same head, checked by dtype above
        assert torch.equal(out["pred_boxes"], raw.sigmoid())
    assert (bf16_logits[-1].float() - logits).abs().max() > 1e-3  # what float32 heads avoid: ~ a bf16 step

    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.3]])}]
    criterion = build_criterion(5, model.config.dec_layers, two_stage=two_stage)
    losses = criterion(out, targets)
    assert all(v.dtype == torch.float32 for v in losses.values())
