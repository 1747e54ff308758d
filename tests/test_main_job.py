"""`senolab run`: the whole chain on a reduced quickstart, tracked in the embedded MLflow store."""
from __future__ import annotations

import json

import pandas as pd

from senolab.runners.main_job import ExplainStep, quickstart_config, run_main


def reduced_quickstart():
    config = quickstart_config()
    study = config.study.model_copy(deep=True)
    study.base.data.synthetic.images_per_site = 24
    study.base.data.image_size = 32
    study.base.train.epochs = 1
    study.base.evaluation.bootstrap = 30
    study.methods = [m for m in study.methods if m.name in ("erm", "histogram_matching")]
    study.embedding_figure = True
    return config.model_copy(update={"study": study, "explain": ExplainStep(methods=["gradcam"], max_cases=4)})


def test_quickstart_runs_end_to_end_and_tracks(tmp_path):
    out = tmp_path / "run"
    report = run_main(reduced_quickstart(), out, progress=False)
    for name in ("report.md", "report.html", "runs.json", "cohorts.json", "radiomics.parquet",
                 "study/results.csv", "study/summary.json", "study/embeddings_tsne.png", "figures/cohorts.png"):
        assert (out / name).exists(), name
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Cross-site results" in html
    results = pd.read_csv(out / "study" / "results.csv")
    assert sorted(results["method"]) == ["erm", "histogram_matching"]
    assert set(results["target_site"]) == {"site_c"}
    summary = json.loads((out / "study" / "summary.json").read_text())
    assert {"erm", "histogram_matching"} <= set(summary["aggregates"])
    assert all(m["pointing_game"] for m in report["methods"])

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["quickstart"])
    assert len(runs) == 3  # the run's parent, a child per (target, method, seed)
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert set(children["tags.transductive"]) == {"true", "false"}
    assert (children["metrics.auc_ci_lo"] <= children["metrics.auc"]).all()
    for column in ("metrics.insite_auc", "metrics.gap_auc", "metrics.site_classifier_acc", "metrics.sensitivity"):
        assert children[column].notna().all(), column

    # a second call on the finished folder (as `make run` twice) redoes nothing and logs nothing twice
    stamp = (out / "study" / "runs" / "site_c" / "erm" / "seed0" / "model" / "artifacts" / "model.pt").stat().st_mtime_ns
    run_main(reduced_quickstart(), out, progress=False)
    assert (out / "study" / "runs" / "site_c" / "erm" / "seed0" / "model" / "artifacts" / "model.pt").stat().st_mtime_ns == stamp
    assert len(mlflow.search_runs(experiment_names=["quickstart"])) == 3


def test_loso_run_logs_every_target_and_method_once(tmp_path):
    """Leave-one-site-out: each (target, method) has its own folder, figures and model, and
    one MLflow parent run (the first session logged only the first target per method)."""
    config = reduced_quickstart()
    study = config.study.model_copy(update={"protocol": "loso", "pairs": [], "embedding_figure": False})
    study.base.data.synthetic.n_sites = 3
    config = config.model_copy(update={"study": study, "explain": ExplainStep(methods=["gradcam"], max_cases=2)})
    out = tmp_path / "loso"
    run_main(config, out, progress=False)

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart").experiment_id
    runs = client.search_runs([experiment])
    units = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    pairs = sorted((r.data.tags["target_site"], r.data.tags["method"]) for r in units)
    expected = sorted((t, m) for t in ("site_a", "site_b", "site_c") for m in ("erm", "histogram_matching"))
    assert pairs == expected
    assert len(runs) == 1 + len(expected)  # and the run's own parent
    rocs = sorted(out.glob("study/runs/*/*/seed0/figures/roc.png"))
    assert len(rocs) == len(expected)
    for target, method in expected:  # each folder holds its own target's cases
        cases = pd.read_parquet(out / "study" / "runs" / target / method / "seed0" / "predictions.parquet")
        assert set(cases[cases["domain"] == "target"]["site"]) == {target}
    assert len(list((out / "study").rglob("*.pt"))) == len(expected), "one model file per unit"
