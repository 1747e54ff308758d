"""The README's command lines parse, and every shipped config validates."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO
from senolab.cli import build_parser

README = (REPO / "README.md").read_text()
COMMAND_LINES = sorted({line.split("#")[0].strip() for block in re.findall(r"```\n(.*?)```", README, re.S)
                        for line in block.splitlines() if line.strip().startswith("senolab ")})


def _subcommand_path(line: str) -> list[str]:
    """The words naming the subcommand (`senolab radiomics extract ROOT ...` -> radiomics extract)."""
    words = shlex.split(line)[1:]
    parser, path = build_parser(), []
    for word in words:
        actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not actions or word not in actions[0].choices:
            break
        path.append(word)
        parser = actions[0].choices[word]
    return path


def test_readme_shows_commands():
    assert len(COMMAND_LINES) >= 8
    assert "make run" in README and "make test" in README


@pytest.mark.parametrize("line", COMMAND_LINES)
def test_readme_command_parses(line, capsys):
    path = _subcommand_path(line)
    if not path:  # a top-level option such as --version answers and exits 0
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(shlex.split(line)[1:])
        assert exit_.value.code == 0 and capsys.readouterr().out.strip(), f"README line does nothing: {line}"
        return
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*path, "--help"])
    assert exit_.value.code == 0
    assert "usage: senolab " + " ".join(path) in capsys.readouterr().out


def _loader(path: Path):
    from senolab.engine.config import load_config
    from senolab.runners.main_job import load_run_config
    from senolab.runners.study import load_study_config
    from senolab.runners.ablation import load_ablation

    loaders = {"train": load_config, "study": load_study_config, "fusion": load_ablation, "run": load_run_config,
               "pretrain": lambda p: load_config(p, kind="pretrain")}
    return loaders[path.stem.split("_")[0]]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_validates(path):
    assert _loader(path)(path) is not None
