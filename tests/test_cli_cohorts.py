"""`senolab cohorts describe` as a user runs it: a real process, real folders."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import DATA, requires_data


def senolab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "senolab.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@requires_data
def test_describe_real_cohorts_json(tmp_path):
    out = senolab("cohorts", "describe", str(DATA / "busi"), str(DATA / "breast"), "--json",
                  "--figure", str(tmp_path / "fig.png"))
    assert out.returncode == 0, out.stderr
    busi, breast = json.loads(out.stdout)
    assert busi["cohort"] == "busi" and busi["n_images"] == 780 and busi["n_patients"] == 780
    assert busi["classes"] == {"normal": 133, "benign": 437, "malignant": 210}
    assert busi["n_lesions"] == 665 and busi["duplicate_groups"] > 50
    assert breast["classes"] == {"normal": 4, "benign": 154, "malignant": 98}
    assert breast["metadata_coverage"]["age"] == round(1 - 42 / 256, 4)
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_describe_synthetic_default_prints_table_and_figure(tmp_path):
    out = senolab("cohorts", "describe", "--figure", str(tmp_path / "fig.png"))
    assert out.returncode == 0, out.stderr
    assert "synthetic" in out.stdout and "normal/benign/malignant" in out.stdout
    assert f"figure: {tmp_path / 'fig.png'}" in out.stdout


def test_describe_wrong_folder_exits_2_naming_layouts(tmp_path):
    out = senolab("cohorts", "describe", str(tmp_path))
    assert out.returncode == 2
    assert "not a known dataset layout" in out.stderr and "Dataset_BUSI_with_GT" in out.stderr
