"""What a feature table holds: features, failures, and which features shift between sites."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from senolab.radiomics.site_effect import site_effect, site_effect_figure, site_medians
from senolab.radiomics.table import FAILED, OK, PROVENANCE, failure_lines, feature_columns, status_line


def describe_features(table: pd.DataFrame, top: int = 8) -> dict:
    """A JSON-ready summary of a feature table (as :func:`load_features` returns it)."""
    ok = table[table["status"] == OK]
    features = ok[feature_columns(table)]
    provenance = table.attrs.get(PROVENANCE, {})
    summary = {
        "n_rows": int(len(table)),
        "n_features": len(feature_columns(table)),
        "status": {str(k): int(v) for k, v in table["status"].value_counts().items()},
        "lesions_per_site": {str(k): int(v) for k, v in ok["site"].value_counts().sort_index().items()},
        "features_with_missing_values": int(features.isna().any().sum()),
        "failures": [
            {"case_id": r.case_id, "lesion_index": int(r.lesion_index), "error": r.error}
            for r in table[table["status"] == FAILED].itertuples()
        ],
        "pyradiomics_version": provenance.get("pyradiomics_version"),
        "params_hash": provenance.get("params_hash"),
        "params_source": provenance.get("params_source"),
        "top_shifting_features": [],
    }
    if ok["site"].nunique() >= 2 and len(features.columns):
        effect = site_effect(features, ok["site"]).dropna(subset=["kruskal_h"]).head(top)
        medians = site_medians(features[effect.index], ok["site"])
        summary["top_shifting_features"] = [
            {
                "feature": name,
                "kruskal_h": round(float(row.kruskal_h), 3),
                "kruskal_p": float(row.kruskal_p),
                "max_shift": round(float(row.max_shift), 3),
                "site_median_z": {site: round(float(v), 3) for site, v in medians.loc[name].items()},
            }
            for name, row in effect.iterrows()
        ]
    return summary


def format_description(table: pd.DataFrame, summary: dict) -> str:
    """The text `senolab radiomics describe` prints."""
    lines = [
        status_line(table),
        f"pyradiomics {summary['pyradiomics_version']}, parameters {summary['params_source']} "
        f"(hash {str(summary['params_hash'])[:12]})",
        "ok lesions per site: " + ", ".join(f"{k} {v}" for k, v in summary["lesions_per_site"].items()),
    ]
    if summary["features_with_missing_values"]:
        lines.append(f"{summary['features_with_missing_values']} features are missing on some ok lesions")
    lines.extend(failure_lines(table))
    if summary["top_shifting_features"]:
        lines.append("features that shift most between sites (Kruskal-Wallis H; site medians in pooled SDs):")
        rows = [
            {"feature": f["feature"], "H": f["kruskal_h"], "p": f"{f['kruskal_p']:.1e}", **f["site_median_z"]}
            for f in summary["top_shifting_features"]
        ]
        lines.append(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    else:
        lines.append("one site only (or no ok lesions): no between-site shift to report")
    return "\n".join(lines)


def describe_figure(table: pd.DataFrame, summary: dict, path: str | Path) -> Path | None:
    """Per-site box plots of the top-shifting features, as a PNG; None with one site."""
    features = [f["feature"] for f in summary["top_shifting_features"]]
    if not features:
        return None
    ok = table[table["status"] == OK]
    return site_effect_figure({"features per site": ok[feature_columns(table)]}, ok["site"], path, features,
                              title=f"top {len(features)} site-shifting radiomics features")
