"""Progress lines and the jobs' one-line summaries."""
from __future__ import annotations

from pipeline.progress import StepProgress, detection_headline, duration


def test_duration_reads_like_a_clock():
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3600 * 2 + 180)] == ["0s", "59s", "1m01s", "59m59s", "2h03m"]


def test_a_line_every_n_steps_and_at_least_once_a_minute():
    progress = StepProgress(epoch=2, epochs=3, steps_per_epoch=10, every_steps=5, every_s=60.0)
    lines = [progress.line(step, loss=2.0, images=step * 4) for step in range(1, 11)]
    assert [i + 1 for i, line in enumerate(lines) if line] == [5, 10]
    assert lines[4].startswith("epoch 2/3 step 5/10 loss 2 images/s ") and " eta " in lines[4]
    now = [0.0]
    slow = StepProgress(epoch=1, epochs=1, steps_per_epoch=1000, every_steps=500, every_s=60.0, clock=lambda: now[0])
    now[0] = 59.0
    assert slow.line(1, 1.0, 4) is None
    now[0] = 61.0
    assert slow.line(2, 1.0, 8) == "epoch 1/1 step 2/1000 loss 1 images/s 0.1 eta 8h27m"  # a minute passed


def test_detection_headline_counts_what_happened():
    line = detection_headline({"processed": 1200, "skipped": 30, "seconds": 75.0, "images_per_second": 16.0,
                               "batch_fill": 0.93, "rows": 1230, "inputs": 1230, "output": "s3://b/p",
                               "errors": {"missing": 2, "undecodable": 1}})
    assert line == ("detected 1,200 images (30 already done) in 1m15s, 16.0 images/s, batch_fill 0.93; "
                    "1,230 rows of 1,230 inputs in s3://b/p; error rows: missing 2, undecodable 1")
    assert "\n" not in line
