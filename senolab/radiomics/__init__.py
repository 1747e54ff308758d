"""pyradiomics feature tables per lesion, their cache, and feature hygiene for fusion.

Importing this package does not import pyradiomics; extraction does, through
``senolab._optional.require``.
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "cache": ["FeatureCache", "default_cache_dir"],
    "extract": ["extract_features"],
    "hygiene": ["HYGIENE", "DropConstant", "DropCorrelated", "DropIncomplete", "FeaturePipeline", "Standardise",
                "build_pipeline"],
    "combat": ["ComBat", "ComBatError"],
    "parameters": ["DEFAULT_PARAMS_FILE", "ParamsError", "RadiomicsParams", "load_params"],
    "site_effect": ["site_effect", "site_effect_before_after", "site_effect_figure"],
    "table": ["FeatureTable", "RadiomicsError", "feature_columns", "load_features", "ok_features"],
}, registries={
    "hygiene": ["combat"],
})
