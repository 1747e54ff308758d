"""`senolab fusion ablate CONFIG --out DIR`."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    fusion = subparsers.add_parser("fusion", help="multimodal fusion studies",
                                   description="Fusion of images with clinical metadata and radiomics.")
    commands = fusion.add_subparsers(dest="fusion_command", metavar="COMMAND", required=True)
    ablate = commands.add_parser(
        "ablate", help="image only vs + metadata / + radiomics / + both, for each fusion",
        description="Patient-level k-fold ablation of fusion modules and tabular inputs: AUC with bootstrap "
                    "CIs and DeLong p-values against image only. Writes results.csv, ablation.md, "
                    "ablation_auc.png and summary.json to --out.")
    ablate.add_argument("config", type=Path, help="ablation YAML: an experiment config with an 'ablation' section")
    ablate.add_argument("--out", type=Path, default=None, help="output directory (default: runs/<config name>)")
    ablate.add_argument("--quiet", action="store_true", help="no progress bars")
    ablate.set_defaults(func=run_ablate)


def run_ablate(args: argparse.Namespace) -> int:
    from senolab.fusion.ablation import load_ablation, run_ablation

    config, options = load_ablation(args.config)
    out = args.out or Path("runs") / config.name
    result = run_ablation(config, options, out, progress=not args.quiet)
    print(result.markdown)
    print(f"wall time {result.seconds:.0f} s; results written to {out.resolve()}")
    return 0
