"""`senolab radiomics extract ROOT... --out F.parquet` and `senolab radiomics describe F.parquet`.

``extract`` checks its inputs before any work: the parameter file, that ``--out``'s folder
and the cache can be written (one line ``error: ...`` and exit 2 otherwise). At the end it
prints what was extracted, what failed and which cases the readers skipped, and writes the
same beside the table as ``F.summary.json`` (fields: :mod:`senolab.radiomics.report`).

Only the standard library is imported at the top: ``senolab --help`` imports this module.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    radiomics = subparsers.add_parser("radiomics", help="pyradiomics feature tables per lesion")
    sub = radiomics.add_subparsers(dest="radiomics_command", metavar="ACTION", required=True)
    _register_extract(sub)
    _register_describe(sub)


def _register_extract(sub) -> None:
    extract = sub.add_parser(
        "extract",
        help="2D pyradiomics features of every lesion of one or more cohorts, cached, in parallel",
        description="Extract pyradiomics features (firstorder, shape2D, GLCM, GLRLM, GLSZM, GLDM, NGTDM) of every "
        "lesion mask into a parquet table keyed by case_id and lesion_index. Results are cached by the content "
        "of image and mask and by the parameters: a second run computes nothing. Beside the table, F.summary.json "
        "(for --out F.parquet) counts the cases read, lesions extracted and failed, and lists every failure and "
        "every case skipped while reading, each with its file and reason; the same is printed at the end.",
    )
    extract.add_argument("roots", nargs="+", type=Path, metavar="ROOT", help="dataset folders (layout is detected)")
    extract.add_argument("--out", type=Path, required=True,
                         help="output parquet file F.parquet; its summary goes beside it as F.summary.json")
    extract.add_argument("-j", "--jobs", type=int, default=None, help="worker processes (default: all cores)")
    extract.add_argument("--params", type=Path, default=None,
                         help="pyradiomics parameter YAML (default: senolab's shipped default_2d.yaml)")
    extract.add_argument("--cache", type=Path, default=None,
                         help="cache folder (default: $SENOLAB_CACHE_DIR/radiomics, else ~/.cache/senolab/radiomics)")
    extract.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    extract.add_argument("--strict", action="store_true",
                         help="a bad case (unreadable file, unusable mask) is fatal instead of a failed row")
    extract.add_argument("--quiet", action="store_true", help="no progress bars")
    extract.set_defaults(func=run_extract)


def _register_describe(sub) -> None:
    describe = sub.add_parser(
        "describe",
        help="features, failures and the features that shift most between sites (a figure with --figure)",
    )
    describe.add_argument("file", type=Path, metavar="FILE", help="a parquet table from `senolab radiomics extract`")
    describe.add_argument("--top", type=int, default=8, help="how many site-shifting features to list (default: 8)")
    describe.add_argument("--figure", type=Path, default=None, metavar="PNG",
                          help="also save the failures and site-shift figure to PNG (none by default)")
    describe.add_argument("--json", action="store_true", help="print a machine-readable summary instead of text")
    describe.set_defaults(func=run_describe)


def run_extract(args: argparse.Namespace) -> int:
    from senolab.cohorts.readers import read_cohort
    from senolab.cohorts.schema import combine
    from senolab.errors import InputError
    from senolab.radiomics.extract import extract_features
    from senolab.radiomics.parameters import load_params
    from senolab.radiomics.report import extraction_summary, skipped_lines, summary_path, write_summary
    from senolab.radiomics.table import RadiomicsError

    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"-j/--jobs must be at least 1, got {args.jobs}")
    # Bad parameters, cohorts and outputs are InputErrors, which `senolab` prints as one
    # line; the parameters and outputs are checked before the cohorts are even read.
    params = load_params(args.params)
    cache_dir = _writable_outputs(args)
    cohorts = [read_cohort(root, strict=args.strict, progress=not args.quiet) for root in args.roots]
    cohort = cohorts[0] if len(cohorts) == 1 else combine(cohorts)
    try:
        result = extract_features(cohort, params, jobs=args.jobs, cache_dir=cache_dir, use_cache=cache_dir is not None,
                                  strict=args.strict, progress=not args.quiet)
    except RadiomicsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = result.write(args.out)
    summary = write_summary(extraction_summary(cohort, result, path), summary_path(path))
    print(result.summary())
    print("\n".join(skipped_lines(cohort.problems)) or "no case skipped while reading the cohort")
    if cache_dir is not None:
        print(f"cache: {cache_dir.resolve()}")
    print(f"features: {path.resolve()} (parameters hash {params.hash[:12]}, pyradiomics {params.pyradiomics_version})")
    print(f"summary: {summary.resolve()}")
    return 0


def _writable_outputs(args: argparse.Namespace) -> Path | None:
    """Refuse an ``--out`` or cache that cannot be written, before the long work that would
    end there; return the cache folder (None under ``--no-cache``)."""
    from senolab.errors import InputError
    from senolab.paths import describe_path, writable_folder
    from senolab.radiomics.cache import default_cache_dir

    found = describe_path(args.out)
    if found not in ("nothing", "a file"):
        raise InputError(f"{args.out}: --out must name a parquet file, found {found}")
    writable_folder(args.out.parent, "output folder")
    if args.no_cache:
        return None
    return writable_folder(args.cache or default_cache_dir(), "radiomics cache")


def run_describe(args: argparse.Namespace) -> int:
    from senolab.radiomics.describe import describe_features, describe_figure, format_description
    from senolab.radiomics.table import RadiomicsError, load_features

    try:
        table = load_features(args.file)
    except RadiomicsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = describe_features(table, top=args.top)
    print(json.dumps(summary, indent=1) if args.json else format_description(table, summary))
    if args.figure is not None:
        path = describe_figure(table, summary, args.figure)
        if path is not None:
            print(f"figure: {path.resolve()}", file=sys.stderr if args.json else sys.stdout)
    return 0
