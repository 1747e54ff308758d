"""senolab.tracking against a real MLflow server and the embedded SQLite store (no mocks).

A module-scoped fixture starts `mlflow server` (the venv's executable) on 127.0.0.1 with
a free port and a temporary SQLite backend; one test stops it mid-study and starts it
again on the same backend. Start-up takes several seconds, so one server serves the
whole module. Each command is a parent run; each unit (here a method at two sites) a
child with its epochs (history.csv, written live and replayed identically).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from senolab.cli import main as senolab_main
from senolab.evaluation import evaluate
from senolab.evaluation.plots import plot_reliability, plot_roc_by_site
from senolab.tracking import RunDir, TrackingUnavailable, embedded_uri, flatten_params, table_fingerprint, unit_metrics
from senolab.tracking.mirror import COMPLETE_TAG, KEY_TAG
from senolab.tracking.records import metric_values

mlflow = pytest.importorskip("mlflow")
MLFLOW_BIN = Path(sys.executable).parent / "mlflow"
COHORTS = [("busi", "busi", "LOGIQ E9"), ("busbra", "busbra", "Toshiba Aplio")]
METHODS = {"erm": False, "dann": True}  # method -> transductive
CONFIG = {"data": {"cohorts": ["busi", "busbra"], "image_size": 64}, "model": {"encoder": "unet"}, "seed": 0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` as a subprocess in its own session, so stopping ends all its workers."""

    def __init__(self, root: Path):
        self.root = root
        self.process: subprocess.Popen | None = None
        self.uri = ""

    def start(self, timeout: float = 180.0) -> None:
        port = free_port()
        self.uri = f"http://127.0.0.1:{port}"
        log = open(self.root / "server.log", "ab")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [str(MLFLOW_BIN), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not MLFLOW_BIN.exists():
        pytest.skip(f"no mlflow executable next to {sys.executable}")
    instance = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    instance.start()
    yield instance
    instance.stop()


def study_predictions(method: str, seed: int) -> pd.DataFrame:
    """Per-case predictions of a fairly good binary classifier at two cohorts."""
    rng = np.random.default_rng(seed)
    rows = []
    for cohort, site, scanner in COHORTS:
        for i in range(24):
            label = i % 2
            p = float(np.clip(0.5 + (0.25 if label else -0.25) + rng.normal(0, 0.25), 0.01, 0.99))
            rows.append({"case_id": f"{site}_{i}", "patient_id": f"{site}_p{i}", "site": site, "cohort": cohort,
                         "scanner": scanner, "method": method, "label": label,
                         "prob_benign": 1 - p, "prob_malignant": p})
    return pd.DataFrame(rows)


EPOCHS = 3


def train_unit(run: RunDir, method: str) -> tuple[dict, list[dict]]:
    """What a runner does per unit: train (epochs live through the callback), evaluate,
    draw figures, log. Returns the unit's aggregates and its history rows."""
    folder = run.root / "units" / method
    (folder / "figures").mkdir(parents=True)
    live = run.live(method, tags={"method": method})
    live.on_fit_start(None)
    rows = []
    for epoch in range(EPOCHS):
        rows.append({"epoch": epoch, "loss": 1.0 / (epoch + 1), "val_auc": 0.6 + 0.1 * epoch,
                     "time_ms": int(time.time() * 1000) + epoch})
        pd.DataFrame(rows).to_csv(folder / "history.csv", index=False)
        live.on_epoch_end(None, rows[-1])
    predictions = study_predictions(method, seed=len(method))
    predictions.to_parquet(folder / "predictions.parquet")
    aggregates = evaluate(predictions, n_resamples=40, progress=False).aggregates[method]
    (folder / "summary.json").write_text(json.dumps({"method": method}))
    figures = [plot_roc_by_site(predictions, folder / "figures" / "roc.png"),
               plot_reliability(predictions, folder / "figures" / "reliability.png")]
    run.log_unit(method, metrics={**unit_metrics(aggregates, None), "site_classifier_acc": 0.75},
                 tags={"method": method, "transductive": str(METHODS[method]).lower()}, params={"weight": 0.1},
                 files=[folder / "predictions.parquet", folder / "summary.json", folder / "figures"],
                 history=folder / "history.csv", start_ms=live.start_ms)
    return aggregates, rows


@pytest.fixture
def tracking_uri():
    """mlflow's global tracking URI, restored after the test."""
    before = mlflow.get_tracking_uri()
    yield mlflow.set_tracking_uri
    mlflow.set_tracking_uri(before)


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    paths = set()
    for info in client.list_artifacts(run_id, folder):
        paths |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return paths


def test_study_fans_out_to_a_real_server(server, tmp_path, tracking_uri):
    study = f"study-{uuid.uuid4().hex[:6]}"
    fingerprint = table_fingerprint(study_predictions("erm", 0)[["case_id", "site"]])
    run = RunDir.create(tmp_path / "run", study, CONFIG, tracking_uri=server.uri, data_fingerprint=fingerprint)
    results = {method: train_unit(run, method) for method in METHODS}
    assert "at " + server.uri in run.finish(metrics={"erm.worst_target_auc": 0.7}, echo=False)

    tracking_uri(server.uri)
    client = mlflow.tracking.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(study)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the training view
    runs = mlflow.search_runs(experiment_names=[study])
    assert len(runs) == 1 + len(METHODS)
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert parent["metrics.erm.worst_target_auc"] == pytest.approx(0.7) and parent["params.model.encoder"] == "unet"
    units = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]].set_index("tags.method")
    for method, (aggregates, rows) in results.items():
        unit = units.loc[method]
        pooled = aggregates["all"]["auc"]
        assert unit["metrics.auc"] == pytest.approx(pooled["value"])
        assert (unit["metrics.auc_ci_lo"], unit["metrics.auc_ci_hi"]) == pytest.approx(tuple(pooled["ci"]))
        assert unit["metrics.busi.auc"] == pytest.approx(aggregates["busi"]["auc"]["value"])
        assert unit["metrics.site_classifier_acc"] == pytest.approx(0.75)  # headline figures are metrics
        assert unit["tags.transductive"] == str(METHODS[method]).lower()
        assert unit["tags.data_fingerprint"] == fingerprint and len(unit["tags.git_commit"]) >= 7
        assert unit["params.model.encoder"] == "unet" and unit["params.weight"] == "0.1"
        history = client.get_metric_history(unit["run_id"], "loss")
        assert [(p.step, p.value, p.timestamp) for p in history] == [
            (r["epoch"], r["loss"], r["time_ms"]) for r in rows]  # written live, once
        assert unit["start_time"] < unit["end_time"]
        assert artifact_paths(client, unit["run_id"]) == {
            "predictions.parquet", "summary.json", "figures/roc.png", "figures/reliability.png"}
    assert (runs["tags." + COMPLETE_TAG] == "true").all() and runs["tags." + KEY_TAG].is_unique


