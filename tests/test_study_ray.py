"""A study on Ray: the ray executor gives the sequential executor's results, records a
failing run while the others finish, resumes, logs each run once, and tunes a method's
options on source validation without a target label in sight."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from senolab.engine.config import ConfigError, ExecutorConfig, load_study_config
from senolab.runners.executors import RunBoard, StudyFolderUnreachable, StudyJob, enter_study
from senolab.runners.study import StudyRunsFailed, run_study
from senolab.tracking.runfolder import ConfigChanged

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "kind": "study",
    "name": "tiny_ray",
    "base": {"data": {"synthetic": {"n_sites": 2, "images_per_site": 24, "image_size": 64}, "image_size": 32,
                      "split": {"val_fraction": 0.25}},
             "train": {"epochs": 1, "batch_size": 8}, "evaluation": {"bootstrap": 20}},
    "protocol": "loso",
    "methods": ["erm", "adabn"],
    "embedding_figure": False,
    "executor": {"cpus": 1},
}
ONE_PAIR = {"protocol": "pairwise", "pairs": [{"sources": ["site_a"], "target": "site_b"}]}


def write_config(folder: Path, **changes) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def tracked_runs(out: Path) -> tuple[int, list[str]]:
    """The MLflow store's parent runs and its children's unit names."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    parents = sum(run.data.tags.get("senolab.role") == "parent" for run in runs)
    return parents, sorted(run.data.tags["senolab.unit"] for run in runs if "senolab.unit" in run.data.tags)


def test_a_failing_run_is_recorded_the_others_finish_and_the_command_fails(tmp_path):
    """The real command, Ray started by it, a relative --out and image files under a relative
    path (as configs/study_loso.yaml has them): the broken entry fails at its first step, erm
    finishes, and the command exits non-zero naming the failed run."""
    from senolab.cohorts.synthetic import write
    from senolab.engine.config import SyntheticOptions

    write(SyntheticOptions(**TINY["base"]["data"]["synthetic"]).build(), tmp_path / "cohort", progress=False)
    on_disk = {**TINY["base"], "data": {**TINY["base"]["data"], "cohorts": ["cohort"]}}
    del on_disk["data"]["synthetic"]
    broken = {"name": "dann", "options": {"no_such_option": 1}, "label": "broken"}
    write_config(tmp_path, methods=["erm", broken], base=on_disk, **ONE_PAIR)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "senolab.cli", "study", "study.yaml", "--out", "out",
                           "--executor", "ray"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "site_b/broken/seed0" in done.stderr and "no_such_option" in done.stderr
    assert "1 done, 0 running, 0 waiting, 1 failed" in done.stderr  # the progress line's last state
    out = tmp_path / "out"
    error = json.loads((out / "runs" / "site_b" / "broken" / "seed0" / "error.json").read_text())
    assert "no_such_option" in error["error"] and "Traceback" in error["traceback"]
    assert pd.read_csv(out / "results.csv")["method"].tolist() == ["erm"]
    summary = json.loads((out / "summary.json").read_text())
    assert [entry["run"] for entry in summary["failed"]] == ["site_b/broken/seed0"]
    assert "## Failed runs" in (out / "results.md").read_text()
    assert tracked_runs(out) == (1, ["site_b/erm/seed0"])


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray for this module's in-process studies (an executor leaves it up)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_sequential_results_resumes_and_logs_each_run_once(tmp_path, ray_instance):
    config = load_study_config(write_config(tmp_path, **ONE_PAIR))  # adabn adapts erm's model: it runs after erm
    sequential, on_ray = tmp_path / "sequential", tmp_path / "ray"
    run_study(config, sequential, progress=False)
    ray_config = config.model_copy(update={"executor": config.executor.model_copy(update={"name": "ray"})})
    run_study(ray_config, on_ray, progress=False)
    expected = pd.read_csv(sequential / "results.csv")
    pd.testing.assert_frame_equal(pd.read_csv(on_ray / "results.csv"), expected, check_exact=True)
    units = ["site_b/adabn/seed0", "site_b/erm/seed0"]
    assert tracked_runs(on_ray) == (1, units)
    # the sequential study stopped before one run was done: resumed on Ray, only it is redone
    redo = sequential / "runs" / "site_b" / "erm" / "seed0"
    kept = sequential / "runs" / "site_b" / "adabn" / "seed0" / "model" / "artifacts" / "model.pt"
    stamp = kept.stat().st_mtime_ns
    (redo / "done.json").unlink()
    run_study(ray_config, sequential, progress=False)
    assert kept.stat().st_mtime_ns == stamp and (redo / "done.json").exists()
    pd.testing.assert_frame_equal(pd.read_csv(sequential / "results.csv"), expected, check_exact=True)
    assert tracked_runs(sequential) == (1, units)


