"""A config that cannot be used is refused when it is read, in one line naming the file.

Each case runs the real command line from a temporary folder with a relative path, as a
user types it: exit 2, one line on stderr, no traceback, and no work started.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

BAD_CONFIGS = {
    "binary": (b"PK\x03\x04\x14\x00\x00\x00\x08\x00\xff\xfe", "not a text file"),
    "empty": (b"", "has no settings"),
    "only_comments": (b"# epochs: 3\n", "has no settings"),
    # a merge key's values may be overridden (epochs), a key given twice may not (lr)
    "duplicate_key": (b"defaults: &d {epochs: 1}\ntrain:\n  <<: *d\n  epochs: 2\n  lr: 0.1\n  lr: 0.2\n"
                      b"data:\n  cohorts: [nowhere]\n",
                      "line 6, column 3: key 'lr' appears twice in one mapping (first on line 5)"),
    "unknown_encoder": (b"model:\n  encoder: unte\ndata:\n  cohorts: [nowhere]\n",
                        "model.encoder: Value error, unknown encoder 'unte'; known: hybrid, timm, unet, vit"),
    "unknown_fusion": (b"model:\n  fusion: late\ndata:\n  cohorts: [nowhere]\n",
                       "model.fusion: Value error, unknown fusion 'late'; known: concat, cross_attention, "),
    "unknown_balancer": (b"loss:\n  balancer: uncertainity\ndata:\n  cohorts: [nowhere]\n",
                         "loss.balancer: Value error, unknown loss balancer 'uncertainity'; known: dwa, fixed, "),
}


def senolab(*args: str, cwd) -> subprocess.CompletedProcess:
    # the old behaviour for an empty config was to start the default job: the timeout ends it
    return subprocess.run([sys.executable, "-m", "senolab.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=90)


def assert_refused_in_one_line(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_train_refuses_a_bad_config_when_reading_it(case, tmp_path):
    content, problem = BAD_CONFIGS[case]
    (tmp_path / "config.yaml").write_bytes(content)
    result = senolab("train", "config.yaml", "--out", "out", cwd=tmp_path)
    assert_refused_in_one_line(result, "config.yaml: ", problem)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "study", "run", "fusion ablate"])
def test_each_config_command_refuses_an_empty_config(command, tmp_path):
    (tmp_path / "config.yaml").write_text("")
    result = senolab(*command.split(), "config.yaml", "--out", "out", cwd=tmp_path)
    assert_refused_in_one_line(result, "config.yaml: the config has no settings")


@pytest.mark.parametrize("found", ["folder", "nothing"])
def test_train_names_what_stands_where_the_config_should_be(found, tmp_path):
    if found == "folder":
        (tmp_path / "config.yaml").mkdir()
    result = senolab("train", "config.yaml", cwd=tmp_path)
    assert_refused_in_one_line(result, f"config.yaml: expected a config file, found {'a folder' if found == 'folder' else 'nothing'}")


def test_yaml_syntax_error_names_line_without_quoting_the_source(tmp_path):
    (tmp_path / "config.yaml").write_text("name: a\ndata: [synthetic\n")
    result = senolab("train", "config.yaml", cwd=tmp_path)
    assert_refused_in_one_line(result, "config.yaml: not valid YAML, line 3")

