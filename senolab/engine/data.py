"""From a data config to leakage-checked train / validation / test datasets.

Everything fitted on data (metadata standardisation, radiomics standardisation) is fitted
on the training part only; the three parts are checked to share no patient and no
near-duplicate group before anything is trained.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from senolab.cohorts.dataset import BINARY, CohortDataset
from senolab.cohorts.dedup import mark_duplicates
from senolab.cohorts.readers import open_cohort
from senolab.cohorts.schema import LABELS, Cohort, combine
from senolab.cohorts.splits import check_leakage, holdout, patient_kfold
from senolab.cohorts.tabular import MetadataEncoder
from senolab.engine.config import DataConfig, SplitConfig
from senolab.registry import Registry

PARTS = ("train", "val", "test")
CLASSES = {"binary": BINARY, "three": LABELS}


def load_cohorts(config: DataConfig, progress: bool = True) -> Cohort:
    """Read every configured cohort (dataset folders, or sources made in memory such as
    ``synthetic``) into one table."""
    options = _source_options(config)
    cohorts = [open_cohort(entry, options, strict=config.strict, progress=progress) for entry in config.cohorts]
    cohort = cohorts[0] if len(cohorts) == 1 else combine(cohorts)
    say_skipped(cohort)
    if config.deduplicate:
        mark_duplicates(cohort, progress=progress)
    return cohort


def _source_options(config: DataConfig) -> dict:
    """Each in-memory cohort source's options, from its section of the data config."""
    return {"synthetic": config.synthetic.build(), "synthetic_mg": config.synthetic_mg.build()}


SKIPPED_SHOWN = 5  # problems printed in full; every one is in summary.json


def say_skipped(cohort: Cohort) -> None:
    """Print how many cases were skipped while reading, and why (never silent)."""
    if not cohort.problems:
        return
    lines = [f"{len(cohort.problems)} case(s) skipped or flagged while reading {cohort.name}:"]
    lines += [f"  {p}" for p in cohort.problems[:SKIPPED_SHOWN]]
    if len(cohort.problems) > SKIPPED_SHOWN:
        lines.append(f"  ... and {len(cohort.problems) - SKIPPED_SHOWN} more (listed under 'skipped' in summary.json)")
    print("\n".join(lines), flush=True)


def skipped_records(cohort: Cohort) -> list[dict]:
    """The reading problems as summary.json lists them: cohort, file, reason."""
    return [{"cohort": p.cohort, "file": p.file, "reason": p.reason} for p in cohort.problems]


def assign_parts(table: pd.DataFrame, split: SplitConfig, cohort: Cohort | None = None) -> pd.Series:
    """'train' / 'val' / 'test' per case_id, patient- and duplicate-disjoint.

    A test part fixed from outside (official folds, whole sites) cannot be regrouped
    around near-duplicates, so training images in a duplicate group with a test image are
    left out (part 'excluded', with a warning naming them) rather than leaked; holdout
    and k-fold splits keep duplicate groups together and never need it.
    """
    test = _test_mask(table, split, cohort)
    parts = pd.Series(np.where(test, "test", "train"), index=table["case_id"].values, name="part")
    excluded = _duplicates_of_test(table, test)
    parts.loc[excluded] = "excluded"
    train_rows = table[parts.loc[table["case_id"]].eq("train").to_numpy()]
    if len(train_rows):
        val = holdout(train_rows, split.val_fraction, seed=split.seed + 1)
        parts.loc[val.index[val == "test"]] = "val"
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        check_leakage(table, parts.index[parts == a], parts.index[parts == b])
    return parts


def _duplicates_of_test(table: pd.DataFrame, test: np.ndarray) -> list[str]:
    """case_ids outside the test part that share a duplicate group with a test case."""
    if "duplicate_group" not in table.columns:
        return []
    groups = table["duplicate_group"]
    leaking = ~test & groups.isin(set(groups[test])).to_numpy()
    case_ids = table["case_id"][leaking].tolist()
    if case_ids:
        warnings.warn(f"{len(case_ids)} training image(s) are near-duplicates of test images and are left out of "
                      f"training: {case_ids}", stacklevel=3)
    return case_ids


# Split kinds: name -> function(table, split, cohort) -> boolean test mask over the table's
# rows. SplitConfig.kind lists the same names; tests/test_registries.py keeps them equal.
SPLITS: Registry = Registry("split kind")


def _test_mask(table: pd.DataFrame, split: SplitConfig, cohort: Cohort | None) -> np.ndarray:
    return SPLITS.build(split.kind, table, split, cohort)


@SPLITS.register("holdout")
def _holdout_test(table: pd.DataFrame, split: SplitConfig, cohort: Cohort | None) -> np.ndarray:
    """A stratified test fraction (``test_fraction``)."""
    return (holdout(table, split.test_fraction, seed=split.seed).loc[table["case_id"]] == "test").to_numpy()


@SPLITS.register("kfold")
def _kfold_test(table: pd.DataFrame, split: SplitConfig, cohort: Cohort | None) -> np.ndarray:
    """Fold ``fold`` of ``k`` patient-grouped folds."""
    if split.fold >= split.k:
        raise ValueError(f"split.fold {split.fold} is out of range for k={split.k}")
    return (patient_kfold(table, split.k, seed=split.seed).loc[table["case_id"]] == split.fold).to_numpy()


@SPLITS.register("official")
def _official_test(table: pd.DataFrame, split: SplitConfig, cohort: Cohort | None) -> np.ndarray:
    """Fold ``fold`` of a dataset's own split ``name``."""
    if cohort is None or split.name not in cohort.splits:
        known = sorted(cohort.splits) if cohort is not None else []
        raise ValueError(f"split.name {split.name!r} is not an official split of these cohorts; known: {known}")
    folds = cohort.splits[split.name]
    if split.fold not in set(folds):
        # a fold the split does not have would silently leave the test part empty
        raise ValueError(f"split.fold {split.fold} is not a fold of {split.name!r}; its folds: {sorted(set(folds))}")
    return table["case_id"].map(folds).eq(split.fold).to_numpy()


