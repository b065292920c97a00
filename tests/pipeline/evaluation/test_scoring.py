"""COCO evaluation of prediction tables: the published oracle, pycocotools itself, hand cases, edge cases."""
from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.evaluation.metrics import evaluate
from pipeline.evaluation.scoring import BACKENDS, STAT_NAMES, CocoScorer
from pipeline.predictions import detections_table
from tests import REPO

PUBLISHED = dict(zip(STAT_NAMES, (
    0.5045806987249628, 0.6969727247299577, 0.5729816669904824, 0.5856257209410443, 0.5193996948036719,
    0.5013978986347466, 0.38681277964578054, 0.5936795762842003, 0.595352982877607, 0.6398109626113442,
    0.5664205978994309, 0.5642905982905982)))


def table_from_results(results: list[dict], images: dict[int, str], extra_rows: list[dict] = ()):
    """A predictions table holding COCO results (xywh) as our schema stores them (xyxy float32),
    one row per image, each image's detections in their original order."""
    by_image = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    rows = [{"path": f"/data/{images[i]}", "image_id": i, "error": None, "detections": {
        "boxes": np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                           for d in dets], np.float32),
        "scores": np.array([d["score"] for d in dets], np.float32),
        "labels": np.array([d["category_id"] for d in dets], np.int32)}} for i, dets in by_image.items()]
    rows += list(extra_rows)
    return detections_table([r["path"] for r in rows], [r["image_id"] for r in rows], [640] * len(rows),
                            [480] * len(rows), [r["detections"] for r in rows], [r["error"] for r in rows], "test")


