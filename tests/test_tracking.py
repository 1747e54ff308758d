"""senolab.tracking against a real MLflow server and the embedded SQLite store (no mocks).

A module-scoped fixture starts `mlflow server` (the venv's executable) on 127.0.0.1 with
a free port and a temporary SQLite backend; the second test stops it mid-study and
starts it again on the same backend. Start-up takes several seconds, so one server
serves the whole module.
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
from torch import nn

from senolab.cli import main as senolab_main
from senolab.evaluation import evaluate
from senolab.evaluation.plots import plot_reliability, plot_roc_by_site
from senolab.tracking import RunDir, TrackingUnavailable, embedded_uri, flatten_params, table_fingerprint
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


def log_method(run: RunDir, method: str, with_model: bool = False) -> dict:
    """What a study does per method: evaluate, draw ROC/reliability, tabulate explanations,
    save the model, log."""
    predictions = study_predictions(method, seed=len(method))
    aggregates = evaluate(predictions, n_resamples=40, progress=False).aggregates[method]
    figures_dir = run.method_dir(method) / "figures"
    table = run.method_dir(method) / "explanations" / "pointing_game.csv"
    table.parent.mkdir()
    pd.DataFrame({"cohort": ["busi"], "in_mask_share": [0.4], "chance_share": [0.1]}).to_csv(table, index=False)
    figures = [plot_roc_by_site(predictions, figures_dir / "roc.png"),
               plot_reliability(predictions, figures_dir / "reliability.png"), table]
    site_figures = {site: [plot_roc_by_site(predictions[predictions["site"] == site], figures_dir / f"roc_{site}.png")]
                    for _, site, _ in COHORTS}
    if with_model:
        run.write_model(method, nn.Linear(4, 2), {"encoder": "linear"})
    run.log_method(method, aggregates, predictions, transductive=METHODS[method], params={"weight": 0.1},
                   files=figures, site_files=site_figures)
    return aggregates


@pytest.fixture
def tracking_uri():
    """mlflow's global tracking URI, restored after the test."""
    before = mlflow.get_tracking_uri()
    yield mlflow.set_tracking_uri
    mlflow.set_tracking_uri(before)


def children(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["tags.mlflow.parentRunId"].notna()]


def artifact_paths(client, run_id: str, folder: str | None = None) -> set[str]:
    paths = set()
    for info in client.list_artifacts(run_id, folder):
        paths |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return paths


def test_study_fans_out_to_a_real_server(server, tmp_path, tracking_uri):
    study = f"study-{uuid.uuid4().hex[:6]}"
    fingerprint = table_fingerprint(study_predictions("erm", 0)[["case_id", "site"]])
    run = RunDir.create(tmp_path / "run", study, CONFIG, tracking_uri=server.uri, data_fingerprint=fingerprint)
    aggregates = {method: log_method(run, method, with_model=method == "erm") for method in METHODS}
    assert "at " + server.uri in run.finish(echo=False)

    tracking_uri(server.uri)
    runs = mlflow.search_runs(experiment_names=[study])
    assert len(runs) == 2 + 2 * 2
    kids = children(runs)
    assert sorted(zip(kids["tags.method"], kids["tags.cohort"])) == sorted(
        (m, c) for m in METHODS for c, _, _ in COHORTS)
    client = mlflow.tracking.MlflowClient(server.uri)
    for _, child in kids.iterrows():
        method, site = child["tags.method"], child["tags.site"]
        expected = aggregates[method][site]["auc"]
        assert child["metrics.auc"] == pytest.approx(expected["value"])
        assert child["metrics.auc_ci_lo"] == pytest.approx(expected["ci"][0])
        assert child["metrics.auc_ci_hi"] == pytest.approx(expected["ci"][1])
        assert child["tags.scanner"] == dict((s, sc) for _, s, sc in COHORTS)[site]
        assert child["tags.transductive"] == str(METHODS[method]).lower()
        assert child["tags.data_fingerprint"] == fingerprint
        assert len(child["tags.git_commit"]) >= 7
        assert child["params.model.encoder"] == "unet" and child["params.method.weight"] == "0.1"
        assert artifact_paths(client, child["run_id"]) == {"predictions.parquet", "summary.json", f"figures/roc_{site}.png"}
        downloaded = client.download_artifacts(child["run_id"], "predictions.parquet", str(tmp_path / child["run_id"]))
        assert set(pd.read_parquet(downloaded)["case_id"]) == {f"{site}_{i}" for i in range(24)}
    parents = runs[runs["tags.mlflow.parentRunId"].isna()].set_index("tags.method")
    worst = aggregates["dann"]["worst_site"]["auc"]
    assert parents.loc["dann", "metrics.worst_site.auc"] == pytest.approx(worst["value"])
    assert parents.loc["dann", "tags.worst_site.auc"] == worst["site"]
    assert parents.loc["erm", "metrics.auc"] == pytest.approx(aggregates["erm"]["all"]["auc"]["value"])
    assert artifact_paths(client, parents.loc["erm", "run_id"]) == {
        "summary.json", "predictions.parquet", "figures/roc.png", "figures/reliability.png",
        "explanations/pointing_game.csv", "model/model.pt"}
    assert (runs["tags." + COMPLETE_TAG] == "true").all() and runs["tags." + KEY_TAG].is_unique


