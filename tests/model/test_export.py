"""Export: ONNX and torch.export files verified against the model, run by the detection job,
and bad input ending in one line with no file left behind."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import tests
from model.checkpoint import load_checkpoint, save_checkpoint, weights_id
from model.export import DetectionGraph, ExportError, export_checkpoint, sample_batch, verify
from model.onnx_model import OnnxDetr, read_onnx
from model.segmentation import build_detr
from pipeline import predictions
from pipeline.detection.config import DetectConfig
from pipeline.detection.run import run_detection
from pipeline.masks import decode
from tests import REPO

# In one test process (tests/conftest.py): the export fixture is made once.
pytestmark = [pytest.mark.xdist_group("export"), pytest.mark.export]
SHIPPED = str(tests.SHIPPED_MASKS)  # the mask head too: the graph has pred_masks


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_shapes) -> dict:
    """The shipped detr-tiny with its mask head exported once to each format, class names from
    the shapes set."""
    folder = tmp_path_factory.mktemp("export")
    names = {c["id"]: c["name"] for c in json.loads(Path(tiny_shapes["val_annotations"]).read_text())["categories"]}
    return {suffix: export_checkpoint(SHIPPED, str(folder / f"tiny{suffix}"), class_names=names)
            for suffix in (".onnx", ".pt2")} | {"names": names}


def test_onnx_graph_contract_metadata_and_outputs(exported, tmp_path):
    report = exported[".onnx"]
    model, config = load_checkpoint(SHIPPED)
    assert report["weights"] == weights_id(model.state_dict()) and report["bytes"] > 1e6
    assert set(report["max_abs_difference"]) == {"pred_logits", "pred_boxes", "pred_masks"}
    assert max(report["max_abs_difference"].values()) <= 1e-4  # masks verified like the boxes

    graph = onnx.load(report["output"])
    inputs = {i.name: i.type.tensor_type for i in graph.graph.input}
    assert list(inputs) == ["images", "mask"]
    assert [o.name for o in graph.graph.output] == ["pred_logits", "pred_boxes", "pred_masks"]
    assert inputs["images"].elem_type == onnx.TensorProto.FLOAT and inputs["mask"].elem_type == onnx.TensorProto.BOOL
    dims = [[d.dim_param or d.dim_value for d in t.shape.dim] for t in inputs.values()]
    assert dims == [["batch", 3, "height", "width"], ["batch", "height", "width"]]  # dynamic batch, height, width

    read_config, data, weights, contract = read_onnx(report["output"])
    assert read_config == config and read_config.masks and weights == report["weights"]
    assert contract == model.contract and contract.min_size == 160  # the checkpoint's own input contract
    metadata = {p.key: json.loads(p.value) for p in graph.metadata_props}
    assert metadata["class_names"] == {str(k): v for k, v in exported["names"].items()}
    assert metadata["contract"] == model.contract.to_dict() == report["contract"]
    assert metadata["preprocessing"]["image_mean"] == list(contract.image_mean)
    assert metadata["preprocessing"]["min_size"] == 160 and metadata["num_classes"] == config.num_classes

    # a graph exported before contracts were recorded: its sizes and mean / std from `preprocessing`
    legacy = tmp_path / "legacy.onnx"
    kept = [p for p in graph.metadata_props if p.key != "contract"]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    onnx.save(graph, legacy)
    assert read_onnx(str(legacy))[3] == contract

    # sizes the export's own check did not use: a batch of 5, odd sizes, padding in both directions
    images, mask = sample_batch(5, 136, 200, padded=True, seed=11)
    with torch.no_grad():
        expected = DetectionGraph(model)(images, mask)
    got = OnnxDetr(data)(images, mask)
    for name, want in zip(("pred_logits", "pred_boxes", "pred_masks"), expected, strict=True):
        assert (got[name] - want).abs().max() <= 1e-4, name
    assert got["pred_masks"].shape == (5, config.num_queries, 68, 100)  # small_cnn's stride 2


def test_exported_program_reloads_and_matches(exported):
    report = exported[".pt2"]
    assert report["format"] == "pt2" and max(report["max_abs_difference"].values()) <= 1e-4
    program = torch.export.load(report["output"]).module()
    model, _ = load_checkpoint(SHIPPED)
    images, mask = sample_batch(4, 160, 96, padded=True, seed=3)
    with torch.no_grad():
        for got, want in zip(program(images, mask), DetectionGraph(model)(images, mask)):
            assert (got - want).abs().max() <= 1e-4


def test_verification_rejects_a_graph_that_differs(exported):
    torch.manual_seed(0)
    other = build_detr(load_checkpoint(SHIPPED)[1])  # the same architecture, other weights
    with pytest.raises(ExportError, match=r"pred_logits max \|difference\| .* on a batch of 1 at 224x288"):
        verify(DetectionGraph(other.eval()), exported[".onnx"]["output"])


def test_detection_with_the_onnx_graph_writes_the_same_rows(ray_cluster, exported, tiny_shapes, tmp_path):
    settings = dict(images=tiny_shapes["val_annotations"], image_root=tiny_shapes["val_images"],
                    score_threshold=0.0, actors=(1, 1), batch_size=4)  # sizes: the graph's contract, as the checkpoint's
    runs = {}
    for name, checkpoint in (("torch", SHIPPED), ("onnx", exported[".onnx"]["output"])):
        summary = run_detection(DetectConfig(output=str(tmp_path / name), checkpoint=checkpoint, **settings))
        assert summary["rows"] == summary["inputs"] == 8 and not summary["errors"]
        runs[name] = sorted(predictions.read_predictions(str(tmp_path / name)).to_pylist(), key=lambda r: r["path"])
    assert predictions.run_metadata(str(tmp_path / "onnx"))["runtime"] == "onnxruntime"
    for a, b in zip(runs["torch"], runs["onnx"]):
        assert a["path"] == b["path"] and a["model"] == b["model"] == exported[".onnx"]["weights"]
        assert a["labels"] == b["labels"] and len(a["scores"]) > 0
        assert np.abs(np.array(a["boxes"]) - np.array(b["boxes"])).max() <= 0.05
        assert np.abs(np.array(a["scores"]) - np.array(b["scores"])).max() <= 1e-4
        masks = [decode([{"size": [r["height"], r["width"]], "counts": c} for c in r["masks"]], r["width"], r["height"])
                 for r in (a, b)]  # the graph's masks: all queries'; torch's: the kept ones' alone
        assert masks[0].shape == masks[1].shape and (masks[0] == masks[1]).mean() >= 0.999


def test_bad_export_requests_end_in_one_line_and_leave_no_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    (tmp_path / "a-file").write_text("")
    cases = {
        "unknown suffix": (SHIPPED, tmp_path / "model.tflite", "unknown format .tflite; the output must end in .onnx or .pt2, or be a folder"),
        "unloadable checkpoint": (str(garbage), tmp_path / "model.onnx", "garbage.pt"),
        "unwritable output": (SHIPPED, tmp_path / "a-file" / "model.onnx", "is not a writable folder"),
    }
    for case, (checkpoint, output, said) in cases.items():
        proc = subprocess.run([sys.executable, "jobs/export.py", "--checkpoint", checkpoint, "--output", str(output)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("export: ") and said in lines[0], case
        assert not output.exists(), case
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "garbage.pt"]  # no temporary left either

    # without the export extra: a message that says how to install it
    blocked = "import sys, runpy; sys.modules['onnxscript'] = None; sys.argv[1:] = "
    proc = subprocess.run([sys.executable, "-c", blocked + repr(["--checkpoint", SHIPPED, "--output",
                                                                   str(tmp_path / "m.onnx")])
                           + "; runpy.run_path('jobs/export.py', run_name='__main__')"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "pip install -e '.[export]'" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "m.onnx").exists()


def test_a_failed_verification_writes_nothing(tmp_path, monkeypatch):
    import model.export as export_module

    def differs(graph, path):
        raise ExportError("the exported model differs from the PyTorch model: (made to fail)")

    monkeypatch.setattr(export_module, "verify", differs)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(str(tmp_path / "ck.pt"), build_detr("detr-tiny", num_classes=4))
    with pytest.raises(ExportError, match="differs"):
        export_checkpoint(checkpoint, str(tmp_path / "out" / "model.pt2"))
    assert not (tmp_path / "out").exists()