def pycocotools_gt(gt_json: dict) -> COCO:
    gt = COCO()
    gt.dataset = gt_json
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def pycocotools_stats(gt: COCO, results: list[dict]) -> dict[str, float]:
    """pycocotools alone, summarize() included: the reference the scorer is held to."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(STAT_NAMES, evaluator.stats.tolist()))


def as_float32_results(results: list[dict]) -> list[dict]:
    """The same detections after a round trip through float32 xyxy (what the table stores)."""
    out = []
    for r in results:
        x, y, w, h = r["bbox"]
        x1, y1, x2, y2 = np.array([x, y, x + w, y + h], np.float32).astype(np.float64)
        out.append({**r, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(np.float32(r["score"]))})
    return out


@pytest.fixture(scope="module")
def oracle(reference_dir):
    gt_path = reference_dir / "coco" / "instances_val2014_100.json"
    results = json.loads((reference_dir / "coco" / "instances_val2014_fakebbox100_results.json").read_text())
    return gt_path, json.loads(gt_path.read_text()), results


def test_published_oracle_through_the_job(oracle, tmp_path):
    gt_path, gt_json, results = oracle
    table = table_from_results(results, {img["id"]: img["file_name"] for img in gt_json["images"]})
    order = list(range(table.num_rows))
    random.Random(0).shuffle(order)  # rows in no particular order across part files
    (tmp_path / "preds").mkdir()
    for k, part in enumerate(np.array_split(order, 3)):
        pq.write_table(table.take(part), tmp_path / "preds" / f"part-{k}.parquet")
    proc = subprocess.run([sys.executable, "jobs/evaluate.py", "--predictions", str(tmp_path / "preds"),
                           "--annotations", str(gt_path), "--output", str(tmp_path / "metrics")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary["metrics"]) == set(STAT_NAMES) and "AP50" in proc.stdout
    for name in STAT_NAMES:
        assert abs(summary["metrics"][name] - PUBLISHED[name]) < 2e-3, name
    exact = pycocotools_stats(pycocotools_gt(gt_json), as_float32_results(results))
    for name in STAT_NAMES:
        assert summary["metrics"][name] == pytest.approx(exact[name], abs=1e-12), name
    assert summary["report"]["missed_images"] == 1  # the results cover 99 of the 100 images
    written = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert written["metrics"] == summary["metrics"]
    assert pq.read_table(tmp_path / "metrics" / "metrics.parquet").to_pylist()[0]["AP"] == summary["metrics"]["AP"]

    reordered = evaluate([table.take(order[::-1])], CocoScorer(gt_json))
    assert reordered["metrics"] == summary["metrics"]


def small_ground_truth() -> dict:
    images = [{"id": i, "file_name": f"sub/img{i}.jpg", "width": 200, "height": 200} for i in (1, 2, 3)]
    boxes = {1: [(10, 10, 50, 40, 3)], 2: [(100, 80, 60, 60, 3), (5, 5, 20, 20, 7)], 3: [(30, 40, 120, 100, 7)]}
    annotations = [{"id": 10 * i + k, "image_id": i, "bbox": list(b[:4]), "area": b[2] * b[3], "iscrowd": 0,
                    "category_id": b[4]} for i, bs in boxes.items() for k, b in enumerate(bs)]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 3, "name": "three"}, {"id": 7, "name": "seven"}]}


def test_equals_pycocotools_on_built_detections():
    gt_json = small_ground_truth()
    rng = np.random.default_rng(1)
    results = []
    for a in gt_json["annotations"]:
        for _ in range(4):
            jitter = rng.normal(0, 6, 4)
            bbox = [float(v) for v in np.array(a["bbox"]) + jitter]
            bbox[2], bbox[3] = max(bbox[2], 1.0), max(bbox[3], 1.0)
            results.append({"image_id": a["image_id"], "category_id": int(rng.choice([3, 7])), "bbox": bbox,
                            "score": float(rng.uniform())})
    table = table_from_results(results, {1: "sub/img1.jpg", 2: "sub/img2.jpg", 3: "sub/img3.jpg"})
    ours = evaluate([table], CocoScorer(gt_json))
    exact = pycocotools_stats(pycocotools_gt(gt_json), as_float32_results(results))
    for name in STAT_NAMES:
        assert ours["metrics"][name] == pytest.approx(exact[name], abs=1e-12), name
    assert set(ours["per_category"]) == {3, 7} and ours["per_category"][3]["name"] == "three"


def perfect(gt_json: dict, image_ids) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt_json["annotations"] if a["image_id"] in image_ids]


def test_hand_computable_cases():
    gt_json = small_ground_truth()
    names = {1: "sub/img1.jpg", 2: "sub/img2.jpg", 3: "sub/img3.jpg"}
    gt = CocoScorer(gt_json)
    result = evaluate([table_from_results(perfect(gt_json, {1, 2, 3}), names)], gt)
    assert result["metrics"]["AP"] == pytest.approx(1.0) and result["metrics"]["AR100"] == pytest.approx(1.0)

    nothing = evaluate([table_from_results([], names)], gt)
    assert all(nothing["metrics"][n] in (0.0, -1.0) for n in STAT_NAMES) and nothing["metrics"]["AP"] == 0.0
    assert nothing["report"]["missed_images"] == 3

    # one category (3) found on image 1 only: half its objects -> precision 1 up to recall .5
    one = {"images": gt_json["images"][:2], "categories": gt_json["categories"][:1],
           "annotations": [a for a in gt_json["annotations"] if a["category_id"] == 3]}
    half = evaluate([table_from_results(perfect(one, {1}), names)], CocoScorer(one))
    assert half["metrics"]["AP"] == pytest.approx(51 / 101) and half["metrics"]["AR100"] == pytest.approx(0.5)
    assert half["report"]["missed_images"] == 1 and half["report"]["missed_image_ids"] == [2]


def test_edge_cases_are_reported():
    gt_json = small_ground_truth()
    names = {1: "sub/img1.jpg", 2: "sub/img2.jpg", 3: "sub/img3.jpg", 99: "other/unknown.jpg"}
    results = perfect(gt_json, {1, 2}) + [
        {"image_id": 99, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.5},  # image not in the ground truth
        {"image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5], "score": 0.99},  # category not in it
    ]
    # 150 low-score detections on image 2: only the top 100 of that image count
    results += [{"image_id": 2, "category_id": 7, "bbox": [150, 150, 10, 10], "score": 0.01} for _ in range(150)]
    error_row = {"path": "/data/sub/img3.jpg", "image_id": None, "error": "undecodable: truncated", "detections": None}
    table = table_from_results(results, names, [error_row])
    result = evaluate([table], CocoScorer(gt_json))
    report = result["report"]
    assert report["unknown_rows"] == 1 and report["unknown_paths"] == ["/data/other/unknown.jpg"]
    assert report["unknown_category_detections"] == 1 and report["unknown_category_ids"] == [42]
    assert report["error_rows"] == {"undecodable": 1}
    assert report["truncated_detections"] == 52  # image 2: 2 perfect + 150 extra, 100 kept
    assert report["missed_images"] == 0  # the error row matched image 3 by its path; it has no detections
    same = evaluate([table_from_results(perfect(gt_json, {1, 2}), names)], CocoScorer(gt_json))
    assert result["metrics"]["AP50"] <= same["metrics"]["AP50"]


def test_matches_rows_by_file_name_when_image_id_is_null():
    gt_json = small_ground_truth()
    table = table_from_results(perfect(gt_json, {1, 2, 3}), {1: "sub/img1.jpg", 2: "sub/img2.jpg", 3: "sub/img3.jpg"})
    table = table.set_column(1, "image_id", pa.nulls(table.num_rows, pa.int64()))  # e.g. a folder was detected
    result = evaluate([table], CocoScorer(gt_json))
    assert result["metrics"]["AP"] == pytest.approx(1.0) and result["report"]["unknown_rows"] == 0


def test_malformed_annotations_name_the_record(tmp_path):
    from pipeline.coco import CocoFormatError
    from pipeline.evaluation.metrics import score_files

    gt_json = small_ground_truth()
    del gt_json["annotations"][1]["bbox"]
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    pq.write_table(table_from_results([], {}), tmp_path / "preds.parquet")
    with pytest.raises(CocoFormatError, match="20"):
        score_files(str(tmp_path / "preds.parquet"), str(tmp_path / "gt.json"))


def backend_stats(gt_json: dict, detections: np.ndarray, max_dets: int = 100) -> dict[str, tuple[dict, np.ndarray]]:
    """Each backend's 12 stats and precision array on the same detections."""
    out = {}
    for backend in BACKENDS:
        scorer = CocoScorer(gt_json, backend, max_dets)
        evaluator = scorer.cocoeval(detections)
        out[backend] = scorer.stats(evaluator), evaluator.eval["precision"]
    return out


