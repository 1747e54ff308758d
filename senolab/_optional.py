"""Optional heavy dependencies, imported on first use with an error that names the extra.

In the spirit of MONAI's ``optional_import``: the core (cohorts, evaluation, CNN models)
imports without pyradiomics, transformers, torch-geometric, captum or mlflow.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# module name -> the pip extra of senolab that installs it
EXTRAS = {
    "radiomics": "radiomics",
    "SimpleITK": "radiomics",
    "transformers": "vit",
    "torch_geometric": "graph",
    "captum": "explain",
    "mlflow": "tracking",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "timm": "timm",
    "safetensors": "timm",
    "lightly": "ssl",
    "ray": "scale",
    "flwr": "federated",
}


class MissingDependency(ImportError):
    pass


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an error that says which senolab extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise MissingDependency(
            f"{module} is needed here but is not installed: pip install 'senolab[{extra}]' "
            f"(or run `make setup`, which installs every extra)"
        ) from err
