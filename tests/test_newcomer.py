"""The README's main command as a newcomer runs it: from the root of a fresh copy of the
repository, with the relative paths the Makefile uses, then again, then with a changed
config, then with another tracking store. No absolute --out anywhere: that is how the
first session's crash (a relative --out joined onto itself) went unseen.

The command line is read from the Makefile (`make -n run`), so this test follows the
README if the Makefile changes. ``SENOLAB_QUICK=1`` shrinks the built-in quickstart to
a smoke run of the same code path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_command

pytestmark = pytest.mark.slow


def fresh_copy(tmp_path: Path) -> Path:
    """The repository's tracked files in a new folder, with `.venv` pointing at this
    interpreter's environment (the one `make setup` built), as after a clone and `make setup`."""
    root = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, target)
    (root / ".venv").symlink_to(Path(sys.prefix))
    return root


def run(command: list[str], root: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "SENOLAB_QUICK": "1", "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", **env}
    environment.pop("SENOLAB_OUT", None)
    return subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=900)


def mlflow_runs(uri: str):
    import mlflow

    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("quickstart")
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def quick_config(monkeypatch) -> dict:
    from senolab.runners.main_job import quickstart_config

    monkeypatch.setenv("SENOLAB_QUICK", "1")
    return quickstart_config().model_dump()


def test_readme_main_command_runs_reruns_and_refuses_a_changed_config(tmp_path, monkeypatch):
    root = fresh_copy(tmp_path)
    command = make_command(root, "run")
    assert "--out" in command and not Path(command[command.index("--out") + 1]).is_absolute()
    out = root / command[command.index("--out") + 1]

    first = run(command, root)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("report.html", "report.md", "runs.json", "study/results.csv", "study/summary.json", "mlflow.db"):
        assert (out / name).is_file(), name
    # the terminal shows a summary and where to look, not the whole report; MLflow once
    assert first.stdout.count("mlflow ui --backend-store-uri") == 1
    assert "## Cross-site results" not in first.stdout and "report.html" in first.stdout
    db = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    client, runs = mlflow_runs(db)
    assert len(runs) == 5 and all(r.info.status == "FINISHED" for r in runs)  # the run, and a child per method
    assert not list(root.glob("*.png")), "nothing written into the working folder"

    # As if the first run had been killed during its upload: one run gone, one left RUNNING.
    gone, stuck = [r for r in runs if "mlflow.parentRunId" in r.data.tags][:2]
    client.delete_run(gone.info.run_id)
    client.set_tag(stuck.info.run_id, "senolab.complete", "false")
    client.update_run(stuck.info.run_id, status="RUNNING")
    model = next(out.glob("study/runs/*/erm/seed0/model/artifacts/model.pt"))
    stamp = model.stat().st_mtime_ns

    again = run(command, root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert model.stat().st_mtime_ns == stamp, "the rerun trained again"
    _, runs = mlflow_runs(db)
    assert len(runs) == 5 and all(r.info.status == "FINISHED" for r in runs), "MLflow not repaired"
    assert sorted(r.data.tags["senolab.key"] for r in runs) == sorted({r.data.tags["senolab.key"] for r in runs})

    # The same folder with a changed config: refused before any work, the key named.
    changed = quick_config(monkeypatch)
    changed["study"]["base"]["train"]["lr"] = 0.01
    (root / "changed.yaml").write_text(yaml.safe_dump(changed))
    refused = run([*command[:2], "changed.yaml", *command[2:]], root)
    assert refused.returncode == 2
    assert "another configuration" in refused.stderr and "Traceback" not in refused.stderr
    assert "study.base.train.lr: 0.003 -> 0.01" in refused.stderr and "; and" not in refused.stderr

    # --tracking-uri on the existing folder is honoured, relative paths included.
    moved = run([*command, "--tracking-uri", "sqlite:///elsewhere.db"], root)
    assert moved.returncode == 0, moved.stderr[-3000:]
    _, runs = mlflow_runs(f"sqlite:///{root / 'elsewhere.db'}")
    assert len(runs) == 5


def test_cli_refuses_bad_input_in_one_line(tmp_path):
    """A folder given as a config and an output folder that cannot be written: exit 2,
    one line that names the path, before any work."""
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    cases = [
        (["run", "a_folder"], "a_folder"),
        (["run", "--out", "a_file/run"], "a_file"),
        (["train", "configs_missing.yaml"], "configs_missing.yaml"),
    ]
    for args, named in cases:
        result = subprocess.run([sys.executable, "-m", "senolab.cli", *args], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "SENOLAB_QUICK": "1"})
        assert result.returncode == 2, (args, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0], (args, result.stderr[-2000:])
