"""`senolab --help` answers at once: the CLI and the package imports pull in no heavy library.

Each check runs a fresh interpreter, as a user's shell would: in this test process torch
and pandas are long imported by other tests.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

import senolab

HEAVY = ("torch", "pandas", "scipy", "mlflow", "onnx", "onnxruntime", "onnxscript")

COMMANDS = [[], ["cohorts", "describe"], ["radiomics", "extract"], ["radiomics", "describe"], ["train"],
            ["evaluate"], ["predict"], ["export"], ["study"], ["stress"], ["run"], ["fusion", "ablate"],
            ["sync"], ["pretrain"]]

# each package with an __init__ of its own -> {registry: (the module that defines it, every entry it lists once that module is imported)}
REGISTRIES = {
    "adaptation": {"METHODS": ("senolab.adaptation.base", [
        "adabn", "coral", "cyclegan", "dann", "entropy", "erm", "fedadam", "fedavg", "fedbn", "fedbn_adabn",
        "fedprox", "histogram_matching", "local", "mmd", "per_image_standardisation", "self_training"])},
    "evaluation": {"METRICS": ("senolab.evaluation.metrics", [
        "accuracy", "auc", "auc_positive", "balanced_accuracy", "box_iou", "dice", "dice_vs_circle", "ece", "f1",
        "fp_rate_lesion_free", "hd95_mm", "hd95_px", "iou", "iou_vs_circle", "pred_area_lesion_free",
        "sensitivity", "specificity"]),
                   "RULES": ("senolab.evaluation.operating", ["sens90", "spec90", "youden"]),
                   "CORRUPTIONS": ("senolab.evaluation.corruptions", [
                       "blur", "depth_attenuation", "gain", "jpeg", "resolution", "shadowing", "speckle"])},
    "explain": {"EXPLAINERS": ("senolab.explain.image", ["gradcam", "integrated_gradients", "occlusion", "saliency"]),
                "READOUTS": ("senolab.explain.forward", ["classification", "segmentation"])},
    "fusion": {"FUSIONS": ("senolab.fusion.base", [
        "concat", "cross_attention", "decision", "graph", "image_only", "tabular_only"])},
    "models": {"ENCODERS": ("senolab.models.encoders", ["hybrid", "timm", "unet", "vit"]),
               "HEADS": ("senolab.models.heads", ["box", "cls", "seg"]),
               "BALANCERS": ("senolab.models.balancers", ["dwa", "fixed", "gradnorm", "uncertainty"])},
    "pretrain": {"SSL_METHODS": ("senolab.pretrain.methods", ["byol", "mae", "simclr"])},
    "radiomics": {"HYGIENE": ("senolab.radiomics.hygiene", [
        "combat", "drop_constant", "drop_correlated", "drop_incomplete", "standardise"])},
    "tracking": {},
}


def python(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def imported_modules(importtime_log: str) -> set[str]:
    """Top-level names of the modules that ``python -X importtime`` reports importing."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0]
            for line in importtime_log.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "senolab")
def test_help_imports_no_heavy_library(command, tmp_path):
    run = python("-X", "importtime", "-m", "senolab.cli", *command, "--help", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: senolab" in run.stdout
    assert not imported_modules(run.stderr) & set(HEAVY)


def test_version(tmp_path):
    run = python("-m", "senolab.cli", "--version", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"senolab {senolab.__version__}"


@pytest.mark.parametrize("package", sorted(REGISTRIES))
def test_package_import_is_light_yet_its_names_and_registries_are_whole(package, tmp_path):
    script = f"""
import importlib, pkgutil, sys, types
import senolab.{package} as package
heavy = [m for m in {HEAVY!r} if m in sys.modules]
assert not heavy, f"importing senolab.{package} imported {{heavy}}"
for registry, (module, entries) in {REGISTRIES[package]!r}.items():
    names = getattr(importlib.import_module(module), registry).names()
    assert names == entries, f"{{registry}} lists {{names}} after importing {{module}}"
# every module imported first, as other code may: a name exported from its same-named
# module (evaluation.bootstrap) must still be the function, not the module
for info in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"senolab.{package}.{{info.name}}")
modules = [name for name in package.__all__ if isinstance(getattr(package, name), types.ModuleType)]
assert not modules, f"names that resolve to modules: {{modules}}"
"""
    run = python("-c", script, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
