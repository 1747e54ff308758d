"""Names in a run config are checked when it is read: an unknown explainer or method is one
line (exit 2) before any cohort is read or model trained. The first session's code found an
unknown explainer only after every model of the study had trained."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml


@pytest.mark.parametrize("section, names, message", [
    ("explain", {"methods": ["gradcam", "saliency_of_doom"]}, "unknown explainers ['saliency_of_doom']"),
    ("study", {"methods": ["erm", "not_a_method"]}, "unknown ['not_a_method']"),
])
def test_unknown_names_are_refused_when_the_config_is_read(tmp_path, section, names, message):
    config = {"kind": "run", "study": {"name": "s"}, section: names} if section == "explain" else {"kind": "run", section: names}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "senolab.cli", "run", "bad.yaml", "--out", "runs/bad"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.yaml") and message in lines[0], result.stderr
    assert not (tmp_path / "runs").exists(), "nothing is written for a refused config"
    print(f"refused in {time.perf_counter() - began:.1f} s")
