"""Whether a table's labels are the annotations' category ids: a model trained elsewhere (a
transformers RT-DETR of COCO numbers its 80 classes 0-79, COCO's ids run 1-90) would otherwise be
scored against the wrong categories without a word."""
from __future__ import annotations

import re
from typing import Any

GENERIC = re.compile(r"LABEL_\d+")  # transformers' names when a model was given none


def model_label_names(run: dict[str, Any]) -> dict[int, str]:
    """The class names a table's model gave its labels (a family folder's id2label, recorded with
    the predictions); empty where it gave none, or only transformers' LABEL_<n>."""
    id2label = ((run.get("config") or {}).get("hf") or {}).get("id2label") or {}
    return {int(i): str(n) for i, n in id2label.items() if not GENERIC.fullmatch(str(n))}


def check_label_names(run: dict[str, Any], categories: list[dict[str, Any]]) -> None:
    """Refuse, in one line, a table whose model names its labels and whose names disagree with the
    annotations' category names for the same ids."""
    names = model_label_names(run)
    categories_by_id = {int(c["id"]): str(c.get("name", "")) for c in categories}
    shared = [i for i in names if i in categories_by_id]
    differ = [i for i in shared if names[i].lower() != categories_by_id[i].lower()]
    if names and len(differ) > len(shared) // 2:
        example = ", ".join(f"{i}: {names[i]!r} / {categories_by_id[i]!r}" for i in differ[:3])
        raise ValueError(f"the model's labels are not these annotations' category ids ({len(differ)} of {len(shared)} "
                         f"shared ids name other classes, e.g. {example}); fine-tune it on this dataset "
                         "(jobs/train.py --init), or score against annotations numbered as the model is")