def test_server_down_mid_study_then_sync_uploads_once(server, tmp_path, capsys):
    study = f"outage-{uuid.uuid4().hex[:6]}"
    root = tmp_path / "run"
    run = RunDir.create(root, study, CONFIG, tracking_uri=server.uri)
    train_unit(run, "erm")  # reaches the server
    server.stop()
    try:
        with pytest.warns(TrackingUnavailable, match="senolab sync"):
            train_unit(run, "dann")  # the server is gone: recorded locally only
        message = run.finish(echo=False)
    finally:
        server.start()  # the same backend store, on a new port
    assert "senolab sync" in message
    manifest = json.loads((root / "runs.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["tracking"]["state"] == "failed" and manifest["tracking"]["error"]
    assert [r["name"] for r in manifest["runs"]] == ["erm", "dann"]

    client = mlflow.tracking.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(study).experiment_id
    assert len(client.search_runs([experiment])) == 2  # the parent (open) and erm, before the outage

    capsys.readouterr()
    assert senolab_main(["sync", str(root), "--tracking-uri", server.uri]) == 0
    assert "1 runs created, 1 completed, 1 already in MLflow" in capsys.readouterr().out
    runs = client.search_runs([experiment])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    dann = next(r for r in runs if r.data.tags.get("method") == "dann")
    assert len(client.get_metric_history(dann.info.run_id, "loss")) == EPOCHS  # replayed from history.csv
    assert senolab_main(["sync", str(root), "--tracking-uri", server.uri]) == 0
    assert "0 runs created, 0 completed, 3 already in MLflow" in capsys.readouterr().out
    assert RunDir.open(root).tracking["state"] == "ok"


def test_embedded_store_needs_no_server(tmp_path, capsys):
    root = tmp_path / "run"
    run = RunDir.create(root, "embedded", CONFIG)
    train_unit(run, "erm")
    run.finish()
    printed = capsys.readouterr().out
    assert f"mlflow ui --backend-store-uri sqlite:///{root.resolve()}/mlflow.db" in printed
    client = mlflow.tracking.MlflowClient(embedded_uri(root))
    experiment = client.get_experiment_by_name("embedded")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags.get("method", "-") for r in runs) == ["-", "erm"]
    for r in runs:  # artifacts live inside the run directory
        assert Path(r.info.artifact_uri.removeprefix("file://")).is_relative_to(root.resolve())
    assert run.sync(progress=False).skipped == 2


def test_interrupted_upload_is_completed_without_duplicates(tmp_path):
    root = tmp_path / "run"
    run = RunDir.create(root, "partial", CONFIG, track=False)
    train_unit(run, "erm")
    train_unit(run, "dann")
    assert "MLflow upload was off" in run.finish(echo=False)
    # Lose the second unit's predictions: the upload stops after creating the parent and
    # the first unit and starting the second one.
    lost = root / run.runs()[1].artifacts[0].path
    kept = lost.read_bytes()
    lost.unlink()
    with pytest.raises(FileNotFoundError, match="predictions.parquet"):
        run.sync(progress=False)
    assert RunDir.open(root).tracking["state"] == "failed"
    lost.write_bytes(kept)
    counts = run.sync(progress=False)
    assert (counts.created, counts.resumed, counts.skipped) == (0, 1, 2)
    client = mlflow.tracking.MlflowClient(embedded_uri(root))
    runs = client.search_runs([client.get_experiment_by_name("partial").experiment_id])
    assert len(runs) == 3 and all(r.data.tags[COMPLETE_TAG] == "true" for r in runs)
    resumed = next(r for r in runs if r.data.tags.get("method") == "dann")
    # Its metrics were written before the failure and again on resume: still one point each.
    assert len(client.get_metric_history(resumed.info.run_id, "auc")) == 1
    assert len(client.get_metric_history(resumed.info.run_id, "loss")) == EPOCHS


def test_records_flatten_config_and_metrics():
    assert flatten_params({"model": {"encoder": "unet", "opts": {"depth": 4}}, "cohorts": ["a", "b"], "x": None}) == {
        "model.encoder": "unet", "model.opts.depth": "4", "cohorts": '["a", "b"]', "x": "null"}
    entries = {"auc": {"value": 0.8, "ci": [0.7, 0.9], "n": 40}, "hd95_mm": {"value": None, "ci": [None, None]}}
    assert metric_values(entries) == {"auc": 0.8, "auc_ci_lo": 0.7, "auc_ci_hi": 0.9}


def test_fingerprint_ignores_order_and_sees_content():
    table = pd.DataFrame({"case_id": ["a", "b"], "label": ["benign", "malignant"]})
    shuffled = table.iloc[::-1][["label", "case_id"]]
    assert table_fingerprint(table) == table_fingerprint(shuffled)
    changed = table.assign(label=["benign", "benign"])
    assert table_fingerprint(table) != table_fingerprint(changed)


def test_run_dir_refuses_bad_use(tmp_path, capsys):
    run = RunDir.create(tmp_path / "run", "bad", CONFIG, track=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        RunDir.create(tmp_path / "run", "bad", CONFIG)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"png")
    with pytest.raises(ValueError, match="outside the run directory"):
        run.log_unit("erm", metrics={"auc": 0.7}, files=[outside])
    run.log_unit("erm", metrics={"auc": 0.7})
    with pytest.raises(ValueError, match="already recorded"):
        run.log_unit("erm", metrics={"auc": 0.7})
    assert senolab_main(["sync", str(tmp_path / "nothing")]) == 2
    assert "not a senolab run directory" in capsys.readouterr().err


def test_failed_sync_elsewhere_keeps_the_folder_default(tmp_path, capsys):
    """`senolab sync --tracking-uri X` that fails leaves the folder's own store as it was
    (it used to make X the default and flag the folder as failed)."""
    root = tmp_path / "run"
    run = RunDir.create(root, "kept", CONFIG)
    train_unit(run, "erm")
    run.finish(echo=False)
    dead = f"http://127.0.0.1:{free_port()}"
    assert senolab_main(["sync", str(root), "--tracking-uri", dead]) == 1
    assert "upload to MLflow failed" in capsys.readouterr().err
    tracking = RunDir.open(root).tracking
    assert (tracking["uri"], tracking["state"], tracking["error"]) == (None, "ok", None)


def test_relative_run_folder_and_tracking_uri(tmp_path, monkeypatch):
    """A run folder and a SQLite store given relative to the working folder, as a user types
    them, keep meaning the same places after the working folder changes."""
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs/../runs/rel", "relative", CONFIG, tracking_uri="sqlite:///store.db")
    train_unit(run, "erm")
    monkeypatch.chdir(tmp_path / "runs")
    run.finish(echo=False)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("relative").experiment_id])) == 2
    assert RunDir.open(tmp_path / "runs" / "rel").tracking["uri"] == f"sqlite:///{tmp_path / 'store.db'}"


