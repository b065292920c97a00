"""Panoptic output and PQ: bulk detection writes a COCO panoptic PNG and segments_info per image
for a model with stuff classes, evaluation and re-evaluation score it, and PQ / SQ / RQ equal
hotcoco's (panopticapi's protocol) and a case worked by hand; a ground truth's bad PNGs are
counted and named, never fatal."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hotcoco.panoptic import pq_compute

from model.checkpoint import save_checkpoint
from model.config import get_config
from model.contract import InputContract
from model.segmentation import build_detr
from pipeline.evaluation.config import ReevaluateConfig
from pipeline.evaluation.metrics import score_files
from pipeline.evaluation.panoptic_quality import PanopticQuality
from pipeline.evaluation.reevaluation import read_history, reevaluate
from pipeline.panoptic import Problems, load_panoptic, png_bytes, read_png
from pipeline.synthetic import STUFF, SyntheticConfig, make_synthetic

CATEGORIES = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 1},
              {"id": 7, "name": "s", "isthing": 0}, {"id": 8, "name": "t", "isthing": 0}]


def _random_images(seed: int, count: int):
    """Ground truths (two stuff regions, 0-4 boxes of things, some crowd, some void) and
    predictions made from them (shifted, relabelled, dropped, spurious)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = 40, 50
        gt = np.zeros((h, w), np.int64)
        gt[: h // 2], gt[h // 2:] = 1, 2
        segments = [{"id": 1, "category_id": 7, "iscrowd": 0}, {"id": 2, "category_id": 8, "iscrowd": 0}]
        for k in range(rng.integers(0, 5)):
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            sh, sw = rng.integers(3, 12, 2)
            gt[y:y + sh, x:x + sw] = 10 + k
            segments.append({"id": 10 + k, "category_id": int(rng.choice([1, 2])),
                             "iscrowd": int(rng.uniform() < 0.15)})
        if rng.uniform() < 0.5:
            gt[rng.integers(0, h):, :rng.integers(0, 6)] = 0
        segments = [{**s, "area": int((gt == s["id"]).sum())} for s in segments if (gt == s["id"]).any()]
        dy, dx = rng.integers(-3, 4, 2)
        pred = np.roll(np.roll(gt, dy, 0), dx, 1) * 3 + 5
        predicted = []
        for s in segments:
            pid = s["id"] * 3 + 5
            r = rng.uniform()
            if r >= 0.1 and (pred == pid).any():
                category = s["category_id"] if r < 0.85 else CATEGORIES[rng.integers(0, 4)]["id"]
                predicted.append({"id": pid, "category_id": category})
        pred[~np.isin(pred, [p["id"] for p in predicted])] = 0
        if rng.uniform() < 0.4:
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
            pred[y:y + 5, x:x + 5] = 999
            predicted.append({"id": 999, "category_id": int(rng.choice([1, 2]))})
        yield gt, segments, pred, predicted


def _hotcoco(folder: Path, images: list) -> dict:
    """hotcoco's pq_compute on the images written out in COCO panoptic format."""
    for side in ("gt", "pred"):
        (folder / side).mkdir()
    meta = [{"id": i, "file_name": f"{i}.jpg", "width": 50, "height": 40} for i in range(1, len(images) + 1)]
    annotations = {"gt": [], "pred": []}
    for i, (gt, segments, pred, predicted) in enumerate(images, 1):
        for side, ids, segs in (("gt", gt, segments), ("pred", pred, predicted)):
            (folder / side / f"{i}.png").write_bytes(png_bytes(ids))
            annotations[side].append({"image_id": i, "file_name": f"{i}.png", "segments_info": segs})
    for side in ("gt", "pred"):
        (folder / f"{side}.json").write_text(json.dumps({"images": meta, "annotations": annotations[side],
                                                         "categories": CATEGORIES}))
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(folder / "gt.json", folder / "pred.json", folder / "gt", folder / "pred")


@pytest.mark.parametrize("seed", [0, 1])
def test_pq_equals_hotcoco(tmp_path, seed):
    images = list(_random_images(seed, 40))
    quality = PanopticQuality({c["id"]: c for c in CATEGORIES})
    for image in images:
        quality.add(*image)
    ours, theirs = quality.results(), _hotcoco(tmp_path, images)
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == theirs[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert ours[group][key] == pytest.approx(theirs[group][key], abs=1e-9)
    for category_id, entry in theirs["per_class"].items():
        mine = ours["per_category"][int(category_id)]
        assert (mine["tp"], mine["fp"], mine["fn"]) == (entry["tp"], entry["fp"], entry["fn"])
        assert mine["pq"] == pytest.approx(entry["pq"], abs=1e-9)
    assert 0 < ours["All"]["pq"] < 1  # the cases are neither all right nor all wrong


def test_pq_of_a_case_worked_by_hand():
    """A 10x10 image. Ground truth: stuff 7 on rows 0-4 (50 px), thing 1 on rows 5-9 cols 0-4
    (25 px), a crowd region of thing 2 on rows 5-9 cols 5-9 (25 px). Prediction: stuff 7 (IoU
    48/55, below), thing 1 on rows 6-9 cols 0-4 (20 px: IoU 20/25), thing 2 on the crowd
    region (ignored: all of it on crowd), thing 2 on row 0 cols 0-1 (2 px on stuff: a false positive).
    Stuff 7's prediction is rows 0-4 but those 2 px (48 on it) and row 5 cols 0-4: 53 px, union
    53 + 50 - 48 = 55."""
    gt = np.zeros((10, 10), np.int64)
    gt[:5], gt[5:, :5], gt[5:, 5:] = 1, 2, 3
    gt_segments = [{"id": 1, "category_id": 7, "area": 50}, {"id": 2, "category_id": 1, "area": 25},
                   {"id": 3, "category_id": 2, "area": 25, "iscrowd": 1}]
    pred = np.zeros((10, 10), np.int64)
    pred[:6], pred[6:, :5], pred[6:, 5:] = 4, 5, 6
    pred[5, 5:] = 6
    pred[0, :2] = 7
    pred_segments = [{"id": 4, "category_id": 7}, {"id": 5, "category_id": 1}, {"id": 6, "category_id": 2},
                     {"id": 7, "category_id": 2}]
    quality = PanopticQuality({c["id"]: c for c in CATEGORIES})
    quality.add(gt, gt_segments, pred, pred_segments)
    r = quality.results()
    assert r["per_category"][7] == {"name": "s", "pq": pytest.approx(48 / 55), "sq": pytest.approx(48 / 55),
                                    "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert r["per_category"][1]["pq"] == pytest.approx(20 / 25)
    assert (r["per_category"][2]["tp"], r["per_category"][2]["fp"], r["per_category"][2]["fn"]) == (0, 1, 0)
    assert r["per_category"][8]["pq"] is None  # no segment of it: not averaged
    assert r["All"] == {"pq": pytest.approx((48 / 55 + 0.8 + 0) / 3), "sq": pytest.approx((48 / 55 + 0.8 + 0) / 3),
                        "rq": pytest.approx(2 / 3), "n": 3}
    assert r["Stuff"]["pq"] == pytest.approx(48 / 55)


def test_ground_truth_problems_are_counted_and_named(tmp_path):
    folder = tmp_path / "panoptic_val"
    folder.mkdir()
    ids = np.ones((8, 8), np.int64)
    ids[:2] = 9  # an id its segments_info lacks: scored as void
    (folder / "1.png").write_bytes(png_bytes(ids))
    (folder / "2.png").write_bytes(b"not a png")
    data = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
            "categories": CATEGORIES,
            "annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": [{"id": 1, "category_id": 7}]},
                            {"image_id": 2, "file_name": "2.png", "segments_info": []}]}
    (tmp_path / "panoptic_val.json").write_text(json.dumps(data))
    gt = load_panoptic(str(tmp_path / "panoptic_val.json"))
    problems = Problems()
    assert (gt.ids(1, problems) == np.where(ids == 9, 0, 1)).all()
    assert gt.ids(2, problems) is None
    assert problems.counts == {"png_id_not_in_segments_info": 1, "unreadable_png": 1}
    assert "[9]" in problems.named[0] and "image 1" in problems.named[0] and "image 2" in problems.named[1]
    data["annotations"][0]["segments_info"][0].pop("category_id")
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotations\[0\]\.segments_info\[0\]"):
        load_panoptic(str(tmp_path / "bad.json"))