def as_array(results: list[dict]) -> np.ndarray:
    return np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in results], np.float64)


def test_backends_equal_pycocotools_on_the_oracle_and_a_large_set_with_crowds_and_empty_images(oracle):
    from bench.evaluation import build

    _, gt_json, results = oracle
    reference = pycocotools_stats(pycocotools_gt(gt_json), results)  # pycocotools' own summarize()
    for backend, (stats, _) in backend_stats(gt_json, as_array(results)).items():
        assert all(abs(stats[n] - reference[n]) <= 1e-9 for n in STAT_NAMES), backend
        assert all(abs(stats[n] - PUBLISHED[n]) <= 1e-9 for n in STAT_NAMES), backend

    gt_json, table = build(images=400, per_image=30, seed=3, crowd_share=0.2, empty_share=0.1)
    assert any(a["iscrowd"] for a in gt_json["annotations"])
    assert len({a["image_id"] for a in gt_json["annotations"]}) < len(gt_json["images"])  # empty images
    detections, _ = detections_array_of(table, gt_json)
    both = backend_stats(gt_json, detections)
    reference = pycocotools_stats(pycocotools_gt(gt_json), [
        {"image_id": int(d[0]), "bbox": d[1:5].tolist(), "score": d[5], "category_id": int(d[6])} for d in detections])
    for backend, (stats, _) in both.items():
        assert all(abs(stats[n] - reference[n]) <= 1e-9 for n in STAT_NAMES), backend
    for backend in BACKENDS:
        assert np.abs(both[backend][1] - both["pycocotools"][1]).max() <= 1e-9, backend
    assert 0.0 < reference["AP"] < 1.0