def test_a_time_budgeted_study_says_its_results_depend_on_the_machine_and_cpus_are_compared(tmp_path):
    budgeted = {**TINY["base"], "train": {**TINY["base"]["train"], "time_budget_s": 600}}
    config = load_study_config(write_config(tmp_path, **ONE_PAIR, methods=["erm"], base=budgeted))
    summary = run_study(config, tmp_path / "out", progress=False)
    assert "depends on the machine's speed" in summary["time_budget"]
    assert "depends on the machine's speed" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ConfigChanged, match="executor.cpus: 1 -> 2"):
        run_study(config.model_copy(update={"executor": ExecutorConfig(cpus=2)}), tmp_path / "out", progress=False)


def test_tuning_chooses_options_on_source_validation_and_records_them(tmp_path, ray_instance):
    tune = [{"method": "coral", "space": {"weight": {"loguniform": [0.1, 100.0]}}, "trials": 2, "epochs": 1}]
    config = load_study_config(write_config(tmp_path, methods=["coral"], tune=tune, **ONE_PAIR))
    out = tmp_path / "out"
    summary = run_study(config, out, progress=False)
    record = json.loads((out / "tuning" / "site_b" / "coral.json").read_text())
    assert len(record["trials"]) == 2 and all(0 <= t["val_score"] <= 1 for t in record["trials"])
    assert record["best_val_score"] == max(t["val_score"] for t in record["trials"])
    assert 0.1 <= record["chosen"]["weight"] <= 100 and "source validation" in record["metric"]
    assert summary["tuning"]["site_b"]["coral"]["chosen"] == record["chosen"]
    from senolab.tracking import RunDir

    run = RunDir.open(out)
    (unit,) = run.runs()
    assert float(unit.params["method.weight"]) == record["chosen"]["weight"]  # the run used the chosen weight
    assert "tuning/site_b/coral.json" in {artifact.path for artifact in run.parent.artifacts}
    assert "Tuned on source validation at target site_b: coral" in (out / "results.md").read_text()


@pytest.fixture
def peeking_method():
    """A method that reads the target's labels while preparing, registered for one test."""
    from senolab.adaptation import METHODS, AdaptationMethod
    from senolab.adaptation.base import register_method

    @register_method("peeks_at_target_labels")
    class PeeksAtTargetLabels(AdaptationMethod):
        transductive = needs_target = True

        def _prepare(self, model, source_loader, target_loader):
            self.labels = [batch["label"] for batch in target_loader]

    yield PeeksAtTargetLabels.name
    METHODS._entries.pop(PeeksAtTargetLabels.name)  # the registry has no removal: a test-only method