@SPLITS.register("sites")
def _sites_test(table: pd.DataFrame, split: SplitConfig, cohort: Cohort | None) -> np.ndarray:
    """Whole sites (``test_sites``)."""
    unknown = sorted(set(split.test_sites) - set(table["site"]))
    if unknown or not split.test_sites:
        raise ValueError(f"split.test_sites {split.test_sites} must name sites among {sorted(table['site'].unique())}")
    return table["site"].isin(split.test_sites).to_numpy()


@SPLITS.register("per_cohort")
def _per_cohort_test(table: pd.DataFrame, split: SplitConfig, cohort: Cohort | None) -> np.ndarray:
    """Each cohort's rows split by that cohort's own split config."""
    names = table["cohort"]
    missing, unknown = sorted(set(names) - set(split.cohorts)), sorted(set(split.cohorts) - set(names))
    if missing or unknown:
        raise ValueError(f"split.cohorts must give a split for every cohort of the study ({sorted(set(names))}): "
                         f"missing {missing}, not in the study {unknown}")
    test = np.zeros(len(table), dtype=bool)
    for name, own in split.cohorts.items():
        rows = (names == name).to_numpy()
        test[rows] = _test_mask(table[rows], own, cohort)
    return test


class ShardSampler(Sampler[int]):
    """One rank's share of the order a one-process loader would use, so that batch k of a
    one-process run (global batch B) is the union of the ranks' batches k (B / world_size each).

    The order is drawn from the loader's own generator exactly as ``DataLoader(shuffle=True)``
    draws it (``randperm`` after the loader's base seed), so reseeding that generator each
    epoch (the trainer's ``_seed_epoch``) gives every rank the same permutation as a run on
    one device. Rank r takes positions r, r + world_size, ...; like
    ``DistributedSampler``, the order is padded with its first cases to a multiple of
    world_size so that every rank runs the same number of steps (DDP's steps are collective).
    """

    def __init__(self, size: int, rank: int, world_size: int, shuffle: bool, generator: torch.Generator):
        self.size, self.rank, self.world_size, self.shuffle, self.generator = size, rank, world_size, shuffle, generator

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator).tolist() if self.shuffle else list(range(self.size))
        padded = (order * math.ceil(len(self) * self.world_size / max(1, self.size)))[:len(self) * self.world_size]
        return iter(padded[self.rank::self.world_size])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)


@dataclass
class PreparedData:
    cohort: Cohort
    parts: pd.Series
    classes: tuple[str, ...]
    metadata: MetadataEncoder | None
    radiomics: pd.DataFrame | None
    sites: list[str]
    image_size: int
    augment: bool

    def case_ids(self, part: str) -> list[str]:
        return self.parts.index[self.parts == part].tolist()

    def dataset(self, part: str, augment: bool | None = None, labelled: bool = True, seed: int = 0) -> CohortDataset:
        augment = (self.augment and part == "train") if augment is None else augment
        return CohortDataset(
            self.cohort, self.case_ids(part), size=self.image_size, augment=augment, seed=seed,
            classes=self.classes, metadata=self.metadata, radiomics=self.radiomics, sites=self.sites,
            labelled=labelled,
        )

    def loader(self, part: str, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
               shard: tuple[int, int] = (0, 1), **dataset_options) -> DataLoader:
        """Batches of ``part``; with ``shard=(rank, world_size)``, this rank's share of each batch
        (``batch_size`` is then the per-rank batch, see :class:`ShardSampler`)."""
        generator = torch.Generator().manual_seed(seed)
        dataset = self.dataset(part, seed=seed, **dataset_options)
        rank, world_size = shard
        sampler = ShardSampler(len(dataset), rank, world_size, shuffle, generator) if world_size > 1 else None
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
            generator=generator, num_workers=num_workers, persistent_workers=num_workers > 0,
        )


def prepare(config: DataConfig, cohort: Cohort | None = None, progress: bool = True) -> PreparedData:
    """Load (unless given), split, and fit the tabular encoders on the training part."""
    cohort = cohort if cohort is not None else load_cohorts(config, progress)
    parts = assign_parts(cohort.table, config.split, cohort)
    train_rows = cohort.table[cohort.table["case_id"].isin(parts.index[parts == "train"])]
    metadata = None
    if cohort.columns:
        metadata = MetadataEncoder(cohort.columns, config.metadata_inputs, config.opt_in_outcomes).fit(train_rows)
    radiomics = None
    if config.radiomics:
        radiomics = _standardised_radiomics(config.radiomics, train_rows["case_id"])
    return PreparedData(cohort, parts, CLASSES[config.classes], metadata, radiomics,
                        sorted(cohort.table["site"].unique()), config.image_size, config.augment)


def _standardised_radiomics(path: str, train_ids: pd.Series) -> pd.DataFrame:
    """One row of features per case (its first listed lesion), z-scored on the training cases.

    Missing features (normal images, failed extractions) become 0, the training mean.
    """
    from senolab.radiomics import feature_columns, load_features

    table = load_features(path)
    # one lesion's whole row: groupby().first() would mix lesions where values are NaN
    first = table[table["lesion_index"] == 0].set_index("case_id")
    features = first[feature_columns(table)].astype(np.float64)
    train = features.reindex(train_ids)
    mean, std = train.mean(), train.std().replace(0, 1).fillna(1)
    return ((features - mean) / std).fillna(0.0)
