"""The sweep's outcome in MLflow: each family's test figures, and the winner as a registered model.

The winner's model is logged from the winner's own trial run (its hyperparameters as the model's params), and
registered as version N of `<space>-<dataset>` with a description, tags (space, data set, val/test top-1, the
sweep's parent run and the trial) and the alias `champion`. Registering is idempotent: a version already made
from that trial's run for this sweep is found again (after a crash, a --resume), never made twice.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from tuner.folder import FINAL_FILE
from tuner.tracking import trial_run_id

ALIAS = "champion"


def log_finals(client, parent_run_id: str, finals: list, sweep_dir: Path) -> None:
    """Each family's test figures on the parent run (metric suffix: the family) and on the tested trial's run,
    with its confusion matrix and per-class accuracy as a table artifact; final.parquet on the parent run."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    for f in finals:
        metrics = [Metric(f"{k}.{f.family}", v, stamp, 0) for k, v in f.test.metrics().items()]
        if f.seeds > 1:
            metrics += [Metric(f"{k}.{f.family}", v, stamp, 0) for k, v in
                        (("val_top1_mean", f.val_top1_mean), ("val_top1_std", f.val_top1_std),
                         ("test_top1_mean", f.test_top1_mean), ("test_top1_std", f.test_top1_std))]
        client.log_batch(parent_run_id, metrics=metrics)
        client.log_artifact(parent_run_id, str(Path(sweep_dir) / f.confusion_png), artifact_path="test")
        run_id = trial_run_id(client, parent_run_id, f.trial_id)
        if run_id:
            client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in f.test.metrics().items()])
            client.set_tag(run_id, "sweep.tested", "true")
            client.log_artifact(run_id, str(Path(sweep_dir) / f.confusion_png), artifact_path="test")
            client.log_table(run_id, data={"class": [str(i) for i in range(len(f.test.per_class_top1))],
                                           "test_top1": list(f.test.per_class_top1)},
                             artifact_file="test/per_class_top1.json")
    final_file = Path(sweep_dir) / FINAL_FILE
    if final_file.exists():
        client.log_artifact(parent_run_id, str(final_file), artifact_path="test")


def register_winner(tracking_uri: str, parent_run_id: str, winner: dict[str, Any], searched: list[str], model,
                    test: dict[str, float], *, name: str, space: str, dataset: str, input_example,
                    code_paths: list[str] = ()) -> str:
    """Log the winner's model from its own run and register it as `name` (once); returns models:/NAME/VERSION."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    trial_id = winner["trial_id"]
    for key, value in test.items():
        client.log_metric(parent_run_id, key, value)
    client.set_tag(parent_run_id, "winner_trial_id", trial_id)
    run_id = trial_run_id(client, parent_run_id, trial_id) or parent_run_id
    client.set_tag(run_id, "sweep.winner", "true")
    for key, value in test.items():
        client.log_metric(run_id, key, value)
    version = existing_version(client, name, parent_run_id, trial_id)
    if version is None:
        tags = {"space": space, "dataset": dataset, "sweep.parent_run_id": parent_run_id, "trial_id": trial_id,
                "model": str(winner.get("model")), "val_top1": f"{winner['best_val_top1']:.2f}",
                "test_top1": f"{test['test_top1']:.2f}", "outputs": "probabilities"}
        description = (f"The winner of sweep run {parent_run_id} (space {space} on {dataset}): trial {trial_id}, "
                       f"{winner.get('model')}, chosen on validation (top-1 {winner['best_val_top1']:.2f}) and "
                       f"tested once (top-1 {test['test_top1']:.2f}). Takes float images in [0, 1], (N, 3, H, W), "
                       f"and returns class probabilities.")
        info = _log_model(tracking_uri, run_id, model, input_example,
                          params={k: winner.get(k) for k in ["model", *searched] if k in winner},
                          code_paths=list(code_paths))
        if not _registered(client, name):
            client.create_registered_model(name, tags={"space": space, "dataset": dataset},
                                           description=f"Winners of {space} sweeps on {dataset}")
        version = client.create_model_version(name, source=info.model_uri, run_id=run_id, tags=tags,
                                              description=description, model_id=info.model_id).version
    client.set_registered_model_alias(name, ALIAS, str(version))
    return f"models:/{name}/{version}"


def existing_version(client, name: str, parent_run_id: str, trial_id: str) -> str | None:
    """The version registered for this sweep's winner already (a resumed or re-run publish), if any."""
    if not _registered(client, name):
        return None
    for version in client.search_model_versions(f"name='{name}'"):
        if version.tags.get("sweep.parent_run_id") == parent_run_id and version.tags.get("trial_id") == trial_id:
            return version.version
    return None


def _registered(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def _log_model(tracking_uri: str, run_id: str, model, input_example, params: dict[str, Any],
               code_paths: list[str]):
    """The model, returning probabilities, logged into the winner's run (MLflow 3's logged model). MLflow's own
    format is a torch.export graph, which loads with no code of ours or the user's; a model torch.export cannot
    trace (a user's model, say) is pickled instead, with the user's code beside it (code_paths)."""
    import mlflow
    import timm
    import torch

    mlflow.set_tracking_uri(tracking_uri)
    served = copy.deepcopy(model).eval()
    served.probabilities = True  # softmax over the classes: what a served classifier is asked for
    # a torch.export graph is fixed to inputs shaped like input_example (the signature is inferred from it) and
    # keeps no attributes, so what tuner.predict needs travels as metadata
    metadata = {"input_size": int(input_example.shape[-1]), "outputs": "probabilities",
                "classes": [str(c) for c in getattr(model, "classes", [])]}
    common = dict(name="model", input_example=input_example, metadata=metadata,
                  params={k: json.dumps(v) if not isinstance(v, (str, int, float, bool)) else v
                          for k, v in params.items()},
                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"])
    with mlflow.start_run(run_id=run_id):
        try:
            return mlflow.pytorch.log_model(served, **common)
        except Exception:  # noqa: BLE001 - torch.export could not trace the model: pickle it, with its code
            return mlflow.pytorch.log_model(served, serialization_format="pickle", code_paths=code_paths or None,
                                            **common)
