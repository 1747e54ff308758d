"""`senolab radiomics extract` as a newcomer runs it: in a subprocess, from a working folder,
with relative paths. Skipped cases and failures are reported (stdout and a summary JSON);
bad parameter files and outputs or caches that cannot be written are one line, exit 2,
before any work."""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

# linux/prctl.h and linux/capability.h
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from senolab.cohorts.synthetic import SyntheticConfig, write

    return write(SyntheticConfig(images_per_site=4, image_size=64), tmp_path_factory.mktemp("synthetic"), progress=False)


@pytest.fixture
def workdir(tmp_path, synthetic_root) -> Path:
    """A working folder holding a copy of the synthetic cohort as ``cohort/``."""
    shutil.copytree(synthetic_root, tmp_path / "cohort")
    return tmp_path


def senolab(*args: str, cwd: Path, bound_by_permissions: bool = False) -> subprocess.CompletedProcess:
    # The default cache is redirected so that no test writes under the home folder.
    env = {**os.environ, "SENOLAB_CACHE_DIR": str(cwd / "default-cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "senolab.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_without_permission_override if bound_by_permissions else None,
    )


def _without_permission_override() -> None:
    """In the child, before exec: tests run as root here, and root ignores permission bits.
    Dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set makes the
    command bound by them like any user (for a non-root user the call fails and changes
    nothing, which is as well)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)


def extract(*args: str, cwd: Path, bound_by_permissions: bool = False) -> subprocess.CompletedProcess:
    return senolab("radiomics", "extract", "cohort", "-j", "1", "--quiet", *args, cwd=cwd,
                   bound_by_permissions=bound_by_permissions)


def refused_in_one_line(result: subprocess.CompletedProcess, *names: str) -> str:
    """The single line of a refusal (exit 2), which must name each of ``names``."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(name in lines[0] for name in names), lines[0]
    return lines[0]


# --- skipped cases and failures are reported ----------------------------------------------


def test_extract_reports_skipped_cases_and_failed_lesions_on_stdout_and_in_a_summary_file(workdir):
    masks = sorted((workdir / "cohort").rglob("*_mask.png"))
    one_pixel = masks[0]  # a lesion the reader accepts and pyradiomics cannot extract
    pixels = np.zeros_like(np.asarray(Image.open(one_pixel)))
    pixels[10, 10] = 255
    Image.fromarray(pixels).save(one_pixel)
    corrupt = masks[1].with_name(masks[1].name.replace("_mask.png", ".png"))  # a case the reader skips
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)

    result = extract("--out", "out/features.parquet", "--cache", "cache", cwd=workdir)
    assert result.returncode == 0, result.stderr
    summary_file = workdir / "out" / "features.summary.json"
    assert f"summary: {summary_file}" in result.stdout
    summary = json.loads(summary_file.read_text())

    corrupt_name, one_pixel_name = str(corrupt.relative_to(workdir)), str(one_pixel.relative_to(workdir))
    skipped = {s["file"]: s["reason"] for s in summary["skipped_cases"]}
    assert skipped[corrupt_name].startswith("unreadable or truncated image")
    assert summary["cases_skipped"] == len(skipped) >= 1
    assert f"skipped {len(skipped)} case" in result.stdout
    assert f"{corrupt_name}: unreadable or truncated image" in result.stdout

    table = pd.read_parquet(workdir / "out" / "features.parquet")
    assert summary["cases_read"] == table["case_id"].nunique()
    assert summary["lesions"] == summary["lesions_extracted"] + summary["lesions_failed"] == table["lesion_index"].notna().sum()
    assert summary["lesions_failed"] == len(summary["failures"]) >= 1
    failure = next(f for f in summary["failures"] if f["mask"] == one_pixel_name)
    assert "1 segmented voxel" in failure["reason"] and failure["image"].endswith(".png")
    assert f"{failure['case_id']} lesion 0: {failure['reason']}" in result.stdout
    assert summary["features"] == str(workdir / "out" / "features.parquet")


# --- an output or cache that cannot be written: refused before the work -------------------


def test_an_output_under_a_file_is_refused_in_one_line_before_extracting(workdir):
    (workdir / "afile").write_text("a file, not a folder")
    for out in ("afile/features.parquet", "afile/sub/features.parquet"):
        result = extract("--out", out, "--cache", "cache", cwd=workdir)
        refused_in_one_line(result, str(Path(out).parent), "output folder")
        assert not (workdir / "cache").exists()  # nothing was extracted


def test_an_output_that_is_a_folder_is_refused_in_one_line(workdir):
    (workdir / "features.parquet").mkdir()
    refused_in_one_line(extract("--out", "features.parquet", "--cache", "cache", cwd=workdir), "features.parquet")
    assert not (workdir / "cache").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/sys is Linux's")
def test_an_output_folder_not_even_root_can_write_is_refused(workdir):
    # sysfs refuses new files to every user, root included.
    refused_in_one_line(extract("--out", "/sys/features.parquet", "--cache", "cache", cwd=workdir),
                        "/sys", "cannot be written")
    assert not (workdir / "cache").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drops Linux capabilities")
def test_an_output_folder_without_write_permission_is_refused(workdir):
    (workdir / "locked").mkdir(mode=0o555)
    probe = subprocess.run([sys.executable, "-c", "open('locked/probe', 'w')"], cwd=workdir,
                           preexec_fn=_without_permission_override, capture_output=True)
    if probe.returncode == 0:
        pytest.skip("this user may write into a read-only folder even without CAP_DAC_OVERRIDE")
    result = extract("--out", "locked/features.parquet", "--cache", "cache", cwd=workdir, bound_by_permissions=True)
    refused_in_one_line(result, "locked", "cannot be written")
    assert not (workdir / "cache").exists()


def test_a_cache_that_cannot_be_written_is_refused_in_one_line_before_extracting(workdir):
    (workdir / "afile").write_text("a file, not a folder")
    result = extract("--out", "features.parquet", "--cache", "afile/cache", cwd=workdir)
    refused_in_one_line(result, "afile/cache", "cache")
    assert not (workdir / "features.parquet").exists()


# --- bad parameter files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda path: None, "found nothing"),
        (lambda path: path.mkdir(), "found a folder"),
        (lambda path: path.write_text(""), "is empty"),
        (lambda path: path.write_text("setting: [binWidth: 25\n"), "not valid YAML (line"),
        (lambda path: path.write_text("setting:\n  binWidth: wide\n"), "rejected by pyradiomics' parameter schema"),
    ],
    ids=["missing", "folder", "empty", "invalid-yaml", "schema"],
)
def test_a_bad_parameter_file_is_refused_in_one_line_naming_it(workdir, make, expected):
    make(workdir / "params.yaml")
    result = extract("--out", "features.parquet", "--cache", "cache", "--params", "params.yaml", cwd=workdir)
    refused_in_one_line(result, "params.yaml", expected)
    assert not (workdir / "cache").exists()
