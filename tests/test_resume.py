"""Resuming never reuses results made with another configuration, and skipped cases are
reported. Each runner is driven through the real CLI (in-process `senolab.cli.main`, from
a working folder with relative paths, as a user types it).

Before: `senolab train` on an existing folder with another split seed skipped training,
rewrote config.yaml and split.csv and scored the old model on cases it had trained on;
`senolab study` with another lr returned byte-identical results under the new settings;
`senolab evaluate --on` dropped unreadable images without a word.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from senolab.cli import main as senolab

TINY = {
    "kind": "experiment",
    "name": "tiny",
    "data": {"cohorts": ["synthetic"], "synthetic": {"n_sites": 2, "images_per_site": 16, "image_size": 64},
             "image_size": 32, "split": {"kind": "holdout", "test_fraction": 0.25, "seed": 0}},
    "model": {"heads": {"classification": True, "segmentation": True, "bbox": False}},
    "train": {"epochs": 1, "batch_size": 8},
    "evaluation": {"bootstrap": 10},
}


@pytest.fixture
def workdir(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_yaml(path: str, content: dict) -> str:
    Path(path).write_text(yaml.safe_dump(content))
    return path


def changed(config: dict, section: str, key: str, value) -> dict:
    copy = json.loads(json.dumps(config))
    part = copy
    for name in section.split("."):
        part = part[name]
    part[key] = value
    return copy


def test_train_refuses_a_folder_trained_with_another_split(workdir, capsys):
    assert senolab(["train", write_yaml("tiny.yaml", TINY), "--out", "runs/tiny", "--quiet"]) == 0
    split = Path("runs/tiny/split.csv").read_text()
    best = Path("runs/tiny/model/artifacts/model.pt").stat().st_mtime_ns
    capsys.readouterr()

    other = write_yaml("other.yaml", changed(TINY, "data.split", "seed", 1))
    assert senolab(["train", other, "--out", "runs/tiny", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "data.split.seed: 0 -> 1" in error and "another configuration" in error
    assert Path("runs/tiny/split.csv").read_text() == split  # nothing rewritten
    assert Path("runs/tiny/model/artifacts/model.pt").stat().st_mtime_ns == best
    # the same config resumes (a finished run: nothing retrained)
    assert senolab(["train", "tiny.yaml", "--out", "runs/tiny", "--quiet"]) == 0
    assert Path("runs/tiny/model/artifacts/model.pt").stat().st_mtime_ns == best


def test_study_refuses_a_folder_of_another_lr(workdir, capsys):
    study = {"kind": "study", "name": "tiny_study", "base": TINY, "protocol": "pairwise",
             "pairs": [{"sources": ["site_a"], "target": "site_b"}], "methods": ["erm"], "embedding_figure": False}
    assert senolab(["study", write_yaml("study.yaml", study), "--out", "runs/study", "--quiet"]) == 0
    results = Path("runs/study/results.csv").read_bytes()
    capsys.readouterr()
    faster = write_yaml("faster.yaml", changed(study, "base.train", "lr", 0.01))
    assert senolab(["study", faster, "--out", "runs/study", "--quiet"]) == 2
    assert "base.train.lr: 0.002 -> 0.01" in capsys.readouterr().err
    assert yaml.safe_load(Path("runs/study/study.yaml").read_text())["base"]["train"]["lr"] == 0.002
    assert Path("runs/study/results.csv").read_bytes() == results


def test_evaluate_reports_unreadable_images(workdir, capsys):
    from senolab.cohorts.synthetic import SyntheticConfig, write

    assert senolab(["train", write_yaml("tiny.yaml", TINY), "--out", "runs/tiny", "--quiet"]) == 0
    other = write(SyntheticConfig(images_per_site=6, image_size=64, seed=3), Path("other_site"), progress=False)
    image = next(p for p in sorted(Path(other).rglob("*.png")) if not p.stem.endswith("_mask"))
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated" * 10)
    capsys.readouterr()

    assert senolab(["evaluate", "runs/tiny", "--on", "other_site", "--out", "runs/eval", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "case(s) skipped" in printed and str(image) in printed
    skipped = json.loads(Path("runs/eval/summary.json").read_text())["skipped"]
    assert [s["reason"] for s in skipped if s["file"] == str(image)]


def test_evaluate_refuses_a_folder_that_is_not_a_training_run(workdir, capsys):
    Path("not_a_run").mkdir()
    Path("a_file").write_text("x")
    assert senolab(["evaluate", "not_a_run", "--on", "."]) == 2
    assert "not a finished `senolab train` run" in capsys.readouterr().err
    assert senolab(["evaluate", "a_file", "--on", "."]) == 2
    assert "expected a training run folder, found a file" in capsys.readouterr().err
    shutil.rmtree("not_a_run")


def test_fusion_ablation_refuses_a_folder_of_another_config(workdir, capsys):
    from test_fusion import TINY_ABLATION

    Path("ablation.yaml").write_text(TINY_ABLATION)
    assert senolab(["fusion", "ablate", "ablation.yaml", "--out", "runs/ablation", "--quiet"]) == 0
    done = sorted(str(p) for p in Path("runs/ablation/runs").rglob("done.json"))
    assert len(done) == 2 * 3  # per fold: the stage-1 image model and two variants
    capsys.readouterr()
    Path("other.yaml").write_text(TINY_ABLATION.replace("folds: 2", "folds: 3"))
    assert senolab(["fusion", "ablate", "other.yaml", "--out", "runs/ablation", "--quiet"]) == 2
    assert "ablation.folds: 2 -> 3" in capsys.readouterr().err


def test_quiet_means_no_progress_bars(workdir):
    """`--quiet` silences the readers' bars too (they used to draw whatever the flag said)."""
    import subprocess
    import sys

    from senolab.cohorts.synthetic import SyntheticConfig, write

    write(SyntheticConfig(images_per_site=16, image_size=64), Path("disk"), progress=False)
    config = {**TINY, "data": {**TINY["data"], "cohorts": ["disk"]}}
    write_yaml("disk.yaml", config)
    result = subprocess.run([sys.executable, "-m", "senolab.cli", "train", "disk.yaml", "--out", "runs/disk", "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "img/s" not in result.stderr and "%|" not in result.stderr, result.stderr[-2000:]
