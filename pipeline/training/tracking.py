"""Optional MLflow tracking of a training run (`--mlflow URI`; the `mlflow` extra).

The driver opens the MLflow run before training (one per run folder: a resumed run, or a re-run
with the same --storage and --name, continues it) and logs the run's settings as parameters;
rank 0 logs each epoch's scalars, step by step, once the epoch is done, and the best checkpoint
as an artifact when validation AP improves; the driver closes the run. A worker lost between an
epoch's log and its checkpoint trains that epoch again and logs its scalars twice: MLflow cannot
remove them (TensorBoard's files can, see events.py).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from storage import strip_credentials

from ..options import absolute

EXPERIMENT = "detr-ray"
RUN_FOLDER_TAG = "detr_ray.run_folder"  # finds the MLflow run of a run folder again
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
LOCAL_STORE = "mlflow.db"  # in a folder given as --mlflow, beside its artifacts/


def client(tracking_uri: str):
    """An MLflow client, or a ValueError that says how to install it."""
    try:
        from mlflow.tracking import MlflowClient  # optional: only runs that ask for it need MLflow
    except ImportError as e:
        raise ValueError("--mlflow needs MLflow's client, which is not installed: "
                         "pip install 'detr-ray[mlflow]'") from e
    return MlflowClient(tracking_uri=tracking_uri)


def tracking_uri(value: str) -> str:
    """A tracking URI as MLflow takes it. A bare folder (made absolute as the run's other paths
    are, pipeline/options.py) becomes an SQLite store in it: MLflow 3 refuses plain folders."""
    if ":" in value or value == "databricks":
        return value
    return f"sqlite:///{absolute(value, '--mlflow')}/{LOCAL_STORE}"


def local_folder(uri: str) -> str | None:
    """The folder of a store tracking_uri made from a folder, else None."""
    if uri.startswith("sqlite:///") and uri.endswith("/" + LOCAL_STORE):
        return uri[len("sqlite:///"):-len(LOCAL_STORE) - 1]
    return None


def open_run(uri: str, run_folder: str, params: dict[str, Any]) -> str:
    """The id of the MLflow run of this run folder: found again, or created with `params`. A
    store that cannot be reached is a ValueError naming it."""
    from mlflow.exceptions import MlflowException

    folder = local_folder(uri)
    if folder:
        os.makedirs(folder, exist_ok=True)
    try:
        return _open_run(client(uri), run_folder, params, folder and f"file://{folder}/artifacts")
    except MlflowException as e:
        raise ValueError(f"--mlflow {uri}: {str(e).splitlines()[0]}") from e


def _open_run(mlflow, run_folder: str, params: dict[str, Any], artifacts: str | None) -> str:
    from mlflow.entities import Param

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    experiment_id = (experiment.experiment_id if experiment
                     else mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts))
    found = mlflow.search_runs([experiment_id], filter_string=f"tags.`{RUN_FOLDER_TAG}` = '{run_folder}'",
                               max_results=1)
    if found:
        mlflow.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = mlflow.create_run(experiment_id, tags={RUN_FOLDER_TAG: run_folder}, run_name=os.path.basename(run_folder))
    values = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(values), 100):  # MLflow's limit of parameters per batch
        mlflow.log_batch(run.info.run_id, params=values[start:start + 100])
    return run.info.run_id


def run_params(config: Any) -> dict[str, Any]:
    """A TrainConfig's fields as MLflow parameters (nested ones flattened with dots; URIs
    without credentials)."""
    flat: dict[str, Any] = {}
    for name, value in dataclasses.asdict(config).items():
        if isinstance(value, dict):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            flat[name] = strip_credentials(value) if isinstance(value, str) else value
    return flat


def close_run(uri: str, run_id: str, failed: bool) -> None:
    client(uri).set_terminated(run_id, status="FAILED" if failed else "FINISHED")


@dataclasses.dataclass
class MlflowLog:
    """Rank 0's side of an MLflow run."""
    uri: str
    run_id: str

    def log_epoch(self, scalars: list[tuple[int, float, dict[str, float]]]) -> None:
        """(step, wall time, {name: value}) triples, in MLflow's batches."""
        from mlflow.entities import Metric  # optional, as in client()
        metrics = [Metric(name, value, int(wall * 1000), step)
                   for step, wall, values in scalars for name, value in values.items()]
        mlflow = client(self.uri)
        for start in range(0, len(metrics), MAX_BATCH):
            mlflow.log_batch(self.run_id, metrics=metrics[start:start + MAX_BATCH])

    def log_best(self, checkpoint_file: str) -> None:
        client(self.uri).log_artifact(self.run_id, checkpoint_file, artifact_path="best")

