"""pyradiomics feature tables per lesion, their cache, and feature hygiene for fusion.

Importing this package does not import pyradiomics; extraction does, through
``senolab._optional.require``.
"""
from senolab.radiomics.cache import FeatureCache, default_cache_dir
from senolab.radiomics.extract import extract_features
from senolab.radiomics.hygiene import (
    HYGIENE,
    DropConstant,
    DropCorrelated,
    DropIncomplete,
    FeaturePipeline,
    Standardise,
    build_pipeline,
)
from senolab.radiomics.combat import ComBat, ComBatError  # after hygiene: registers "combat" in HYGIENE
from senolab.radiomics.parameters import DEFAULT_PARAMS_FILE, ParamsError, RadiomicsParams, load_params
from senolab.radiomics.site_effect import site_effect, site_effect_before_after, site_effect_figure
from senolab.radiomics.table import FeatureTable, RadiomicsError, feature_columns, load_features, ok_features

__all__ = [
    "HYGIENE",
    "ComBat",
    "ComBatError",
    "DropConstant",
    "DropCorrelated",
    "DropIncomplete",
    "FeaturePipeline",
    "Standardise",
    "build_pipeline",
    "ok_features",
    "site_effect",
    "site_effect_before_after",
    "site_effect_figure",
    "DEFAULT_PARAMS_FILE",
    "FeatureCache",
    "FeatureTable",
    "ParamsError",
    "RadiomicsError",
    "RadiomicsParams",
    "default_cache_dir",
    "extract_features",
    "feature_columns",
    "load_params",
    "load_features",
]