# ------------------------------------------------------------- the commands against a real server
TINY_TRAIN = {
    "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": 16, "image_size": 64},
             "image_size": 32},
    "model": {"heads": {"classification": True, "segmentation": True, "bbox": True}},
    # five epochs: a window of several polls in which the run is RUNNING with epochs logged
    "train": {"epochs": 5, "batch_size": 8, "early_stopping": {"patience": 5}},
    "evaluation": {"bootstrap": 10},
}


class RunWatcher:
    """Polls the server from another thread while a command trains: what MLflow showed."""

    def __init__(self, uri: str, experiment: str):
        import threading

        self.client, self.experiment = mlflow.tracking.MlflowClient(uri), experiment
        self.seen: list[tuple[str, int]] = []  # (status, epochs logged) of the unit's run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)

    def _poll(self):
        while not self._stop.wait(0.2):
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                continue
            for run in self.client.search_runs([found.experiment_id], "tags.method = 'erm'"):
                self.seen.append((run.info.status, len(self.client.get_metric_history(run.info.run_id, "loss"))))


def synthetic_pngs(n: int) -> list[str]:
    """A few synthetic ultrasound images as base64 PNGs, as a served model receives them."""
    import base64
    import io

    from PIL import Image

    from senolab.cohorts.synthetic import SyntheticConfig, generate

    cohort = generate(SyntheticConfig(images_per_site=4, image_size=64))
    pngs = []
    for case_id in cohort.table["case_id"][:n]:
        buffer = io.BytesIO()
        Image.fromarray(cohort.arrays[case_id][0]).save(buffer, format="PNG")
        pngs.append(base64.b64encode(buffer.getvalue()).decode())
    return pngs


