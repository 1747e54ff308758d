"""The `senolab` command. Each sub-package with commands registers them itself."""
from __future__ import annotations

import argparse
import importlib
import sys

from senolab import __version__

# One line per sub-package that has commands; each module exposes register(subparsers).
COMMAND_MODULES = [
    "senolab.cohorts.cli",
    "senolab.runners.cli",
    "senolab.radiomics.cli",
    "senolab.tracking.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="senolab",
        description="Breast-imaging research across institutions: cohorts, radiomics, "
        "fused multi-task models, domain adaptation, explanations, tracking.",
    )
    parser.add_argument("--version", action="version", version=f"senolab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from senolab.errors import InputError, WorkFailed

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        # a bad config, dataset, path or option: the message names it and what was expected
        print(f"error: {err}", file=sys.stderr)
        return 2
    except WorkFailed as err:  # recorded in the output folder; the rest of the work finished
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
