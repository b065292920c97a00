"""Each option defined once (pipeline/options.py): the flags, a --config file, --print-config and
the checks come from the config dataclasses, and the jobs refuse a bad value in one line before
anything starts."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest
import yaml

from pipeline import options
from pipeline.detection.config import DetectConfig
from pipeline.evaluation.config import EvaluateConfig, ReevaluateConfig
from pipeline.training.config import TrainConfig
from tests import REPO

TRAIN = ["--annotations", "a.json", "--images", "img", "--storage", "runs", "--name", "r"]


def parse(config: type, argv: list[str]):
    return options.parse(options.parser(config, None, prog="job"), config, argv)


def refusal(capsys, config: type, argv: list[str]) -> str:
    """The one line a job prints when it refuses its options."""
    with pytest.raises(SystemExit) as stop:
        parse(config, argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_flags_file_and_defaults_in_that_order(tmp_path):
    made, _ = parse(TrainConfig, TRAIN)
    assert made == TrainConfig("a.json", "img", "runs", "r")
    (tmp_path / "run.yaml").write_text("epochs: 3\nbatch-size: 2\ngpu: true\nmodel_overrides: {num_queries: 10}\n"
                                       "lr: '1e-3'\n")
    made, _ = parse(TrainConfig, [*TRAIN, "--config", str(tmp_path / "run.yaml"), "--epochs", "5"])
    assert (made.epochs, made.batch_size, made.gpu, made.lr) == (5, 2, True, 1e-3)  # the flag wins
    assert made.model_overrides == {"num_queries": 10}  # an option only a file gives
    # the required options may come from the file alone
    (tmp_path / "all.yaml").write_text("annotations: a.json\nimages: img\nstorage: runs\nname: r\nkeep: 0\n")
    made, _ = parse(TrainConfig, ["--config", str(tmp_path / "all.yaml")])
    assert made.keep is None  # --keep 0: every checkpoint kept
    # a library call's tuples written as YAML lists
    text = options.to_yaml(TrainConfig("a.json", "img", "runs", "r", model_overrides={"stuff_classes": (91, 92)}))
    assert yaml.safe_load(text)["model_overrides"] == {"stuff_classes": [91, 92]}


@pytest.mark.parametrize("config, argv", [
    (TrainConfig, [*TRAIN, "--backbone-norm", "group_norm", "--keep", "2"]),
    (TrainConfig, [*TRAIN, "--config", "overrides.yaml"]),  # model_overrides holding a tuple
    (DetectConfig, ["--images", "i", "--output", "o", "--checkpoint", "c.pt", "--actors", "1,3", "--no-retry-errors"]),
    (ReevaluateConfig, ["--checkpoints", "c", "--images", "i", "--annotations", "a", "--history", "h",
                        "--max-dets", "300", "--every", "6h", "--fail-on-regression", "2"]),
    (EvaluateConfig, ["--predictions", "p", "--annotations", "a", "--backend", "pycocotools"]),
], ids=["train", "train-overrides", "detect", "reevaluate", "evaluate"])
def test_print_config_replays_the_same_run(config, argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "overrides.yaml").write_text("model_overrides: {num_queries: 10, stuff_classes: [91, 92]}\n")
    made, _ = parse(config, argv)
    with pytest.raises(SystemExit) as stop:
        parse(config, [*argv, "--print-config"])
    assert stop.value.code == 0
    (tmp_path / "run.yaml").write_text(capsys.readouterr().out)
    replayed, _ = parse(config, ["--config", str(tmp_path / "run.yaml")])
    assert replayed == made


def test_a_bad_option_is_one_line_naming_it(tmp_path, capsys):
    assert refusal(capsys, TrainConfig, [*TRAIN, "--batch-size", "0"]) == "job: --batch-size must be at least 1, not 0"
    assert refusal(capsys, TrainConfig, ["--images", "i"]) == (
        "job: missing --annotations, --storage, --name (give them as flags or in --config)")
    assert refusal(capsys, EvaluateConfig, ["--annotations", "a"]) == (
        "job: missing --predictions (give it as a flag or in --config)")
    assert "must be above 10" in refusal(capsys, EvaluateConfig, ["--predictions", "p", "--annotations", "a",
                                                                   "--max-dets", "5"])
    (tmp_path / "typo.yaml").write_text("bach_size: 3\n")
    assert refusal(capsys, TrainConfig, [*TRAIN, "--config", str(tmp_path / "typo.yaml")]).endswith(
        "'bach_size' is not an option of this job (did you mean 'batch_size'?)")
    (tmp_path / "type.yaml").write_text("epochs: 2.5\n")
    assert refusal(capsys, TrainConfig, [*TRAIN, "--config", str(tmp_path / "type.yaml")]).endswith(
        "epochs takes int, not 2.5")
    (tmp_path / "text.yaml").write_text("epochs: one\n")
    assert refusal(capsys, TrainConfig, [*TRAIN, "--config", str(tmp_path / "text.yaml")]).endswith(
        "epochs takes int, not 'one'")
    (tmp_path / "broken.yaml").write_text("epochs: [\n")
    assert refusal(capsys, TrainConfig, [*TRAIN, "--config", str(tmp_path / "broken.yaml")]).startswith(
        f"job: --config {tmp_path / 'broken.yaml'}: while parsing")  # YAML's own words, on one line
    # a flag of the job's command line, not of the run: said as such
    with_ray = options.parser(TrainConfig, None, prog="job")
    with_ray.add_argument("--ray")
    (tmp_path / "ray.yaml").write_text("ray: head\n")
    with pytest.raises(SystemExit):
        options.parse(with_ray, TrainConfig, [*TRAIN, "--config", str(tmp_path / "ray.yaml")])
    assert capsys.readouterr().err.strip().endswith("'ray' is --ray, which the command line gives, not a --config file")
    assert refusal(capsys, TrainConfig, [*TRAIN, "--config", str(tmp_path / "none.yaml")]).startswith(
        f"job: --config {tmp_path / 'none.yaml'}: no such file")
    assert refusal(capsys, DetectConfig, ["--actors", "1,x"]) == (
        "job: argument --actors: '1,x' is not MIN,MAX (two whole numbers) (--help lists the options)")


def test_options_out_of_range_are_refused_by_the_config_itself():
    """A library call refuses what the job refuses: the checks are the options'."""
    for config, values, says in (
            (DetectConfig, {"batch_size": 0}, "--batch-size must be at least 1, not 0"),
            (DetectConfig, {"window": -3}, "--window must be at least 1"),
            (DetectConfig, {"cpus_per_actor": 0.0}, "--cpus-per-actor must be above 0"),
            (DetectConfig, {"score_threshold": 5.0}, "--score-threshold must be between 0 and 1"),
            (DetectConfig, {"actors": (3, 2)}, "--actors takes MIN,MAX with 1 <= MIN <= MAX"),
            (ReevaluateConfig, {"actors": (0, 1)}, "--actors takes MIN,MAX"),
            (ReevaluateConfig, {"max_dets": 10}, "--max-dets must be above 10"),
            (TrainConfig, {"workers": 0}, "--workers must be at least 1"),
            (TrainConfig, {"cpus_per_worker": 0.0}, "--cpus-per-worker must be above 0"),
            (TrainConfig, {"augment_scale": -1.0}, "--augment-scale must be above 0")):
        required = {f.name: "x" for f in fields(config) if options.required(f)}
        with pytest.raises(ValueError, match=f"^{says}"):
            config(**{**required, **values})


