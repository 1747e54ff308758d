"""A client's own data: one site's training and validation cases, nothing of the others.

A site file (``site.pkl``, written by the site itself or, in a simulation, by the study for
each of its virtual sites) holds a :class:`~senolab.engine.data.PreparedData` restricted to
that site's rows: its part of the cohort table, its in-memory pixels (synthetic cohorts),
its ``train`` / ``val`` split, and a metadata encoder fitted on its own training cases. The
ClientApp reads it from the path its SuperNode was started with (``site-data``); no other
site's row is ever in it.

A hospital makes its own with::

    python -m senolab.federated.site --config data.yaml --site <its site> --out site_dir/

(``data.yaml``: a senolab experiment or study config whose ``data:`` section reads the
hospital's cohort; ``val_fraction`` of its patients become its validation cases).
"""
from __future__ import annotations

import argparse
import copy
import functools
import pickle
from pathlib import Path

from senolab.engine.data import PreparedData

SITE_FILE = "site.pkl"
OWN_PARTS = ("train", "val")


def own_cases(data: PreparedData, site: str) -> PreparedData:
    """``data`` cut down to ``site``'s training and validation cases (a new object)."""
    table = data.cohort.table
    at_site = set(table.loc[table["site"] == site, "case_id"])
    if not at_site:
        raise ValueError(f"site {site!r} has no cases (sites: {sorted(table['site'].unique())})")
    parts = data.parts[data.parts.index.isin(at_site) & data.parts.isin(OWN_PARTS)]
    if not (parts == "train").any():
        raise ValueError(f"site {site!r} has no training cases")
    rows = table[table["case_id"].isin(parts.index)].reset_index(drop=True)
    cohort = type(data.cohort)(data.cohort.name, rows, data.cohort.columns, {}, [], data.cohort.root,
                               {case: pixels for case, pixels in data.cohort.arrays.items() if case in parts.index})
    metadata = None
    if data.metadata is not None:  # standardised on the site's own training cases
        metadata = copy.deepcopy(data.metadata).fit(rows[rows["case_id"].isin(parts.index[parts == "train"])])
    radiomics = data.radiomics.reindex(parts.index) if data.radiomics is not None else None
    return PreparedData(cohort, parts, data.classes, metadata, radiomics, data.sites, data.image_size, data.augment)


def write_site(data: PreparedData, site: str, folder: str | Path) -> Path:
    """Write ``site``'s own cases of ``data`` to ``folder/site.pkl``; returns the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SITE_FILE
    path.write_bytes(pickle.dumps({"site": site, "data": own_cases(data, site)}))
    return path


@functools.lru_cache(maxsize=4)
def read_site(path: str) -> tuple[str, PreparedData]:
    """(site name, its data) from a site file; read once per process."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"site data {path} does not exist: start the SuperNode with "
                                f"--node-config \"site-data='<folder>/{SITE_FILE}'\" (see docs/federated.md)")
    saved = pickle.loads(file.read_bytes())
    return saved["site"], saved["data"]


def prepare_site(config_path: str | Path, site: str, out: str | Path) -> Path:
    """A hospital's site file from its own data config: its cohort's cases at ``site``,
    its patients split into training and validation (``data.split.val_fraction``). The
    metadata encoder is fitted on its training cases; radiomics inputs are not carried."""
    from senolab.cohorts.splits import holdout
    from senolab.engine.config import ExperimentConfig, read_yaml_mapping, validate
    from senolab.engine.data import CLASSES, load_cohorts
    from senolab.cohorts.tabular import MetadataEncoder

    raw = read_yaml_mapping(config_path)
    config = validate(ExperimentConfig, {"data": (raw.get("base") or raw).get("data", {})}, str(config_path)).data
    cohort = load_cohorts(config, progress=True)
    rows = cohort.table[cohort.table["site"] == site].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{config_path}: no case at site {site!r} (sites: {sorted(cohort.table['site'].unique())})")
    own = type(cohort)(cohort.name, rows, cohort.columns, {}, [], cohort.root,
                       {case: pixels for case, pixels in cohort.arrays.items() if case in set(rows["case_id"])})
    parts = holdout(rows, config.split.val_fraction, seed=config.split.seed).map({"train": "train", "test": "val"})
    metadata = None
    if own.columns:
        train_rows = rows[rows["case_id"].isin(parts.index[parts == "train"])]
        metadata = MetadataEncoder(own.columns, config.metadata_inputs, config.opt_in_outcomes).fit(train_rows)
    data = PreparedData(own, parts, CLASSES[config.classes], metadata, None, [site], config.image_size, config.augment)
    return write_site(data, site, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m senolab.federated.site", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a senolab config whose data: section reads this site's data")
    parser.add_argument("--site", required=True, help="the site's name in the data's site column")
    parser.add_argument("--out", required=True, help="folder for site.pkl (the SuperNode's site-data)")
    args = parser.parse_args(argv)
    print(prepare_site(args.config, args.site, args.out))


if __name__ == "__main__":
    main()
