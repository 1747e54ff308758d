"""The runners' commands: `senolab train`, `evaluate`, `study`, `stress`, `run`, `predict`, `export`, `pretrain` and `fusion ablate`.

Each handler imports its runner only when called, so `senolab --help` stays light."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


TRACKING_HELP = "an MLflow server or store (default: an SQLite store in the output folder)"


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train and evaluate one model from a YAML config",
                                  description="Train one multi-task model and evaluate it on the held-out part.")
    train.add_argument("config", type=Path, help="experiment YAML (see configs/)")
    train.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<config name>)")
    train.add_argument("--tracking-uri", default=None, metavar="URI", help=TRACKING_HELP)
    train.add_argument("--devices", type=int, default=None, metavar="N",
                       help="data-parallel processes (default: the config's train.devices, else 1)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser("evaluate", help="evaluate a trained run on another cohort",
                                     description="Apply a trained model to every case of another cohort.")
    evaluate.add_argument("run_dir", type=Path, help="a directory written by `senolab train`")
    evaluate.add_argument("--on", dest="root", type=Path, required=True, help="dataset folder (layout detected)")
    evaluate.add_argument("--out", type=Path, default=None, help="where to write (default: RUN_DIR/eval_<name>)")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=run_evaluate)


    study = subparsers.add_parser("study", help="cross-institution study: methods x target sites (resumable)",
                                  description="Train at some sites, test at an unseen one, for each adaptation "
                                  "method; a stopped study continues where it stopped.")
    study.add_argument("config", type=Path, help="study YAML (see configs/study_*.yaml)")
    study.add_argument("--out", type=Path, default=None, help="study directory (default: runs/<study name>)")
    study.add_argument("--tracking-uri", default=None, metavar="URI", help=TRACKING_HELP)
    study.add_argument("--executor", choices=["sequential", "ray"], default=None,
                       help="how runs are carried out (default: the config's executor.name, else sequential)")
    study.add_argument("--address", default=None, metavar="ADDRESS",
                       help="with --executor ray: a Ray cluster to join (default: start one on this machine)")
    study.add_argument("--quiet", action="store_true")
    study.set_defaults(func=run_study_command)


    run = subparsers.add_parser("run", help="the main job: the whole study, tracked, with a report",
                                description="cohorts -> radiomics -> fused multi-task model -> domain adaptation -> "
                                "cross-site evaluation -> explanations -> MLflow -> report. With no CONFIG, the "
                                "built-in quickstart on synthetic multi-site data.")
    run.add_argument("config", type=Path, nargs="?", default=None, help="run YAML (default: the quickstart)")
    run.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="run folder (default: %(default)s)")
    run.add_argument("--tracking-uri", default=None, metavar="URI", help=TRACKING_HELP)
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(func=run_main_command)

    predict = subparsers.add_parser(
        "predict", help="apply a trained model to new images (no labels needed)",
        description="Predict every image of INPUT (a file, a folder searched recursively, or a case manifest folder "
                    "whose metadata columns a fusing model reads) with MODEL (a training run or study unit folder, a "
                    "model/ folder, or an MLflow URI such as runs:/<id>/model; with --backend onnxruntime, a folder "
                    "written by `senolab export` or its .onnx file). Writes predictions.csv, masks/, overlays/, "
                    "summary.json and, with --explain, explanations/ to --out.")
    predict.add_argument("model", help="run folder, model folder or MLflow model URI (or an ONNX export)")
    predict.add_argument("input", type=Path,
                         help="an image, a folder of images (PNG, JPEG, PGM, TIFF, BMP, DICOM .dcm/.dicom) "
                              "or a case manifest folder (manifest.csv/json + manifest.yaml)")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--threshold", default="0.5", metavar="RULE|P",
                         help="malignancy probability from which a case is called malignant: a number, or youden, "
                              "sens90 or spec90 for the threshold chosen on source validation and stored with the "
                              "model (default: %(default)s)")
    predict.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                         help="torch: the packaged PyTorch model (BatchNorm folded); onnxruntime: the model "
                              "written by `senolab export` (default: %(default)s)")
    predict.add_argument("--explain", nargs="?", const="gradcam", default=None, metavar="METHODS",
                         help="also write Captum attribution maps per image, for these comma-separated methods "
                              "(integrated_gradients, gradcam, occlusion, saliency; default when given alone: "
                              "%(const)s); torch backend only")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=run_predict)

    export = subparsers.add_parser(
        "export", help="export a trained model to ONNX (optionally int8), with a parity check",
        description="Export RUN's model (as `senolab predict` takes MODEL) to ONNX with a dynamic batch size and its "
                    "preprocessing.json beside it, then check it against the PyTorch model on held-out cases "
                    "(largest output difference, AUC and Dice; parity.json). Image-only models. Exits 1 when the "
                    "check fails.")
    export.add_argument("run", metavar="RUN", help="training run or study unit folder, model folder or MLflow URI")
    export.add_argument("--format", dest="fmt", default="onnx", choices=["onnx"], help="(default: %(default)s)")
    export.add_argument("--int8", action="store_true",
                        help="also write model.int8.onnx: static quantisation calibrated on training images only")
    export.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/onnx)")
    export.add_argument("--quiet", action="store_true", help="no progress bars")
    export.set_defaults(func=run_export)

    stress = subparsers.add_parser(
        "stress", help="graded stress test: AUC and Dice under ultrasound corruptions at five severities",
        description="Apply each ultrasound corruption (gain, speckle, depth attenuation, blur, lost resolution, "
                    "acoustic shadowing, JPEG) at severities 1-5 to a test cohort and measure every model of RUN on it "
                    "(AUC and Dice with patient-bootstrap CIs). RUN: a `senolab train` folder, a study unit folder "
                    "(runs/<target>/<method>/seed<k>) or a study folder (every unit). Writes stress.csv, stress.md, "
                    "stress.png, corruption_examples.png and summary.json to --out.")
    stress.add_argument("run_dir", type=Path, metavar="RUN", help="training run, study unit or study folder")
    stress.add_argument("--on", dest="root", required=True,
                        help="test cohort: a dataset folder (layout detected) or 'synthetic' (the run's own synthetic "
                             "data; a study unit keeps its target site, a training run its test part)")
    stress.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/stress_<cohort name>)")
    stress.add_argument("--seed", type=int, default=0, help="corruption seed: the same seed gives the same pixels")
    stress.add_argument("--tracking-uri", default=None, metavar="URI", help=TRACKING_HELP)
    stress.add_argument("--quiet", action="store_true", help="no progress bars")
    stress.set_defaults(func=run_stress)

    pretrain = subparsers.add_parser(
        "pretrain", help="self-supervised pretraining of an encoder on unlabelled images (resumable)",
        description="Pretrain an encoder (encoder: timm) with a self-supervised method (simclr, byol; mae for ViTs) "
                    "on the images of the config's cohorts, never reading a label, mask or outcome; a k-NN monitor "
                    "on the labelled validation part every few epochs. Writes encoder.safetensors (what "
                    "encoder_options.pretrained: PATH loads), history.csv and pretrain.json to --out.")
    pretrain.add_argument("config", type=Path, help="pretrain YAML (kind: pretrain)")
    pretrain.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<config name>)")
    pretrain.add_argument("--tracking-uri", default=None, metavar="URI", help=TRACKING_HELP)
    pretrain.add_argument("--quiet", action="store_true", help="no progress bars")
    pretrain.set_defaults(func=run_pretrain)

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
    ablate.add_argument("--tracking-uri", default=None, metavar="URI", help=TRACKING_HELP)
    ablate.add_argument("--quiet", action="store_true", help="no progress bars")
    ablate.set_defaults(func=run_ablate)


def run_main_command(args: argparse.Namespace) -> int:
    from senolab.runners.main_job import load_run_config, run_main

    config = load_run_config(args.config)
    if args.tracking_uri:
        config = config.model_copy(update={"tracking_uri": args.tracking_uri})
    report = run_main(config, args.out, progress=not args.quiet)
    print(_run_summary(report, args.out))
    return 0


def _run_summary(report: dict, out: Path) -> str:
    """What the terminal shows at the end of `senolab run`: the headline per method and
    target, and where to look further (the full tables are in the report)."""
    lines = ["", f"senolab run {report['name']!r}: AUC at the unseen target site (patient-bootstrap 95% CI)"]
    for row in report["study"].to_dict("records"):
        auc = f"{row['auc']:.3f} [{row['auc_lo']:.3f}, {row['auc_hi']:.3f}]" if row.get("auc") == row.get("auc") else "-"
        dice = f", Dice {row['dice']:.3f}" if "dice" in row and row["dice"] == row["dice"] else ""
        lines.append(f"  {row['method']:<20} -> {row['target_site']}: AUC {auc}{dice}"
                     f"{'  (transductive)' if row.get('transductive') else ''}")
    lines += [f"report:  {(out / 'report.html').resolve()}  (and report.md)", report["tracking"]]
    return "\n".join(lines)


def run_predict(args: argparse.Namespace) -> int:
    from senolab.runners.predict import predict_images

    explain = [m.strip() for m in args.explain.split(",") if m.strip()] if args.explain else []
    summary = predict_images(args.model, args.input, args.out, threshold=args.threshold, progress=not args.quiet,
                             backend=args.backend, explain=explain)
    print(f"{summary['predicted']} of {summary['found']} images predicted ({args.backend}, threshold "
          f"{summary['threshold']:.3f}: {summary['threshold_rule']}); written to {args.out.resolve()}")
    if summary["other_modality"]:
        print(f"  {len(summary['other_modality'])} images are not {summary['model_modality']}, the modality the "
              f"model was trained on: their predictions are outside what it learnt (e.g. {summary['other_modality'][0]})")
    ignored = summary["metadata"]["ignored"]
    if ignored:
        print(f"  metadata columns the model does not use, ignored: {', '.join(ignored)}")
    by_reason: dict[str, list[str]] = {}
    for item in summary["skipped"]:
        by_reason.setdefault(item["reason"], []).append(item["file"])
    for reason, files in by_reason.items():  # every file is listed in summary.json
        print(f"  skipped {len(files)}: {reason} (e.g. {files[0]})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from senolab.runners.export import export_run, parity_lines

    report = export_run(args.run, args.out, fmt=args.fmt, int8=args.int8, progress=not args.quiet)
    print("\n".join(parity_lines(report)))
    print(f"exported to {Path(report['folder']).resolve()} (parity.json)")
    if not report["passed"]:
        print("error: the exported model does not match the PyTorch model (see parity.json)", file=sys.stderr)
        return 1
    return 0


def run_stress(args: argparse.Namespace) -> int:
    from senolab.runners.stress import stress_test

    result = stress_test(args.run_dir, args.root, args.out, seed=args.seed, progress=not args.quiet,
                         tracking_uri=args.tracking_uri)
    print(result.markdown)
    print(f"stress test written to {result.out.resolve()}")
    return 0


def run_study_command(args: argparse.Namespace) -> int:
    from senolab.errors import WorkFailed
    from senolab.runners.study import load_study_config, run_study

    config = load_study_config(args.config)
    overrides = {key: value for key, value in (("name", args.executor), ("address", args.address)) if value}
    if overrides:  # the flags win over the config's executor section
        config.executor = config.executor.model_copy(update=overrides)
    out = args.out or Path("runs") / config.name
    try:
        run_study(config, out, progress=not args.quiet, tracking_uri=args.tracking_uri)
    except WorkFailed:  # some runs failed, the others finished: their table first, then the error
        if (out / "results.md").is_file():
            print((out / "results.md").read_text())
        raise
    print((out / "results.md").read_text())
    print("local recalibration, which USES k TARGET LABELS (kept apart): recalibration.md, recalibration.csv")
    print(f"study written to {out.resolve()}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from senolab.engine import distributed
    from senolab.engine.config import load_config
    from senolab.runners.experiment import train_and_evaluate

    overrides = {"train": {"devices": args.devices}} if args.devices else None
    config = load_config(args.config, overrides)
    out = args.out or Path("runs") / config.name
    devices = config.train.devices
    if devices > 1 and not distributed.launched():
        # run again as `devices` processes under torchrun (docs/distributed.md); rank 0 prints the results
        distributed.check_devices(config.train)
        argv = ["train", str(args.config.absolute()), "--out", str(out.absolute()), "--devices", str(devices)]
        argv += ["--tracking-uri", args.tracking_uri] if args.tracking_uri else []
        return distributed.launch(argv + (["--quiet"] if args.quiet else []), devices)
    summary = train_and_evaluate(config, out, progress=not args.quiet, tracking_uri=args.tracking_uri)
    if distributed.launched() and int(os.environ["RANK"]) != 0:
        return 0  # rank 0 reports the run
    _print_aggregates(summary)
    print(f"run written to {out.resolve()}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from senolab.runners.experiment import evaluate_run

    out = args.out or args.run_dir / f"eval_{args.root.name}"
    summary = evaluate_run(args.run_dir, args.root, out, progress=not args.quiet)
    _print_aggregates(summary)
    print(f"evaluation written to {out.resolve()}")
    return 0


def _print_aggregates(summary: dict) -> None:
    for method, sites in summary["aggregates"].items():
        for site, metrics in sites.items():
            if site == "worst_site":
                continue
            shown = ", ".join(
                f"{name} {m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"
                for name, m in metrics.items() if isinstance(m, dict) and m.get("value") is not None and m.get("ci")
            )
            print(f"{method} @ {site}: {shown}")
    sys.stdout.flush()


def run_pretrain(args: argparse.Namespace) -> int:
    from senolab.engine.config import load_config
    from senolab.runners.pretrain import WEIGHTS, pretrain_command

    config = load_config(args.config, kind="pretrain")
    out = args.out or Path("runs") / config.name
    record = pretrain_command(config, out, progress=not args.quiet, tracking_uri=args.tracking_uri)
    knn = f", k-NN accuracy {record['knn_acc']:.3f}" if record.get("knn_acc") is not None else ""
    print(f"{record['method']} on {record['pooled_images']} images, {record['epochs_run']} epochs, "
          f"{record['cpu_minutes']:.1f} CPU-minutes{knn}{'  (transductive: the test part was pooled)' if record['transductive'] else ''}")
    print(f"encoder weights: {(out / WEIGHTS).resolve()}  (encoder_options.pretrained: PATH)")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from senolab.runners.ablation import load_ablation, run_ablation

    config, options = load_ablation(args.config)
    out = args.out or Path("runs") / config.name
    result = run_ablation(config, options, out, progress=not args.quiet, tracking_uri=args.tracking_uri)
    print(result.markdown)
    print(f"wall time {result.seconds:.0f} s; results written to {out.resolve()}")
    return 0