def test_a_scheduled_reevaluation_is_a_file_too(tmp_path):
    """--every and --fail-on-regression are options of the run: cron can replay a file."""
    (tmp_path / "nightly.yaml").write_text("checkpoints: c\nimages: i\nannotations: a\nhistory: h\nevery: 6h\n"
                                           "fail_on_regression: 2\n")
    made, _ = parse(ReevaluateConfig, ["--config", str(tmp_path / "nightly.yaml")])
    assert (made.every, made.fail_on_regression, made.regression_pct) == (6 * 3600, 2.0, 2.0)


def test_options_shared_by_jobs_are_one_definition():
    """Re-evaluation's detection and scoring options are detect's and evaluate's own."""
    def field(config: type, name: str):
        return next(f for f in fields(config) if f.name == name)

    for name in ("score_threshold", "batch_size", "actors"):
        assert field(ReevaluateConfig, name).metadata == field(DetectConfig, name).metadata
        assert field(ReevaluateConfig, name).default == field(DetectConfig, name).default
    for name in ("backend", "max_dets", "panoptic_folder"):
        assert field(ReevaluateConfig, name).metadata == field(EvaluateConfig, name).metadata


@pytest.mark.parametrize("job, argv", [
    ("train", [*TRAIN, "--batch-size", "0"]),
    ("detect", ["--images", "i", "--output", "o", "--checkpoint", "c.pt", "--actors", "4,2"]),
    ("export", ["--checkpoint", "c.pt", "--output", "m.onnx", "--opset", "17"]),
    ("make_synthetic", ["--out", "o", "--min-side", "200", "--max-side", "100"]),
])
def test_the_jobs_refuse_before_ray_starts(job, argv, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        {"train": "train: --batch-size must be at least 1, not 0",
         "detect": "detect: --actors takes MIN,MAX with 1 <= MIN <= MAX, not 4,2",
         "export": "export: --opset must be at least 18, not 17",
         "make_synthetic": "make_synthetic: --max-side 100 is below --min-side 200"}[job]]
    assert list(tmp_path.iterdir()) == []  # nothing written
