"""The run report reads like a methods-and-results section: a methods paragraph from the data,
then per (method, target) its numbers with CIs and its figures (training curves included),
human column names, yes/no, times with units, and attribution figures with a colour scale."""
from __future__ import annotations

import json
import re

import pytest
import torch
from test_main_job import reduced_quickstart

from senolab.explain.figures import case_grid_figure, case_grid_title
from senolab.explain.image import ImageExplanations
from senolab.runners.main_job import run_main

ESTIMATE_WITH_CI = r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A reduced main job (erm and histogram_matching, site_a + site_b -> site_c), run twice as
    `make run` twice would (the second report is written from the finished folder): its
    folder and its report.md and report.html."""
    out = tmp_path_factory.mktemp("report") / "run"
    for _ in range(2):
        run_main(reduced_quickstart(), out, progress=False)
    return out, (out / "report.md").read_text(), (out / "report.html").read_text()


def section(text: str, heading: str) -> str:
    """The markdown under ``heading``, up to the next heading of its level or above."""
    assert f"\n{heading}\n" in text, f"no heading {heading!r}"
    level = heading.split(" ", 1)[0]
    return re.split(rf"\n#{{1,{len(level)}}} ", text.split(f"\n{heading}\n", 1)[1])[0]


def md_table(text: str) -> list[dict]:
    """The first markdown table in ``text`` as rows of column -> cell."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_methods_paragraph_is_written_from_the_run(run):
    _, md, _ = run
    methods = section(md, "## Methods")
    assert "72 images" in methods and "3 sites" in methods  # 24 images at each of 3 synthetic sites
    assert "trained at site_a and site_b (sources) and tested at site_c" in methods
    assert "Transductive methods (histogram_matching)" in methods
    assert "unet encoder" in methods and "concat fusion" in methods
    assert "at most 1 epoch" in methods and "best source-validation score" in methods
    assert "30 patient-level bootstrap resamples" in methods


def test_results_table_shows_estimates_with_cis_in_human_columns(run):
    out, md, _ = run
    rows = {r["method"]: r for r in md_table(section(md, "### Cross-site results"))}
    assert set(rows) == {"erm", "histogram_matching"}
    for row in rows.values():
        for column in ("AUC [95% CI]", "sensitivity [95% CI]", "specificity [95% CI]"):
            assert re.fullmatch(ESTIMATE_WITH_CI, row[column]), (column, row[column])
    assert rows["erm"]["transductive"] == "no" and rows["histogram_matching"]["transductive"] == "yes"
    summary = json.loads((out / "study/runs/site_c/erm/seed0/summary.json").read_text())
    sensitivity = summary["aggregates"]["erm"]["site_c"]["sensitivity"]
    assert rows["erm"]["sensitivity [95% CI]"].startswith(f"{sensitivity['value']:.3f} [{sensitivity['ci'][0]:.3f}")
    for raw in ("auc_lo", "gap_auc", "insite_auc", "site_classifier_acc", "target_site", "True", "False"):
        assert raw not in md, raw


def test_each_method_and_target_has_its_heading_numbers_and_figures(run):
    out, md, html = run
    for method in ("erm", "histogram_matching"):
        part = section(md, f"### {method} -> site_c")
        assert re.search(f"AUC {ESTIMATE_WITH_CI}, sensitivity {ESTIMATE_WITH_CI}, specificity {ESTIMATE_WITH_CI}",
                         part)
        for figure in ("roc.png", "reliability.png", "training_curves.png", "gradcam_site_c.png"):
            assert part.count(f"(study/runs/site_c/{method}/seed0/figures/{figure})") + part.count(
                f"(study/runs/site_c/{method}/seed0/explanations/{figure})") == 1, figure
        assert f"gradcam attributions of {method} at site_c" in part  # the caption names method and site
        assert (out / f"study/runs/site_c/{method}/seed0/figures/training_curves.png").stat().st_size > 0
        page = html.split(f"<h3>{method} -&gt; site_c</h3>", 1)[1].split("<h", 1)[0]
        assert "<img alt='training_curves' src='data:image/png;base64," in page
    sources = re.findall(r"<img [^>]*src='([^']*)'", html)
    assert all(s.startswith("data:image/png;base64,") for s in sources)  # the page stays self-contained


def test_every_time_has_a_unit(run):
    _, md, _ = run
    rows = md_table(section(md, "## Tracking and timings"))
    assert rows[-1]["step"] == "total"
    assert all(re.fullmatch(r"\d+(\.\d)? s|\d+ min \d+ s", r["wall time"]) for r in rows), rows


def explanations(n: int = 3) -> ImageExplanations:
    mask = torch.zeros(n, 1, 16, 16)
    mask[:, :, 4:9, 4:9] = 1
    return ImageExplanations(torch.rand(n, 1, 16, 16), mask, torch.ones(n, dtype=torch.bool),
                             torch.randn(n, 1, 16, 16), [f"case{i}" for i in range(n)], ["site_c"] * n)


def test_attribution_grid_has_a_colour_scale_and_says_what_it_shows():
    title = case_grid_title("gradcam", "site_c", method="dann")
    assert all(name in title for name in ("gradcam", "dann", "site_c"))
    figure = case_grid_figure(explanations(), title=title)
    colour_bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == 1 and "attribution" in colour_bars[0].get_ylabel()
    assert figure.get_suptitle() == title