def detections_array_of(table: pa.Table, gt_json: dict, max_dets: int = 100):
    from pipeline.evaluation.rows import detections_array

    return detections_array([table], CocoScorer(gt_json, "pycocotools", max_dets))


def test_max_dets_is_the_last_cap_and_is_recorded(tmp_path):
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    from bench.evaluation import build

    gt_json, table = build(images=60, per_image=300, seed=5)
    at = {cap: evaluate([table], CocoScorer(gt_json, max_dets=cap)) for cap in (100, 300)}
    assert at[100]["max_dets"] == 100 and at[300]["max_dets"] == 300 and "AR300" in at[300]["metrics"]
    assert at[100]["report"]["truncated_detections"] == 60 * 200 and at[300]["report"]["truncated_detections"] == 0
    assert at[300]["metrics"]["AR300"] > at[100]["metrics"]["AR100"] and "AR100" not in at[300]["metrics"]

    # independently: faster-coco-eval's own summarize() at caps 1, 10, 300; and the backends agree
    detections, _ = detections_array_of(table, gt_json, max_dets=300)
    gt, found = FasterCOCO(gt_json), FasterCOCO(gt_json).loadRes(detections)
    reference = COCOeval_faster(gt, found, "bbox", print_function=lambda *_: None)
    reference.params.maxDets = [1, 10, 300]
    reference.run()
    assert np.allclose(list(at[300]["metrics"].values()), reference.stats[:12], rtol=0, atol=1e-12)
    both = backend_stats(gt_json, detections, max_dets=300)
    for backend in BACKENDS:
        assert all(abs(both["pycocotools"][0][n] - v) <= 1e-9 for n, v in both[backend][0].items()), backend

    few = build(images=60, per_image=40, seed=5)[1]  # at most 100 per image: the cap changes nothing
    same = [evaluate([few], CocoScorer(gt_json, max_dets=cap))["metrics"] for cap in (100, 300)]
    assert list(same[0].values()) == list(same[1].values())

    pq.write_table(table, tmp_path / "preds.parquet")
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    proc = subprocess.run([sys.executable, "jobs/evaluate.py", "--predictions", str(tmp_path / "preds.parquet"),
                           "--annotations", str(tmp_path / "gt.json"), "--max-dets", "300", "--backend",
                           "pycocotools", "--output", str(tmp_path / "metrics")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["max_dets"] == 300 and summary["backend"] == "pycocotools"
    assert summary["metrics"] == pytest.approx(at[300]["metrics"], abs=1e-9)
    row = pq.read_table(tmp_path / "metrics" / "metrics.parquet").to_pylist()[0]
    assert row["max_dets"] == 300 and row["AR300"] == summary["metrics"]["AR300"]


def test_bad_predictions_are_counted_and_said():
    gt_json = small_ground_truth()
    names = {1: "sub/img1.jpg", 2: "sub/img2.jpg", 3: "sub/img3.jpg"}
    good = perfect(gt_json, {1, 2, 3})
    bad = [{"image_id": 1, "category_id": 3, "bbox": [float("nan"), 1, 5, 5], "score": 0.99},
           {"image_id": 2, "category_id": 3, "bbox": [50, 50, -10, 5], "score": 0.99},  # negative width
           {"image_id": 3, "category_id": 7, "bbox": [5, 5, 10, 10], "score": float("inf")},
           {"image_id": 3, "category_id": 7, "bbox": [5, 5, float("inf"), 10], "score": 0.5}]
    result = evaluate([table_from_results(good + bad, names)], CocoScorer(gt_json))
    assert result["report"]["invalid_box_detections"] == 4 and result["report"]["detections"] == len(good)
    assert result["metrics"]["AP"] == pytest.approx(1.0)  # dropped, not scored as false positives
    assert any("not finite or a negative width/height" in w for w in result["report"]["warnings"])

    empty = evaluate([table_from_results([], {})], CocoScorer(gt_json))
    assert empty["metrics"]["AP"] == 0.0 and empty["report"]["missed_images"] == 3
    assert empty["report"]["warnings"][0].startswith("the predictions hold no rows")


def test_the_job_says_what_is_wrong_in_one_line(tmp_path):
    gt_json = small_ground_truth()
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    (tmp_path / "no-parts").mkdir()
    pq.write_table(pa.table({"path": ["a.jpg"], "score": [1.0]}), tmp_path / "other.parquet")
    names = {1: "sub/img1.jpg", 2: "sub/img2.jpg", 99: "x/unknown.jpg"}
    mixed = perfect(gt_json, {1, 2}) + [{"image_id": 99, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.5},
                                        {"image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5], "score": 0.5}]
    pq.write_table(table_from_results(mixed, names), tmp_path / "mixed.parquet")

    def job(predictions: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "jobs/evaluate.py", "--predictions", str(predictions),
                               "--annotations", str(tmp_path / "gt.json")],
                              cwd=REPO, capture_output=True, text=True, timeout=300)

    missing, no_parts, other = tmp_path / "missing", tmp_path / "no-parts", tmp_path / "other.parquet"
    for source, line in ((missing, f"evaluate: no predictions at {missing}: no such file or folder"),
                         (no_parts, f"evaluate: no predictions at {no_parts}: the folder holds no part-*.parquet files"),
                         (other, f"evaluate: {other} is not a predictions table: it lacks the column(s) "
                                 "['image_id', 'boxes', 'scores', 'labels', 'error']")):
        proc = job(source)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [line], proc.stderr

    proc = subprocess.run([sys.executable, "jobs/evaluate.py", "--predictions", str(other), "--annotations",
                           str(tmp_path / "gt.json"), "--max-dets", "5"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "evaluate: --max-dets must be above 10 (COCO also scores the top 1 and 10 of each image), not 5"]

    proc = job(tmp_path / "mixed.parquet")  # scored, and what was left out is said
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("evaluate: warning: ")]
    assert len(warnings) == 3, proc.stderr
    assert any("1 ground-truth image(s) have no prediction row" in w for w in warnings)
    assert any("1 row(s) name images that are not in the annotations" in w for w in warnings)
    assert any("categories the annotations do not declare were dropped: ids [42]" in w for w in warnings)


def test_the_predictions_own_parameters_are_said_where_they_lower_the_ap(tmp_path):
    """A table made above the default threshold, or at other sizes than the checkpoint's, says so."""
    from pipeline.evaluation.metrics import score_files
    from pipeline.predictions import write_part

    gt_json = small_ground_truth()
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    names = {1: "sub/img1.jpg", 2: "sub/img2.jpg", 3: "sub/img3.jpg"}
    table = table_from_results(perfect(gt_json, {1, 2, 3}), names)
    own = {"min_size": 160, "max_size": 267}
    write_part(str(tmp_path / "made"), 0, table, {"score_threshold": 0.5, "min_size": 800, "max_size": 1333,
                                                   "checkpoint_contract": own, "model": "sha256:x"})
    result = score_files(str(tmp_path / "made"), str(tmp_path / "gt.json"))
    assert result["made_with"] == {"model": "sha256:x", "score_threshold": 0.5, "min_size": 800, "max_size": 1333}
    said = result["report"]["warnings"]
    assert len(said) == 2
    assert "keep only boxes scoring at least 0.5" in said[0] and "the default 0.05" in said[0]
    assert "resized to 800 / 1333 (--min-size / --max-size), not the 160 / 267 the checkpoint" in said[1]
    write_part(str(tmp_path / "default"), 0, table, {"score_threshold": 0.05, "min_size": 160, "max_size": 267,
                                                      "checkpoint_contract": own, "model": "sha256:x"})
    assert score_files(str(tmp_path / "default"), str(tmp_path / "gt.json"))["report"]["warnings"] == []
