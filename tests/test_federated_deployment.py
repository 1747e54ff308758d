"""The federation's ClientApp and ServerApp as a real Flower deployment on loopback: a
SuperLink, one SuperNode per site (each started with its own site file only), and `flwr
run` of the app project, as hospitals would run it (docs/federated.md), with FedAdam and
central differential privacy switched on. Every process started here is ended here."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from senolab.engine.config import StudyConfig

SITES = ["site_a", "site_b"]
STUDY = {
    "kind": "study",
    "base": {"data": {"synthetic": {"n_sites": 3, "images_per_site": 24, "image_size": 64}, "image_size": 32,
                      "split": {"val_fraction": 0.25}},
             "model": {"heads": {"classification": True, "segmentation": False, "bbox": False}},
             "train": {"epochs": 1, "batch_size": 8}},
    "protocol": "pairwise",
    "pairs": [{"sources": SITES, "target": "site_c"}],
}
OPTIONS = {"rounds": 1, "dp": {"noise_multiplier": 0.01, "clipping_norm": 10.0}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@pytest.fixture
def processes():
    """Processes started by the test; each, and everything it started, is ended afterwards."""
    started: list[subprocess.Popen] = []
    yield started
    family = []
    for popen in started:
        try:
            parent = psutil.Process(popen.pid)
            family += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for process in family:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=15)
    for process in alive:
        process.kill()


def test_superlink_and_one_supernode_per_site_run_the_federation(tmp_path, processes):
    from senolab.engine.data import load_cohorts
    from senolab.federated.deploy import write_app_project
    from senolab.federated.simulation import plan_federation
    from senolab.federated.site import write_site
    from senolab.runners.study import pair_data

    config = StudyConfig.model_validate(STUDY)
    data = pair_data(config, load_cohorts(config.base.data, progress=False), config.pairs[0])
    site_files = [write_site(data, site, tmp_path / "hospital" / site) for site in SITES]  # each hospital's own
    server = tmp_path / "server"
    federation = plan_federation(config.base, data, "fedadam", OPTIONS, SITES, server)
    app = write_app_project(tmp_path / "app", server / "federation.json")

    bin_dir = Path(sys.executable).parent
    home = tmp_path / "flwr_home"
    home.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FLWR_HOME": str(home),
           "OMP_NUM_THREADS": "1"}
    link = _free_port()
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, *command) -> None:
        processes.append(subprocess.Popen([str(bin_dir / command[0]), *command[1:]], env=env, cwd=tmp_path,
                                          stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT))

    start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
          "--disable-runtime-dependency-installation")
    for k, site_file in enumerate(site_files):
        start(f"supernode_{k}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
              "--host", "127.0.0.1", "--port", str(_free_port()),
              "--node-config", f"site-data='{site_file}' partition-id={k}")
    (home / "config.toml").write_text(f'[superlink]\ndefault = "hospitals"\n\n[superlink.hospitals]\n'
                                      f'address = "127.0.0.1:{link}"\ninsecure = true\n')
    _wait_for_port(link, 60)
    run = subprocess.run([str(bin_dir / "flwr"), "run", str(app), "hospitals", "--stream"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=400)
    logged = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.iterdir()))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + logged

    history = pd.read_csv(server / "history.csv")
    assert list(history["epoch"]) == [0], logged
    assert {"site_a.loss", "site_b.loss", "site_a.val_score", "site_b.val_score"} <= set(history.columns)
    # the global model's arrays, float32 as the model's, to two sites and back; evaluation asks for none
    initial = torch.load(server / "initial.pt", weights_only=True)["shared"]
    model_bytes = sum(v.numel() * v.element_size() + len(k) for k, v in initial.items())
    assert history["bytes_sent"].iloc[0] == pytest.approx(2 * 2 * model_bytes, rel=0.01)  # train + evaluate
    assert history["bytes_received"].iloc[0] == pytest.approx(2 * model_bytes, rel=0.01)
    assert "central DP noise" in logged + run.stdout + run.stderr  # Flower's DP wrapper added its noise
    result = torch.load(server / "federated.pt", weights_only=True)
    assert result["round"] == 1 and set(result["arrays"]) == set(initial)
    assert federation.rounds == 1
    for site_file in site_files:  # each client kept its own state at its own site
        assert (site_file.parent / "client_state.pt").exists()
