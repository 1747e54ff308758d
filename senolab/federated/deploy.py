"""The Flower app project of a senolab federation, for a real deployment.

``flwr run`` ships an app project (a folder with a ``pyproject.toml`` whose
``[tool.flwr.app]`` names the ServerApp and ClientApp) to a SuperLink, which runs the
ServerApp and has every SuperNode run the ClientApp. senolab's apps live in the installed
package (:mod:`senolab.federated.apps`), so the project holds only its pyproject: the
components and the run config (``federation``: the path, on the SuperLink's machine, of the
federation.json that :func:`senolab.federated.plan_federation` wrote). See docs/federated.md.
"""
from __future__ import annotations

from pathlib import Path

PYPROJECT = """\
# A senolab federation as a Flower app (written by senolab.federated.deploy.write_app_project).
# Every machine (SuperLink and each hospital's SuperNode) has senolab installed.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "senolab federated training (model parameters and aggregate metrics only leave a site)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "senolab"

[tool.flwr.app.components]
serverapp = "senolab.federated.apps:server_app"
clientapp = "senolab.federated.apps:client_app"

[tool.flwr.app.config]
federation = "{federation}"
"""


def write_app_project(folder: str | Path, federation: str | Path, name: str = "senolab-federation") -> Path:
    """Write the app project to ``folder`` (its ``pyproject.toml``); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(name=name, federation=Path(federation).absolute()))
    return folder