def test_server_down_mid_study_then_sync_uploads_once(server, tmp_path, capsys):
    study = f"outage-{uuid.uuid4().hex[:6]}"
    root = tmp_path / "run"
    run = RunDir.create(root, study, CONFIG, tracking_uri=server.uri)
    log_method(run, "erm")  # reaches the server
    server.stop()
    try:
        with pytest.warns(TrackingUnavailable, match="senolab sync"):
            log_method(run, "dann")  # the server is gone: recorded locally only
        message = run.finish(echo=False)
    finally:
        server.start()  # the same backend store, on a new port
    assert "senolab sync" in message
    manifest = json.loads((root / "runs.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["tracking"]["state"] == "failed" and manifest["tracking"]["error"]
    assert [m["parent"]["name"] for m in manifest["methods"]] == ["erm", "dann"]
    for method in METHODS:
        assert (root / "methods" / method / "predictions.parquet").exists()
        assert (root / "methods" / method / "figures" / "roc.png").exists()

    client = mlflow.tracking.MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(study).experiment_id
    assert len(client.search_runs([experiment])) == 3  # erm and its two sites, before the outage

    capsys.readouterr()
    assert senolab_main(["sync", str(root), "--tracking-uri", server.uri]) == 0
    assert "3 runs created, 0 completed, 3 already in MLflow" in capsys.readouterr().out
    assert len(client.search_runs([experiment])) == 6
    assert senolab_main(["sync", str(root), "--tracking-uri", server.uri]) == 0
    assert "0 runs created, 0 completed, 6 already in MLflow" in capsys.readouterr().out
    assert len(client.search_runs([experiment])) == 6
    assert RunDir.open(root).tracking["state"] == "ok"


def test_embedded_store_needs_no_server(tmp_path, capsys):
    root = tmp_path / "run"
    run = RunDir.create(root, "embedded", CONFIG)
    log_method(run, "erm")
    run.finish()
    printed = capsys.readouterr().out
    assert f"mlflow ui --backend-store-uri sqlite:///{root.resolve()}/mlflow.db" in printed
    client = mlflow.tracking.MlflowClient(embedded_uri(root))
    experiment = client.get_experiment_by_name("embedded")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags.get("site", "-") for r in runs) == ["-", "busbra", "busi"]
    for r in runs:  # artifacts live inside the run directory
        assert Path(r.info.artifact_uri.removeprefix("file://")).is_relative_to(root.resolve())
        assert client.list_artifacts(r.info.run_id)
    assert run.sync(progress=False).skipped == 3


def test_interrupted_upload_is_completed_without_duplicates(tmp_path):
    root = tmp_path / "run"
    run = RunDir.create(root, "partial", CONFIG, track=False)
    log_method(run, "erm")
    assert "MLflow upload was off" in run.finish(echo=False)
    # Lose the second site's file: the upload stops after creating the parent and the
    # first child and starting the second one.
    second = run.methods()[0].children[1]
    lost = root / second.artifacts[0].path
    kept = lost.read_bytes()
    lost.unlink()
    with pytest.raises(FileNotFoundError, match="predictions.parquet"):
        run.sync(progress=False)
    assert RunDir.open(root).tracking["state"] == "failed"
    lost.write_bytes(kept)
    counts = run.sync(progress=False)
    assert (counts.created, counts.resumed, counts.skipped) == (0, 2, 1)
    client = mlflow.tracking.MlflowClient(embedded_uri(root))
    runs = client.search_runs([client.get_experiment_by_name("partial").experiment_id])
    assert len(runs) == 3 and all(r.data.tags[COMPLETE_TAG] == "true" for r in runs)
    resumed = next(r for r in runs if r.data.tags.get("site") == "busi")
    # Its metrics were written before the failure and again on resume: still one point.
    assert len(client.get_metric_history(resumed.info.run_id, "auc")) == 1


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
    predictions = study_predictions("erm", 0)
    aggregates = evaluate(predictions, n_resamples=10, progress=False).aggregates["erm"]
    with pytest.raises(ValueError, match="outside the run directory"):
        run.log_method("erm", aggregates, predictions, transductive=False, files=[outside])
    run.log_method("erm", aggregates, predictions, transductive=False)
    with pytest.raises(ValueError, match="already recorded"):
        run.log_method("erm", aggregates, predictions, transductive=False)
    assert senolab_main(["sync", str(tmp_path / "nothing")]) == 2
    assert "not a senolab run directory" in capsys.readouterr().err


def test_failed_sync_elsewhere_keeps_the_folder_default(tmp_path, capsys):
    """`senolab sync --tracking-uri X` that fails leaves the folder's own store as it was
    (it used to make X the default and flag the folder as failed)."""
    root = tmp_path / "run"
    run = RunDir.create(root, "kept", CONFIG)
    log_method(run, "erm")
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
    log_method(run, "erm")
    monkeypatch.chdir(tmp_path / "runs")
    run.finish(echo=False)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("relative").experiment_id])) == 3
    assert RunDir.open(tmp_path / "runs" / "rel").tracking["uri"] == f"sqlite:///{tmp_path / 'store.db'}"
