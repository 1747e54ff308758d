"""Shared test helpers: where the real cohorts are, and CPU threading under xdist."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

requires_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real cohorts not found at {DATA} (only CI and dev machines have them)"
)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two xdist workers on two cores: one torch thread each avoids oversubscription.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors gain nothing from intra-op threads, and on a busy 2-core machine
    (xdist workers, other jobs) the threads' spin-waits make such tests 10-50x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_cohorts():
    """The three real cohorts, read once per test session (about 7 s)."""
    if not DATA.is_dir():
        pytest.skip(f"real cohorts not found at {DATA}")
    from senolab.cohorts.readers import read_cohort

    return {name: read_cohort(DATA / name) for name in ("busi", "busbra", "breast")}


def make_command(root: Path, target: str) -> list[str]:
    """The command line `make TARGET` runs in ``root`` (the README's commands are make
    targets), without letting make rebuild the environment. Also under `make test`,
    whose MAKEFLAGS would otherwise add "Entering directory" lines."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    printed = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", target], cwd=root,
                             env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert len(printed) == 1, printed
    return shlex.split(printed[0])
