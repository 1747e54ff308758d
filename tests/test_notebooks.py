"""The notebooks in notebooks/ run top to bottom on a real Jupyter kernel.

Each runs as a user runs it: from ``notebooks/`` of a copy of the repository, with its
default output folder (``../runs/notebooks``, relative) and its default sizes
(``SENOLAB_QUICK`` unset: small); the cohorts notebook also runs on the real cohorts when
../shared/data exists. The kernel is this interpreter (a kernelspec written to a
temporary ``JUPYTER_PATH``), never whatever kernel the user's home happens to hold.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DATA = ROOT.parent / "shared" / "data"
KERNEL = "senolab-test"

# What each notebook must leave in its output folder (SENOLAB_OUT/<notebook>/), and how
# many figures it must show at least: a notebook that silently skipped its work fails.
EXPECTED = {
    "01_cohorts": (["cohorts.png"], 5),
    "02_radiomics": (["radiomics.parquet", "site_effect.png"], 1),
    "03_fusion": (["ablation/results.csv", "ablation/ablation.md", "ablation/ablation_auc.png",
                   "tabular_attributions.png"], 2),
    "04_domain_adaptation": (["cyclegan_examples.png", "study/results.md", "study/embeddings_tsne.png"], 3),
    "05_explanations_mlflow": (["run/mlflow.db", "run/report.html"], 2),
}


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_every_notebook_is_covered():
    assert [p.stem for p in notebook_paths()] == sorted(EXPECTED)


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebooks_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"


# A leading underscore marks private senolab names: notebooks show the public API only.
PRIVATE = re.compile(r"senolab(\.\w+)*\._\w|from senolab[\w.]* import [^\n]*\b_\w")


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebooks_use_the_public_api_and_read_their_parameters(path):
    nb = nbformat.read(path, as_version=4)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown", f"{path.name}: starts with a markdown introduction"
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell is tagged 'parameters'"
    for name in ("SENOLAB_QUICK", "SENOLAB_OUT"):
        assert name in first.source, f"{path.name}: the parameters cell reads {name}"
    private = [m.group(0) for source in code for m in PRIVATE.finditer(source)]
    assert not private, f"{path.name}: uses private names {private}"


@pytest.fixture
def jupyter(tmp_path, monkeypatch):
    """A kernelspec for this interpreter, Jupyter/IPython state kept out of the home folder,
    and a copy of the notebooks and configs laid out as in the repository; returns the
    notebooks' default output folder in that copy."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "senolab (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before the user's folders
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("SENOLAB_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("SENOLAB_OUT", "SENOLAB_QUICK", "SENOLAB_DATA"):  # the notebooks' own defaults
        monkeypatch.delenv(name, raising=False)
    # One torch thread in the kernel. The models here are tiny, so a second thread buys
    # little, and when anything else keeps a core busy the two OpenMP threads wait on each
    # other: a U-Net training step measured 0.14 s with one thread and 3.5 s with two on a
    # loaded 2-core machine (0.37 s with OMP_WAIT_POLICY=PASSIVE).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    checkout = tmp_path / "checkout"
    for folder in ("notebooks", "configs"):
        shutil.copytree(ROOT / folder, checkout / folder)
    return checkout / "runs" / "notebooks"


def execute(path: Path, out: Path) -> nbformat.NotebookNode:
    """Run every cell in order, from the copy's notebooks folder (beside ``out``'s
    ``runs/``) as Jupyter would; raise on an error."""
    folder = out.parents[1] / "notebooks"
    nb = nbformat.read(folder / path.name, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(folder)}})
    client.execute()
    return nb


def shown_figures(nb: nbformat.NotebookNode) -> int:
    """PNG images displayed by the notebook, checked to decode as PNG."""
    images = [base64.b64decode(output["data"]["image/png"]) for cell in nb.cells if cell.cell_type == "code"
              for output in cell.outputs if "image/png" in output.get("data", {})]
    assert all(image.startswith(b"\x89PNG") for image in images)
    return len(images)


def check_products(nb: nbformat.NotebookNode, out: Path, name: str) -> None:
    files, figures = EXPECTED[name]
    missing = [f for f in files if not (out / name / f).is_file()]
    assert not missing, f"{name}: did not write {missing} under {out / name}"
    assert shown_figures(nb) >= figures, f"{name}: shows fewer than {figures} figures"


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_runs_on_synthetic_data(path, jupyter):
    nb = execute(path, jupyter)
    check_products(nb, jupyter, path.stem)


@pytest.mark.skipif(not DATA.exists(), reason=f"real cohorts not found at {DATA}")
def test_cohorts_notebook_reads_the_real_cohorts(jupyter, monkeypatch):
    monkeypatch.setenv("SENOLAB_DATA", str(DATA))
    nb = execute(NOTEBOOKS / "01_cohorts.ipynb", jupyter)
    check_products(nb, jupyter, "01_cohorts")
    printed = "\n".join(output["text"] for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
                        if output.get("name") == "stdout")
    for cohort in ("busi", "busbra", "breast"):
        assert re.search(rf"^{cohort}: \d+ images", printed, re.MULTILINE), f"{cohort} was not read"
