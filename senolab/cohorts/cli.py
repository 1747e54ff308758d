"""`senolab cohorts describe ROOT... [--json] [--strict] [--figure PNG]` and
`senolab cohorts manifest FOLDER [--out FILE] [--force]`.

Only the standard library is imported here: ``senolab --help`` builds every parser.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    cohorts = subparsers.add_parser("cohorts", help="read and describe cohorts")
    sub = cohorts.add_subparsers(dest="cohorts_command", metavar="ACTION", required=True)
    describe = sub.add_parser(
        "describe",
        help="images, patients, classes, lesions, metadata coverage, sizes, duplicate groups",
        description="Describe cohorts. With no ROOT, the built-in synthetic multi-site cohort.",
    )
    describe.add_argument("roots", nargs="*", type=Path, metavar="ROOT", help="dataset folders (layout is detected)")
    describe.add_argument("--json", action="store_true", help="print a machine-readable list instead of a table")
    describe.add_argument("--strict", action="store_true", help="stop at the first bad case instead of skipping it")
    describe.add_argument("--figure", type=Path, metavar="PNG",
                          help="also save the class-balance and intensity figure to PNG (none by default)")
    describe.set_defaults(func=run_describe)
    manifest = sub.add_parser(
        "manifest",
        help="write a starter manifest.csv and manifest.yaml for a folder of images, to edit",
        description="Write a starter case manifest for FOLDER from its tree: class sub-folders "
                    "(normal/benign/malignant) give the label, <name>_mask* files the masks of <name>, DICOM "
                    "headers the modality, laterality, view, scanner, spacing and patient. Edit it, then run "
                    "`senolab cohorts describe FOLDER`.",
    )
    manifest.add_argument("folder", type=Path, metavar="FOLDER", help="the folder tree of images")
    manifest.add_argument("--out", type=Path, metavar="FILE",
                          help="where to write the manifest: a manifest.csv or manifest.json in FOLDER or a "
                               "folder above it (default FOLDER/manifest.csv); the sidecar goes next to it")
    manifest.add_argument("--force", action="store_true", help="replace an existing manifest and sidecar")
    manifest.set_defaults(func=run_manifest)


def run_describe(args: argparse.Namespace) -> int:
    from senolab.cohorts.dedup import mark_duplicates
    from senolab.cohorts.describe import describe, describe_figure, format_table
    from senolab.cohorts.readers import read_cohort

    if args.figure is not None:
        _check_figure_path(args.figure)  # before reading: a bad path should not cost the reading
    progress = not args.json  # --json output is for programs: no bars on stderr either
    cohorts = [read_cohort(root, strict=args.strict, progress=progress) for root in args.roots] or [_synthetic_default()]
    summaries = [describe(mark_duplicates(c, progress=progress)) for c in cohorts]
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        print(format_table(summaries))
    if args.figure is not None:
        path = describe_figure(cohorts, args.figure)
        print(f"figure: {path.resolve()}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    from senolab.cohorts.starter import write_starter

    starter = write_starter(args.folder, out=args.out, force=args.force)
    print(starter.summary(args.folder))
    return 0


def _check_figure_path(figure: Path) -> None:
    from senolab.errors import InputError
    from senolab.paths import describe_path, writable_folder

    found = describe_path(figure)
    if found not in ("nothing", "a file"):
        raise InputError(f"{figure}: --figure names {found}; expected the name of a PNG file to write")
    writable_folder(figure.parent, "figure's folder")


def _synthetic_default():
    from senolab.cohorts.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig())