def test_detection_writes_panoptic_pngs_that_evaluate_and_reevaluate_score(ray_cluster, tmp_path):
    """Through the jobs' functions on Ray: re-evaluation detects with a model with the mask head
    and stuff classes (the model actors build its head) and keeps mask AP and PQ in its history;
    its predictions hold each box's mask and a PNG per image whose ids are the row's
    segments_info; evaluate scores the masks beside the boxes, and its PQ equals hotcoco's on the
    same files."""
    shapes = make_synthetic(str(tmp_path / "shapes"), train=0, val=4, seed=3,
                            config=SyntheticConfig(min_side=64, max_side=96, max_objects=3, stuff=True))
    torch.manual_seed(0)
    model = build_detr(get_config("detr-tiny", num_classes=22, masks=True, stuff_classes=tuple(STUFF.values())))
    with torch.no_grad():  # confident queries (class 20: sky; untrained otherwise): segments to write
        model.detr.class_embed.bias.zero_()
        model.detr.class_embed.bias[[2, 20]] = torch.tensor([0.0, 12.0])
        model.detr.class_embed.weight[2].normal_(0, 1.0)  # some queries: circles
    checkpoint = save_checkpoint(str(tmp_path / "runs" / "pan.pt"), model, contract=InputContract(96, 160))
    history = tmp_path / "history"
    summary = reevaluate(ReevaluateConfig(checkpoints=checkpoint, images=shapes["val_images"],
                                          annotations=shapes["val_annotations"], history=str(history),
                                          panoptic_annotations=shapes["val_panoptic"], actors=(1, 1)))
    [row] = read_history(str(history))
    assert json.loads(row["errors"]) == {} and row["images"] == 4
    output = Path(row["predictions"])
    rows = pq.read_table(output).to_pylist()
    assert len(rows) == 4 and all(r["error"] is None for r in rows)
    assert [len(r["masks"]) for r in rows] == [len(r["boxes"]) for r in rows]
    segments = 0
    for r in rows:
        entry = json.loads(r["panoptic"])
        ids = read_png((output / "_panoptic" / entry["file_name"]).read_bytes())
        assert ids.shape == (r["height"], r["width"])
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in entry["segments_info"]}
        assert all(s["area"] == (ids == s["id"]).sum() for s in entry["segments_info"])
        segments += len(entry["segments_info"])
    assert segments >= 4

    result = score_files(str(output), shapes["val_annotations"], panoptic_annotations=shapes["val_panoptic"])
    assert set(result["segm"]["metrics"]) == set(result["metrics"]) and result["segm"]["detections"] > 0
    assert summary["evaluated"][0]["segm_AP"] == row["segm_AP"] == pytest.approx(result["segm"]["metrics"]["AP"])
    images = json.loads(Path(shapes["val_panoptic"]).read_text())["images"]
    by_name = {Path(i["file_name"]).stem: i["id"] for i in images}
    predicted = {"images": [], "categories": [], "annotations": [
        {**json.loads(r["panoptic"]), "image_id": by_name[Path(r["path"]).stem]} for r in rows]}
    (tmp_path / "pred.json").write_text(json.dumps(predicted))
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = pq_compute(shapes["val_panoptic"], tmp_path / "pred.json", pred_folder=output / "_panoptic")
    assert result["panoptic"]["report"]["predicted"] == 4
    for name, group in (("PQ", "All"), ("PQ_th", "Things"), ("PQ_st", "Stuff")):
        assert result["panoptic"]["metrics"][name] == pytest.approx(theirs[group]["pq"], abs=1e-9)
    assert result["panoptic"]["metrics"]["PQ_st"] > 0  # the sky was found
    assert {k: row[k] for k in ("PQ", "PQ_th", "PQ_st")} == pytest.approx(
        {k: result["panoptic"]["metrics"][k] for k in ("PQ", "PQ_th", "PQ_st")}, abs=1e-12)
    report = (history / "report.md").read_text()
    assert "| mask AP | PQ |" in report and f"| {row['PQ']:.4f} |" in report
