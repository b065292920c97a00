"""COCO reading: validation names the offending record; boxes are clipped, dropped, counted."""
from __future__ import annotations

import copy
import json

import pytest

from pipeline.coco import CocoFormatError, load_coco, parse_coco

GOOD = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
               {"id": 2, "file_name": "b.jpg", "width": 50, "height": 50}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 7, "bbox": [90, 70, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 12, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},
        {"id": 13, "image_id": 2, "category_id": 7, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 1},
    ],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
}


def test_good_file_clips_drops_and_ignores_crowd():
    dataset = parse_coco(copy.deepcopy(GOOD), "good.json", "root")
    assert dataset.num_classes == 8
    assert dataset.dropped_boxes == 1 and dataset.crowd_boxes == 1
    records = {r["image_id"]: r for r in dataset.records()}
    assert records[1]["boxes"] == [[10, 10, 30, 40], [90, 70, 100, 80]]  # second clipped to the image
    assert records[1]["labels"] == [3, 7]
    assert records[2]["boxes"] == [] and records[1]["path"] == "root/a.jpg"


def _broken(edit) -> dict:
    coco = copy.deepcopy(GOOD)
    edit(coco)
    return coco


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["annotations"][1].pop("bbox"), r"annotations\[1\] \(id 11\) lacks \['bbox'\]"),
        (lambda c: c["images"][0].pop("file_name"), r"images\[0\] \(id 1\) lacks \['file_name'\]"),
        (lambda c: c["categories"][1].pop("name"), r"categories\[1\] \(id 7\) lacks \['name'\]"),
        (lambda c: c["annotations"][0].update(category_id=5), r"annotations\[0\] \(id 10\) has category_id 5, which is not declared"),
        (lambda c: c["annotations"][0].update(image_id=99), r"annotations\[0\] \(id 10\) refers to image_id 99"),
        (lambda c: c["images"][1].update(id=1), r"images\[1\] \(id 1\) repeats the images id 1"),
        (lambda c: c["annotations"][2].update(id=10), r"annotations\[2\] \(id 10\) repeats the annotations id 10"),
        (lambda c: c["categories"].append({"id": 3, "name": "again"}), r"categories\[2\] \(id 3\) repeats"),
        (lambda c: c["annotations"][3].update(bbox=[1, 2, 3]), r"annotations\[3\] \(id 13\) has bbox \[1, 2, 3\]"),
        (lambda c: c["images"][1].update(width=0), r"images\[1\] \(id 2\) has width/height"),
        (lambda c: c.pop("annotations"), r"top-level 'annotations' must be a list"),
        (lambda c: c["images"].append("x.jpg"), r"images\[2\] is not an object"),
    ],
)
def test_malformed_files_name_the_record(edit, message):
    with pytest.raises(CocoFormatError, match=message):
        parse_coco(_broken(edit), "bad.json", "root")


def test_missing_image_files_and_bad_json(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "ann.json").write_text(json.dumps(GOOD))
    with pytest.raises(CocoFormatError, match=r"1 image file\(s\) missing .*\['b.jpg'\]"):
        load_coco(str(tmp_path / "ann.json"), str(tmp_path / "images"))
    (tmp_path / "images" / "b.jpg").write_bytes(b"x")
    assert len(load_coco(str(tmp_path / "ann.json"), str(tmp_path / "images")).images) == 2
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        load_coco(str(tmp_path / "bad.json"), str(tmp_path / "images"))


def test_reads_from_s3(s3_bucket, tiny_shapes):
    import storage as uri

    for split in ("annotations/train.json", "train/000000.jpg", "train/000001.jpg"):
        uri.write_bytes(f"{s3_bucket}/{split}", uri.read_bytes(f"{tiny_shapes['out']}/{split}"))
    with pytest.raises(CocoFormatError, match="14 image file"):  # only 2 of 16 uploaded
        load_coco(f"{s3_bucket}/annotations/train.json", f"{s3_bucket}/train")
