"""RUN/curves.png: a run's losses and validation AP against epochs, redrawn after each epoch
for whoever has no TensorBoard at hand (a file browser, a scheduler's log viewer)."""
from __future__ import annotations

import io
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

LOSSES = ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")  # those the run has
SCORES = ("AP", "AP50", "AP75", "segm_AP")  # those the run has (segm_AP: masks)


def draw_curves(history: list[dict[str, Any]], title: str) -> bytes:
    """A PNG of the epochs' mean losses (log scale: a diverging term stands out) and, for the
    epochs that validated, AP, AP50 and AP75."""
    figure = Figure(figsize=(10, 4))
    losses, scores = figure.subplots(1, 2)
    epochs = [m["epoch"] for m in history]
    for name in (n for n in LOSSES if any(n in m for m in history)):
        losses.plot(epochs, [m.get(name, float("nan")) for m in history], marker=".", label=name)
    losses.set_yscale("log")
    losses.set_title("training loss (epoch mean)")
    validated = [m for m in history if "AP" in m]
    for name in (n for n in SCORES if any(n in m for m in validated)):
        scores.plot([m["epoch"] for m in validated], [m[name] for m in validated], marker="o", label=name)
    scores.set_ylim(0, 1)
    scores.set_title("validation" if validated else "validation (none yet)")
    for axes in (losses, scores):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are counted, not measured
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:  # (an epoch without validation has no scores to name)
            axes.legend(fontsize="small")
    figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()
