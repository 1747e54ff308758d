"""Skip helpers for the timm and lightly tests (extras ``timm`` and ``ssl``).

Whether they import is asked of a fresh interpreter once per session: timm and lightly
import torchvision, and a torchvision built for another torch fails with a RuntimeError
half-way through registering its operators, which should not happen inside the test process.
"""
from __future__ import annotations

import functools
import subprocess
import sys

import pytest


@functools.lru_cache(maxsize=None)
def import_problem(*modules: str) -> str | None:
    """None if ``modules`` import in a fresh interpreter, else the last line of the error."""
    code = "; ".join(f"import {m}" for m in modules)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def skip_without(*modules: str) -> None:
    """Skip the calling test module unless every one of ``modules`` imports."""
    problem = import_problem(*modules)
    if problem is not None:
        pytest.skip(f"{', '.join(modules)} cannot be imported here ({problem}); install senolab[timm,ssl] "
                    "with a torchvision built for this torch", allow_module_level=True)
