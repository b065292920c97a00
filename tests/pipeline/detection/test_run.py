"""Bulk detection: every input exactly once, bad files as error rows, resume, S3, canvases, invariance."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import decode_image

import storage as uris
from model.checkpoint import load_checkpoint
from model.postprocess import PostProcess
from pipeline import options, predictions
from pipeline.detection.config import DetectConfig
from pipeline.detection.run import run_detection
from tests import REPO
from tests.corpus import rotated_photo, write_corpus, write_pictures
from tests.pipeline.detection import CONTRACT, SMALL


def detect(images: str, output: str, checkpoint: str, **overrides) -> dict:
    settings = dict(SMALL, score_threshold=0.0, actors=(1, 1), batch_size=4, window=8, rows_per_file=5)
    settings.update(overrides)
    return run_detection(DetectConfig(images=images, output=output, checkpoint=checkpoint, **settings))


def test_bad_inputs_each_get_exactly_one_row(ray_cluster, checkpoint, tmp_path):
    expected = write_corpus(tmp_path / "images")
    (tmp_path / "images" / "notes.txt").write_text("not an image extension: not an input")
    summary = detect(str(tmp_path / "images"), str(tmp_path / "out"), checkpoint, max_pixels=50_000_000)
    rows = {Path(r["path"]).name: r for r in predictions.read_predictions(str(tmp_path / "out")).to_pylist()}
    assert sorted(rows) == sorted(expected)
    assert summary["rows"] == summary["inputs"] == len(expected) and summary["duplicates"] == summary["missing_rows"] == 0
    for name, kind in expected.items():
        row = rows[name]
        if kind is None:
            assert row["error"] is None, (name, row["error"])
            # threshold 0: every query (the smallest canvas, 96x128, has 48 stride-16 tokens for 20 queries)
            assert len(row["boxes"]) == len(row["scores"]) == len(row["labels"]) == 20
            assert row["width"] > 0 and row["height"] > 0
        else:
            assert row["error"].startswith(kind + ":"), (name, row["error"])
            assert row["boxes"] is None and row["scores"] is None
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == rotated_photo()[1]  # displayed orientation
    assert (rows["wide.png"]["width"], rows["wide.png"]["height"]) == (3000, 3)
    boxes = np.array(rows["rotated.jpg"]["boxes"])
    assert boxes[:, [0, 2]].max() <= 60 + 1e-3 and boxes[:, [1, 3]].max() <= 120 + 1e-3  # in displayed pixels
    assert summary["errors"] == {"empty": 1, "undecodable": 2, "too_large": 1}
    assert 0 < summary["batch_fill"] <= 1


def test_rows_equal_the_model_called_directly(ray_cluster, checkpoint, tmp_path):
    paths = write_pictures(tmp_path / "images", 3)
    detect(str(tmp_path / "images"), str(tmp_path / "out"), checkpoint, score_threshold=0.05)
    table = predictions.read_predictions(str(tmp_path / "out"))
    model, config = load_checkpoint(checkpoint)
    postprocess = PostProcess(0.05, top_k=config.num_queries)
    for row in table.to_pylist():
        image = decode_image(str(row["path"]))  # torchvision's own decoder and resize, not the pipeline's
        resized = TF.resize(image, [SMALL["min_size"]], max_size=SMALL["max_size"], antialias=True)
        pixels = TF.normalize(TF.to_dtype(resized, torch.float32, scale=True), CONTRACT.image_mean, CONTRACT.image_std)
        height, width = CONTRACT.canvas_size(*pixels.shape[1:])  # zero padding bottom/right, DETR's mask
        batch = torch.nn.functional.pad(pixels, (0, width - pixels.shape[2], 0, height - pixels.shape[1]))[None]
        mask = torch.ones(1, height, width, dtype=torch.bool)
        mask[0, : pixels.shape[1], : pixels.shape[2]] = False
        with torch.inference_mode():
            (want,) = postprocess(model(batch, mask), torch.tensor([image.shape[1:]]))
        assert (row["width"], row["height"]) == (image.shape[2], image.shape[1])
        assert row["labels"] == want["labels"].tolist()
        np.testing.assert_allclose(row["scores"], want["scores"].numpy(), atol=1e-4)
        np.testing.assert_allclose(np.array(row["boxes"]).reshape(-1, 4), want["boxes"].numpy(), atol=1e-3)
    assert len(table) == len(paths)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batches_of_only_failed_images(ray_cluster, checkpoint, tmp_path, batch_size):
    """Windows in which no image could be read (all-null columns) still give a row each."""
    manifest = tmp_path / "gone.parquet"
    paths = [f"{tmp_path}/gone/{i:03d}.jpg" for i in range(20)] + [f"{tmp_path}/empty.jpg"]
    (tmp_path / "empty.jpg").write_bytes(b"")
    pq.write_table(pa.table({"path": paths}), manifest)
    summary = detect(str(manifest), str(tmp_path / "out"), checkpoint, batch_size=batch_size, window=4)
    assert summary["inputs"] == summary["rows"] == 21 and summary["missing_rows"] == summary["duplicates"] == 0
    assert summary["errors"] == {"missing": 20, "empty": 1} and summary["batch_fill"] is None
    rows = predictions.read_predictions(str(tmp_path / "out")).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(paths) and all(r["boxes"] is None for r in rows)


def test_coco_and_manifest_inputs(ray_cluster, checkpoint, tiny_shapes, tmp_path):
    annotation = json.loads(Path(tiny_shapes["val_annotations"]).read_text())
    ids = {img["file_name"]: img["id"] for img in annotation["images"]}
    summary = detect(tiny_shapes["val_annotations"], str(tmp_path / "coco"), checkpoint,
                     image_root=tiny_shapes["val_images"])
    rows = predictions.read_predictions(str(tmp_path / "coco")).to_pylist()
    assert summary["rows"] == 8 and summary["errors"] == {}
    assert {Path(r["path"]).name: r["image_id"] for r in rows} == ids

    manifest = tmp_path / "list.txt"
    first, second = (f"{tiny_shapes['val_images']}/{name}" for name in list(ids)[:2])
    manifest.write_text(f"# a comment\n{first}\n{second}\n{first}\n\n{tmp_path}/gone.jpg\n")
    summary = detect(str(manifest), str(tmp_path / "manifest"), checkpoint)
    assert summary["inputs"] == summary["rows"] == 3 and summary["errors"] == {"missing": 1}

    table = pq.read_table(str(tmp_path / "coco"))  # the output itself as a Parquet manifest (a folder)
    summary = detect(str(tmp_path / "coco"), str(tmp_path / "again"), checkpoint, shard_size=3)
    assert summary["inputs"] == summary["rows"] == 8 and summary["shards"] == 3 and summary["errors"] == {}
    again = predictions.read_predictions(str(tmp_path / "again")).to_pylist()
    assert {r["path"]: r["image_id"] for r in again} == dict(zip(table["path"].to_pylist(),
                                                                 table["image_id"].to_pylist()))


def _complete_shards(output: Path, size: int) -> list[int]:
    """The row counts of the shards whose part files hold all their rows (shard i of `size`
    inputs, the last one the rest of 60)."""
    rows: dict[int, int] = {}
    for path in predictions.part_files(str(output)):
        shard, count = predictions.parse_part_name(Path(path).name)
        rows[shard] = rows.get(shard, 0) + count
    return [count for shard, count in rows.items() if count == min(size, 60 - shard * size)]


def test_resume_after_the_driver_is_killed(ray_cluster, checkpoint, tmp_path):
    """Kill the job's driver once part files exist; the re-run completes without duplicates."""
    write_pictures(tmp_path / "images", 60, seed=2)
    out = tmp_path / "out"
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    proc = subprocess.Popen(
        [sys.executable, "jobs/detect.py", "--images", str(tmp_path / "images"), "--output", str(out),
         "--checkpoint", checkpoint, "--min-size", "128", "--max-size", "200", "--batch-size", "2",
         "--window", "4", "--shard-size", "8", "--rows-per-file", "4", "--actors", "1,1"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not _complete_shards(out, 8) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = predictions.read_predictions(str(out), ["path"]).num_rows
    assert 0 < before < 60, f"the run should have been cut midway ({before} rows)"
    complete = sum(_complete_shards(out, 8))

    summary = detect(str(tmp_path / "images"), str(out), checkpoint, min_size=128, max_size=200,
                     score_threshold=predictions.SCORE_THRESHOLD,  # the job's default, as the killed run
                     shard_size=1000)  # the saved plan's 8-input shards apply
    assert summary["shards"] == 8 and summary["skipped"] == complete > 0  # incomplete shards ran again
    assert summary["processed"] == 60 - summary["skipped"]
    assert summary["rows"] == summary["inputs"] == 60 and summary["duplicates"] == summary["missing_rows"] == 0
    rows = predictions.read_predictions(str(out), ["path"])["path"].to_pylist()
    assert len(rows) == len(set(rows)) == 60


def test_refuses_to_mix_runs_unless_overwrite(ray_cluster, checkpoint, tmp_path):
    write_pictures(tmp_path / "images", 2)
    out = str(tmp_path / "out")
    detect(str(tmp_path / "images"), out, checkpoint)
    with pytest.raises(ValueError, match="score_threshold"):
        detect(str(tmp_path / "images"), out, checkpoint, score_threshold=0.5)
    again = detect(str(tmp_path / "images"), out, checkpoint)
    assert again["processed"] == 0 and again["rows"] == 2  # nothing left to do
    fresh = detect(str(tmp_path / "images"), out, checkpoint, score_threshold=0.5, overwrite=True)
    assert fresh["processed"] == fresh["rows"] == 2


def test_job_reads_and_writes_s3(ray_cluster, s3_bucket, checkpoint, tmp_path):
    paths = write_pictures(tmp_path / "images", 3, seed=3)
    for path in paths:
        uris.write_bytes(f"{s3_bucket}/photos/{path.parent.name}/{path.name}", path.read_bytes())
    uris.write_bytes(f"{s3_bucket}/photos/broken.jpg", b"\xff\xd8 not really")
    # the job joins the suite's Ray (whose workers have the S3 server's AWS_* variables), as
    # under `ray job submit`; test_demo runs a job that starts its own
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    proc = subprocess.run(
        [sys.executable, "jobs/detect.py", "--images", f"{s3_bucket}/photos", "--output", f"{s3_bucket}/preds",
         "--checkpoint", checkpoint, "--min-size", "96", "--max-size", "160", "--actors", "1,1",
         "--render", "2", str(tmp_path / "pictures")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["inputs"] == summary["rows"] == 4 and summary["errors"] == {"undecodable": 1}
    rows = predictions.read_predictions(f"{s3_bucket}/preds").to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(
        [f"{s3_bucket}/photos/images/{p.name}" for p in paths] + [f"{s3_bucket}/photos/broken.jpg"])
    run = predictions.run_metadata(f"{s3_bucket}/preds")
    assert run["preset"] == "detr-tiny" and run["min_size"] == 96 and run["model"].startswith("sha256:")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in json.dumps(run)
    assert len(summary["rendered"]) == 2 and all(Path(p).stat().st_size > 0 for p in summary["rendered"])
    files = predictions.part_files(f"{s3_bucket}/preds")
    fs, _ = uris.resolve(s3_bucket)
    assert pq.read_schema(fs.open_input_file(files[0])).field("boxes").type == predictions.SCHEMA.field("boxes").type
    # the output keeps the options of its last run, a --config file that replays it
    replayed = DetectConfig(**options.from_file(f"{s3_bucket}/preds/_config.yaml", DetectConfig))
    assert (replayed.images, replayed.min_size, replayed.actors, replayed.checkpoint) == (
        f"{s3_bucket}/photos", 96, (1, 1), checkpoint)


def test_transient_store_faults_are_retried(ray_cluster, s3_faults, s3_bucket, checkpoint, tmp_path):
    """Object reads that fail (503 SlowDown, connection reset) more often than the S3 client's
    own retries allow still end with detections; a file that stays unreachable is recorded as
    `unreadable`, and the next run over the same output reads it again."""
    for path in write_pictures(tmp_path / "images", 5, seed=5):
        uris.write_bytes(f"{s3_bucket}/photos/{path.name}", path.read_bytes())
    failed = s3_faults.failed
    s3_faults.fail_first(4)  # the S3 client tries 3 times; the read task's own retries do the rest
    try:
        summary = detect(f"{s3_bucket}/photos", str(tmp_path / "flaky"), checkpoint)
    finally:
        s3_faults.heal()
    assert s3_faults.failed - failed >= 5 * 4
    assert summary["rows"] == summary["inputs"] == 5 and summary["errors"] == {}
    rows = predictions.read_predictions(str(tmp_path / "flaky")).to_pylist()
    assert all(r["error"] is None and len(r["scores"]) == 20 for r in rows)

    s3_faults.take_down(f"{s3_bucket.removeprefix('s3://')}/photos/img0002.png")
    try:  # 2 reads of 3 client tries each, not the default 6: what is tested is the row it ends with
        summary = detect(f"{s3_bucket}/photos", str(tmp_path / "down"), checkpoint, read_attempts=2)
    finally:
        s3_faults.heal()
    assert summary["rows"] == 5 and summary["errors"] == {"unreadable": 1}
    again = detect(f"{s3_bucket}/photos", str(tmp_path / "down"), checkpoint)
    assert again["processed"] == again["rows"] == 5 and again["errors"] == {}  # its shard ran again
    again = detect(f"{s3_bucket}/photos", str(tmp_path / "down"), checkpoint)
    assert again["processed"] == 0 and again["skipped"] == 5


def test_a_run_that_cannot_fit_stops_with_a_message(ray_cluster, checkpoint, tmp_path):
    """More actors than the cluster's CPUs leave no room for the read tasks: Ray would wait
    forever; the job stops at once and says what is short. So does a GPU run without GPUs."""
    write_pictures(tmp_path / "images", 2)
    cpus = ray_cluster.cluster_resources()["CPU"]
    with pytest.raises(RuntimeError, match=rf"needs {cpus + 0.75:g} CPU .* has {cpus:g} CPU.*fewer --actors"):
        detect(str(tmp_path / "images"), str(tmp_path / "out"), checkpoint, actors=(int(cpus), int(cpus)))
    with pytest.raises(RuntimeError, match="needs .*1 GPU .* has .*0 GPU"):
        detect(str(tmp_path / "images"), str(tmp_path / "out"), checkpoint, device="cuda", resource_wait=1)
    assert not predictions.part_files(str(tmp_path / "out"))


def test_an_actor_that_keeps_dying_stops_the_run_with_one_line(ray_cluster, checkpoint, tmp_path):
    """A model actor killed again and again (as the host's memory monitor kills one that does not
    fit) is restarted a bounded number of times, then the run stops saying so; what was written is
    kept and the same command completes."""
    from ray.util.state import list_actors

    from tests.local_cluster import STATE_API

    restarts = 1  # --actor-restarts (default 4): each death costs the test an actor's start
    write_pictures(tmp_path / "images", 200, seed=5)
    settings = dict(min_size=192, max_size=320, batch_size=2, window=4, shard_size=20)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = detect(str(tmp_path / "images"), str(tmp_path / "out"), checkpoint,
                                        actor_restarts=restarts, **settings)
        except Exception as e:  # noqa: BLE001 (what the job would print)
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    killed: set[int] = set()
    written_at_kill = 0
    deadline = time.time() + 300
    while thread.is_alive() and len(killed) <= restarts and time.time() < deadline:
        actors = list_actors(address=os.environ[STATE_API], filters=[
            ("class_name", "=", "MapWorker(MapBatches(DetectorActor))"), ("state", "=", "ALIVE")])
        written = len(predictions.part_files(str(tmp_path / "out")))
        for pid in {a.pid for a in actors if a.pid} - killed:
            if written > written_at_kill:  # each actor dies working, once the run has written a part file more
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
                written_at_kill = written
        time.sleep(0.2)
    thread.join(timeout=300)
    assert len(killed) == restarts + 1, (killed, outcome)
    error = outcome.get("error")
    assert isinstance(error, RuntimeError), outcome
    assert str(error).startswith(f"a model actor died {restarts + 1} times and is not restarted again: ")
    assert str(error).count("\n") == 0 and "the same command resumes" in str(error)
    assert "its process died (Worker unexpectedly exits" in str(error) and "lower --batch-size" in str(error)
    summary = detect(str(tmp_path / "images"), str(tmp_path / "out"), checkpoint, **settings)
    assert summary["rows"] == summary["inputs"] == 200 and summary["duplicates"] == summary["missing_rows"] == 0