def test_a_trial_sees_no_target_label(tmp_path, peeking_method):
    from senolab.adaptation import TargetLabelAccess
    from senolab.engine.config import MethodSpec
    from senolab.engine.data import load_cohorts
    from senolab.runners.study import pair_data, study_pairs
    from senolab.runners.tuning import trial_score, without_target_labels

    config = load_study_config(write_config(tmp_path, **ONE_PAIR))
    cohort = load_cohorts(config.base.data, progress=False)
    (pair,) = study_pairs(config, sorted(cohort.table["site"].unique()))
    blind = without_target_labels(pair_data(config, cohort, pair))
    target = blind.cohort.table[blind.cohort.table["case_id"].isin(blind.case_ids("test"))]
    assert len(target) and target["label"].isna().all() and (target["mask_kind"] == "none").all()
    assert "source_test" not in set(blind.parts)
    batch = next(iter(blind.loader("test", len(target), labelled=True)))  # even asked for, there is none
    assert not batch["has_label"].any() and not batch["has_mask"].any() and batch["mask"].sum() == 0
    with pytest.raises(TargetLabelAccess):
        trial_score(config, MethodSpec(name=peeking_method), {}, blind, tmp_path / "trial")


def test_a_worker_that_cannot_see_the_study_folder_says_so(tmp_path):
    job = StudyJob(load_study_config(write_config(tmp_path)), tmp_path / "elsewhere", run_task=None)
    with pytest.raises(StudyFolderUnreachable, match="storage every node mounts"):
        enter_study(job)


def test_the_progress_line_counts_runs():
    board = RunBoard(total=4, done=1, show=False)
    board.started("a")
    assert board.text() == "1 done, 1 running, 2 waiting, 0 failed"
    board.finished("a", failed=True)
    assert board.text() == "1 done, 0 running, 2 waiting, 1 failed"


@pytest.mark.parametrize("changes, message", [
    ({"tune": [{"method": "dann", "space": {"weight": {"uniform": [0, 1]}}}]}, "not entries of methods"),
    ({"tune": [{"method": "erm", "space": {"weight": {"normal": [0, 1]}}}]}, "space.weight: expected one of"),
    ({"tune": [{"method": "erm", "space": {"weight": {"loguniform": [0, 1]}}}]}, "low < high"),
    ({"executor": {"address": "auto"}}, "needs name: ray"),
])
def test_executor_and_tune_sections_are_checked_when_read(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_study_config(write_config(tmp_path, **changes))


def test_the_study_raises_after_recording_every_failure(tmp_path):
    broken = {"name": "dann", "options": {"no_such_option": 1}, "label": "broken"}
    config = load_study_config(write_config(tmp_path, methods=[broken], **ONE_PAIR))
    with pytest.raises(StudyRunsFailed, match="site_b/broken/seed0"):
        run_study(config, tmp_path / "out", progress=False)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["failed"][0]["method"] == "broken"


def test_federated_runs_and_those_that_adapt_them_stay_in_the_driver(tmp_path):
    """Flower's simulation engine is a Ray application: under the ray executor a federated
    run (and a run that trains as one) is carried out by the driver, not in a Ray task."""
    from senolab.engine.config import MethodSpec, PairSpec
    from senolab.runners.executors import Task, here_of
    from senolab.runners.study import StudyUnit

    pair = PairSpec(sources=["site_a", "site_b"], target="site_c")

    def unit(name):
        return StudyUnit(pair, MethodSpec(name=name), 0, tmp_path / name, data=None)

    tasks = [Task(unit("erm")), Task(unit("fedbn")), Task(unit("adabn"), unit("erm")),
             Task(unit("fedbn_adabn"), unit("fedbn"))]
    assert [task.unit.spec.name for task in here_of(tasks)] == ["fedbn", "fedbn_adabn"]


def test_the_cli_refuses_an_address_without_ray_and_leaves_no_folder(tmp_path):
    """As a user types it, from their own folder with a relative --out."""
    run = subprocess.run([sys.executable, "-m", "senolab.cli", "study", str(REPO / "configs" / "study_synthetic.yaml"),
                          "--address", "auto", "--out", "runs/x"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "needs name: ray" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "runs").exists()
