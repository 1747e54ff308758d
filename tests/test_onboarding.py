"""The README's other entry point works on the project's environment: `make lab` serves the
notebooks in JupyterLab with the widget extension (tqdm bars render as bars) and the
environment's kernel. The server is real, on loopback, stopped at the end."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, make_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, token: str):
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.slow
def test_make_lab_serves_the_notebooks_with_widgets(tmp_path):
    port, token = free_port(), "senolab-test"
    command = make_command(REPO, "lab")
    command[0] = str(Path(sys.prefix) / "bin" / Path(command[0]).name)  # this checkout's .venv
    command += ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                                     f"--IdentityProvider.token={token}"]
    if os.geteuid() == 0:  # CI and this sandbox run as root, which Jupyter refuses unless told
        command.append("--allow-root")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data"), "IPYTHONDIR": str(tmp_path / "ipython")}
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                status, body = get(f"{base}/api/contents", token)
                break
            except OSError:
                if server.poll() is not None:
                    raise AssertionError(server.stderr.read().decode()[-3000:])
                time.sleep(0.5)
        else:
            raise AssertionError("JupyterLab did not answer within 60 s")
        names = {item["name"] for item in json.loads(body)["content"]}
        assert {p.name for p in (REPO / "notebooks").glob("*.ipynb")} <= names
        status, page = get(f"{base}/lab", token)
        assert status == 200 and b"JupyterLab" in page
        _, extensions = get(f"{base}/lab/api/extensions", token)
        assert "jupyter-widgets-jupyterlab-manager" in {e["name"] for e in json.loads(extensions)}  # ipywidgets
        _, kernels = get(f"{base}/api/kernelspecs", token)
        assert json.loads(kernels)["default"] == "python3"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
