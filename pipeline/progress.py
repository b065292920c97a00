"""Progress lines a person can read: a long loop prints one every so many steps, and at
least once a minute, with where it is, how fast it goes and when it should end."""
from __future__ import annotations

import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """12s, 4m05s, 2h03m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StepProgress:
    """Training steps of one epoch: `epoch 3/20 step 120/500 loss 4.21 images/s 38.2 eta 2m10s`.
    The ETA covers the rest of the run (this epoch's pace times the steps left in all)."""

    def __init__(self, epoch: int, epochs: int, steps_per_epoch: int, every_steps: int = 100,
                 every_s: float = 60.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.epoch, self.epochs, self.steps_per_epoch = epoch, epochs, max(1, steps_per_epoch)
        self.every_steps, self.every_s, self.clock = max(1, every_steps), every_s, clock
        self.started = self.last = clock()
        self.records: list[dict] = []  # each line's numbers, for the run's history

    def line(self, step: int, loss: float, images: int) -> str | None:
        """The line for the step just done (counted from 1 in this epoch), or None when it is
        not yet time for one."""
        now = self.clock()
        if step % self.every_steps and now - self.last < self.every_s:
            return None
        self.last = now
        elapsed = now - self.started
        left = (self.steps_per_epoch - step) + (self.epochs - self.epoch) * self.steps_per_epoch
        eta_s = elapsed / step * max(left, 0)
        speed = images / max(elapsed, 1e-9)
        self.records.append({"epoch": self.epoch, "step": step, "steps": self.steps_per_epoch, "loss": loss,
                             "images_per_s": speed, "eta_s": round(eta_s, 1), "time": time.time()})
        return (f"epoch {self.epoch}/{self.epochs} step {step}/{self.steps_per_epoch} "
                f"loss {loss:.4g} images/s {speed:.1f} eta {duration(eta_s)}")


# One-line human summaries, printed by each job before its JSON line.

def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(errors.items())) or "none"


def training_headline(summary: dict) -> str:
    m = summary.get("metrics") or {}
    scores = f", val AP {m['AP']:.3f} AP50 {m['AP50']:.3f}" if "AP" in m else ""
    epochs = m.get("epoch", 0)
    return (f"trained {epochs} epoch{'' if epochs == 1 else 's'}: loss {m.get('loss', float('nan')):.3f}{scores}; "
            f"last checkpoint {summary.get('checkpoint')}"
            + (f"; curves in {summary['curves']}" if summary.get("curves") else ""))


def detection_headline(summary: dict) -> str:
    fill = f", batch_fill {summary['batch_fill']}" if summary.get("batch_fill") is not None else ""
    return (f"detected {summary['processed']:,} images ({summary['skipped']:,} already done) in "
            f"{duration(summary['seconds'])}, {summary['images_per_second'] or 0:,} images/s{fill}; "
            f"{summary['rows']:,} rows of {summary['inputs']:,} inputs in {summary['output']}; "
            f"error rows: {_errors(summary['errors'])}")


def evaluation_headline(result: dict) -> str:
    m, report, cap = result["metrics"], result["report"], result.get("max_dets", 100)
    segm = result.get("segm") or {}
    masks = (f"; mask AP {segm['metrics']['AP']:.4f} AP50 {segm['metrics']['AP50']:.4f}" if "metrics" in segm
             else f"; {segm['skipped']}" if "skipped" in segm else "")
    panoptic = result.get("panoptic", {}).get("metrics", {})
    if panoptic:
        masks += "; " + " ".join(f"{k} {'n/a' if panoptic[k] is None else f'{panoptic[k]:.4f}'}"
                                 for k in ("PQ", "PQ_th", "PQ_st"))
    return (f"AP {m['AP']:.4f} AP50 {m['AP50']:.4f} AR{cap} {m[f'AR{cap}']:.4f}{masks} over {report['detections']:,} "
            f"detections (at most {cap} per image, {result.get('backend', 'pycocotools')}); "
            f"{report['missed_images']:,} images without a row, {report['unknown_rows']:,} rows of unknown images")


def reevaluation_headline(summary: dict) -> str:
    scored = ", ".join(f"{r['checkpoint']} AP {r['AP']:.4f}" for r in summary["evaluated"]) or "nothing new"
    flagged = f"; REGRESSIONS: {len(summary['regressions'])}" if summary["regressions"] else "; no regression"
    found = summary.get("found", len(summary["evaluated"]))
    left = [f"{len(summary.get(k, []))} {what}" for k, what in (("already_scored", "already scored"),
                                                              ("copies", "copies of scored weights"))
            if summary.get(k)]
    others = f" ({', '.join(left)})" if left else ""
    return (f"scored {len(summary['evaluated'])} of {found} checkpoint files{others}: {scored}; history holds "
            f"{summary['rows']}{flagged}")


def dry_run_headline(summary: dict) -> str:
    train = summary["train"]
    if "fatal" in train:
        return f"dry run: the training annotations cannot be used: {train['fatal']}"
    problems = sum(len(s.get("problems", [])) for s in (train, summary.get("val") or {}))
    verdict = "the run can start" if summary["ok"] else "the run would fail"
    return (f"dry run: {verdict}; {train['images']:,} training images, {train['boxes']:,} boxes, "
            f"{train['missing_files']} of {train['files_checked']} files checked missing; {problems} problem(s) "
            f"listed; in {summary['seconds']} s")
