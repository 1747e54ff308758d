"""pyradiomics parameters: the shipped 2D file, a user's own file, and their fingerprint.

A parameter file is YAML in pyradiomics' own schema and is validated by pyradiomics. On
top of that senolab requires what its 2D extraction needs: ``force2D`` false (images are
given to pyradiomics as true 2D images, see ``params/default_2d.yaml`` for why force2D
would then drop a direction), the 3D ``shape`` class off, binary masks with label 1.
:class:`RadiomicsParams` carries the parsed parameters, the pyradiomics version and a hash
of both: the hash keys the cache and is recorded with every feature table.
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import yaml

from senolab._optional import require
from senolab.errors import InputError
from senolab.paths import describe_path

DEFAULT_PARAMS_FILE = Path(str(resources.files("senolab.radiomics") / "params" / "default_2d.yaml"))

# Bumped whenever senolab changes how it feeds pyradiomics (decoding, pixel type, mask
# label, spacing policy): it enters the hash, so old cache entries stop matching.
EXTRACTION_VERSION = 1

# Feature classes pyradiomics computes for a 2D lesion; 3D `shape` is deliberately absent.
CLASSES_2D = ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


class ParamsError(InputError):
    """A parameter file is missing, unreadable, empty, invalid for pyradiomics, or unfit for
    2D lesions. The message is one line naming the file."""


@dataclass(frozen=True)
class RadiomicsParams:
    """Parsed pyradiomics parameters with their provenance.

    ``params`` is the dict pyradiomics' extractor accepts (``imageType``, ``featureClass``,
    ``setting``); ``source`` the file it came from; ``pyradiomics_version`` the installed
    version; ``hash`` a sha256 of the parameters, that version and senolab's
    ``EXTRACTION_VERSION``.
    """

    params: dict[str, Any]
    source: str
    pyradiomics_version: str
    hash: str

    def provenance(self) -> dict[str, Any]:
        """What is recorded with every feature table."""
        return {
            "params": self.params,
            "params_source": self.source,
            "pyradiomics_version": self.pyradiomics_version,
            "extraction_version": EXTRACTION_VERSION,
            "params_hash": self.hash,
        }


def load_params(path: str | Path | None = None) -> RadiomicsParams:
    """Read a parameter file (default: the shipped ``default_2d.yaml``) and validate it."""
    path = Path(path) if path is not None else DEFAULT_PARAMS_FILE
    found = describe_path(path)
    if found != "a file":
        raise ParamsError(f"{path}: expected a pyradiomics parameter file (YAML), found {found}")
    try:
        params = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ParamsError(f"{path}: cannot read the parameter file ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({_where_yaml_fails(err)})") from err
    if params is None:
        raise ParamsError(f"{path}: the parameter file is empty; expected a mapping with imageType/featureClass/setting")
    if not isinstance(params, dict):
        raise ParamsError(
            f"{path}: expected a mapping with imageType/featureClass/setting, got {type(params).__name__}"
        )
    _check_with_pyradiomics(params, path)
    _check_2d(params, path)
    version = pyradiomics_version()
    return RadiomicsParams(params, str(path), version, params_hash(params, version))


def pyradiomics_version() -> str:
    return str(require("radiomics").__version__)


def params_hash(params: dict[str, Any], version: str) -> str:
    """sha256 of the parameters, the pyradiomics version and senolab's extraction version."""
    blob = json.dumps(
        {"params": params, "pyradiomics": version, "extraction": EXTRACTION_VERSION},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def lesion_box_suffices(params: dict[str, Any]) -> bool:
    """Whether pyradiomics' features depend only on the pixels of the lesion's bounding box.

    True for the original image without normalisation, resampling or resegmentation:
    pyradiomics then crops image and mask to that box (no padding) before every feature
    class, so a caller may crop first and get identical values for less work (casting,
    label statistics and cropping of the whole image). False as soon as anything reads
    pixels outside the box: filters (LoG, wavelet... and the square/log/exponential ones,
    scaled by the whole image's maximum), normalisation, resampling, resegmentation.
    """
    setting = params.get("setting") or {}
    image_types = params.get("imageType") or {"Original": {}}  # pyradiomics' default
    return (
        set(image_types) == {"Original"}
        and not image_types["Original"]
        and not setting.get("normalize", False)
        and setting.get("resampledPixelSpacing") is None
        and setting.get("resegmentRange") is None
    )


def _where_yaml_fails(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: where, then what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _check_with_pyradiomics(params: dict[str, Any], path: Path) -> None:
    # pyradiomics validates against its own schema when an extractor is built from a dict.
    featureextractor = require("radiomics.featureextractor")
    try:
        with _pykwalify_silenced():
            featureextractor.RadiomicsFeatureExtractor(params)
    except Exception as err:  # pykwalify raises its own SchemaError types
        # pykwalify lists one error per line: joined, so that the refusal stays one line
        reason = " ".join(str(err).split())
        raise ParamsError(f"{path}: rejected by pyradiomics' parameter schema: {reason}") from err


@contextmanager
def _pykwalify_silenced() -> Iterator[None]:
    # pykwalify also logs every schema error to stderr; the ParamsError already says it.
    logger = logging.getLogger("pykwalify")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_2d(params: dict[str, Any], path: Path) -> None:
    setting = params.get("setting") or {}
    classes = params.get("featureClass") or {}
    if setting.get("force2D", False):
        raise ParamsError(
            f"{path}: setting.force2D must be false: senolab gives pyradiomics true 2D images, on which "
            "force2D drops the image's y axis (force2Ddimension 0 is its rows) and measures texture along x "
            "only; 2D images are in-plane already"
        )
    if "shape" in classes:
        raise ParamsError(
            f"{path}: featureClass.shape (3D) must be off for 2D images (it meshes a one-slice "
            "volume, costs seconds per lesion and means nothing in 2D); use shape2D"
        )
    if not classes:
        raise ParamsError(f"{path}: featureClass is empty; expected some of {CLASSES_2D}")
    unknown = sorted(set(classes) - set(CLASSES_2D))
    if unknown:
        raise ParamsError(f"{path}: featureClass {unknown} are not 2D classes; expected some of {CLASSES_2D}")
    if setting.get("label", 1) != 1:
        raise ParamsError(f"{path}: setting.label must be 1: senolab passes binary lesion masks")