def test_train_is_tracked_live_and_its_model_loads_with_pyfunc(server, tmp_path, tracking_uri, one_torch_thread):
    from senolab.engine.config import parse_config
    from senolab.runners.experiment import train_and_evaluate

    name = f"train-{uuid.uuid4().hex[:6]}"
    began = time.time()
    with RunWatcher(server.uri, name) as watcher:
        train_and_evaluate(parse_config({**TINY_TRAIN, "name": name}), tmp_path / "run", progress=False,
                           tracking_uri=server.uri)
    wall = time.time() - began
    assert any(status == "RUNNING" and epochs >= 1 for status, epochs in watcher.seen), watcher.seen[-5:]

    client = mlflow.tracking.MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    unit = next(r for r in runs if r.data.tags.get("method") == "erm")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert unit.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert unit.data.tags["worst_site.auc"] in {"site_a", "site_b"}  # which site, next to the worst_site.* metrics
    assert [p.step for p in client.get_metric_history(unit.info.run_id, "loss")] == [0, 1, 2, 3, 4]
    inputs = {i.tags[0].value: i.dataset for i in client.get_run(unit.info.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}  # MLflow's Dataset column: each part, its role
    assert all(d.name.startswith("synthetic (") and len(d.digest) == 16 for d in inputs.values())
    for run in (unit, parent):  # real durations, within the command's wall time
        assert 0 < (run.info.end_time - run.info.start_time) / 1000 <= wall + 1
    tracking_uri(server.uri)
    model = mlflow.pyfunc.load_model(f"runs:/{unit.info.run_id}/model")
    # metadata fields may be given by name, numbers as numbers; absent ones count as missing
    out = model.predict(pd.DataFrame({"image": synthetic_pngs(3), "age": [45.0, None, 61.0]}))
    assert len(out) == 3 and np.allclose(out[["prob_benign", "prob_malignant"]].sum(1), 1)
    assert np.asarray(out["mask"][0]).shape == (32, 32) and len(out["bbox"][0]) == 4


def test_study_and_ablation_produce_their_parent_and_child_runs(server, tmp_path, one_torch_thread):
    import yaml

    from conftest import REPO

    name = f"study-{uuid.uuid4().hex[:6]}"
    study = {"kind": "study", "name": name, "base": TINY_TRAIN, "protocol": "pairwise",
             "pairs": [{"sources": ["site_a"], "target": "site_b"}], "methods": ["erm", "dann"],
             "embedding_figure": False}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert senolab_main(["study", str(tmp_path / "study.yaml"), "--out", str(tmp_path / "study"), "--quiet",
                         "--tracking-uri", server.uri]) == 0
    ablation = yaml.safe_load((REPO / "tests" / "test_fusion.py").read_text().split('TINY_ABLATION = """')[1]
                              .split('"""')[0])
    ablation["name"] = f"ablation-{uuid.uuid4().hex[:6]}"
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump(ablation))
    assert senolab_main(["fusion", "ablate", str(tmp_path / "ablation.yaml"), "--out", str(tmp_path / "ablation"),
                         "--quiet", "--tracking-uri", server.uri]) == 0

    client = mlflow.tracking.MlflowClient(server.uri)
    for experiment, children in ((name, {"erm -> site_b (seed 0)", "dann -> site_b (seed 0)"}),
                                 (ablation["name"], {f"{v} -> fold{k}" for k in (0, 1)
                                                     for v in ("pretrained_image", "image_only", "graph+metadata")})):
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        kids = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
        assert kids == children
        assert all(r.info.status == "FINISHED" and r.data.metrics for r in runs)
