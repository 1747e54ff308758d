"""Quantitative checks of explanations, because a heat map alone proves nothing.

- Energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the positive
  attribution that falls inside the lesion mask, against the share a map spread at
  random would put there (the mask's area fraction).
- Model-randomisation sanity check (Adebayo et al. 2018): re-initialise the weights from
  the output layer down (cascading); attributions that still look the same do not
  depend on what the model learnt. The rank correlation with the trained model's
  attributions must drop.
- Stability of the top tabular attributions across folds: the same features should come
  out on top whichever training fold the model saw.
"""
from __future__ import annotations

import copy
import itertools
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from senolab.explain.forward import resolve_target
from senolab.explain.image import ImageExplanations, attribute_image


def in_mask_share(attribution: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per case, the share of positive attribution energy inside ``mask`` (N,).

    ``attribution`` and ``mask`` are (N, C, H, W) or (N, 1, H, W); attributions are
    summed over channels first. A case with no positive attribution has share 0.
    """
    energy = attribution.sum(dim=1).clamp(min=0).flatten(1)
    inside = (mask.amax(dim=1) > 0.5).flatten(1).to(energy.dtype)
    total = energy.sum(1)
    return torch.where(total > 0, (energy * inside).sum(1) / total.clamp(min=1e-12), torch.zeros_like(total))


def chance_share(mask: torch.Tensor) -> torch.Tensor:
    """The in-mask share expected by chance: the mask's area fraction (N,)."""
    return (mask.amax(dim=1) > 0.5).flatten(1).float().mean(1)


def pointing_game(explanations: ImageExplanations) -> pd.DataFrame:
    """Energy-based pointing game per cohort, on the cases that have a lesion mask.

    Columns: ``cohort``, ``n_cases``, ``in_mask_share`` (mean), ``chance_share`` (mean
    mask area fraction), ``ratio`` (their quotient: 1 = no better than chance) and
    ``above_chance`` (fraction of cases whose share beats their own chance share).
    """
    with_lesion = explanations.has_mask & (chance_share(explanations.mask) > 0)
    share = in_mask_share(explanations.attribution, explanations.mask)
    chance = chance_share(explanations.mask)
    cases = pd.DataFrame({
        "cohort": explanations.cohort,
        "in_mask_share": share.numpy(),
        "chance_share": chance.numpy(),
    })[with_lesion.numpy()]
    rows = []
    for cohort, group in cases.groupby("cohort", sort=True):
        rows.append({
            "cohort": cohort,
            "n_cases": len(group),
            "in_mask_share": group["in_mask_share"].mean(),
            "chance_share": group["chance_share"].mean(),
            "ratio": group["in_mask_share"].mean() / group["chance_share"].mean(),
            "above_chance": (group["in_mask_share"] > group["chance_share"]).mean(),
        })
    return pd.DataFrame(rows, columns=["cohort", "n_cases", "in_mask_share", "chance_share", "ratio", "above_chance"])


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, from the output side to the input side.

    Registration order is taken as forward order (true for senolab's models, whose
    ``__init__`` builds the encoder before the heads), reversed for the cascade.
    """
    names = [name for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
    return names[::-1]


def randomise_layers(model: nn.Module, names: list[str], seed: int = 0) -> nn.Module:
    """A copy of ``model`` with the named layers re-initialised, seeded, global RNG untouched.

    A layer is re-initialised with its own ``reset_parameters`` (the initialisation it
    was trained from); a layer without one gets each parameter redrawn from a normal with
    that parameter's spread.
    """
    randomised = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            module = randomised.get_submodule(name)
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
                continue
            with torch.no_grad():
                for param in module.parameters(recurse=False):
                    param.normal_(0.0, float(param.std()) if param.numel() > 1 else 1.0)
    return randomised


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman correlation per case between the absolute attributions of ``a`` and ``b``."""
    rows = []
    for x, y in zip(a.abs().flatten(1).numpy(), b.abs().flatten(1).numpy()):
        # A constant map (e.g. an all-zero Grad-CAM of a randomised model) has no ranking.
        constant = np.ptp(x) == 0 or np.ptp(y) == 0
        rows.append(0.0 if constant else stats.spearmanr(x, y).statistic)
    return np.asarray(rows)


def randomisation_check(model: nn.Module, batch: Mapping[str, object], method: str = "saliency",
                        readout: str = "classification", steps: int = 4, seed: int = 0,
                        progress: bool = True, **options) -> pd.DataFrame:
    """Cascading model randomisation: rank correlation of attributions after each cut.

    The parameter layers (output side first) are cut into ``steps`` cumulative blocks;
    after step ``s`` the top ``s/steps`` of the layers are re-initialised, so the last
    step is the full re-initialisation. The explained class stays the trained model's
    prediction. Columns: ``step``, ``n_layers``, ``deepest_layer``, ``spearman_mean``,
    ``spearman_min``. Step 0 is the trained model against itself (a reproducibility check).
    """
    layers = parameter_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no parameters to randomise")
    target = resolve_target(model, batch, readout, None)
    reference = attribute_image(model, batch, method, readout, target, **options)
    cuts = sorted({max(1, round(len(layers) * s / steps)) for s in range(1, steps + 1)})
    rows = [_row(0, 0, "", rank_correlation(reference, attribute_image(model, batch, method, readout, target, **options)))]
    for step, cut in enumerate(tqdm(cuts, desc="randomisation check", disable=not progress), start=1):
        randomised = randomise_layers(model, layers[:cut], seed=seed)
        attributions = attribute_image(randomised, batch, method, readout, target, **options)
        rows.append(_row(step, cut, layers[cut - 1], rank_correlation(reference, attributions)))
    return pd.DataFrame(rows)


def _row(step: int, n_layers: int, deepest: str, rho: np.ndarray) -> dict:
    return {"step": step, "n_layers": n_layers, "deepest_layer": deepest,
            "spearman_mean": float(rho.mean()), "spearman_min": float(rho.min())}


def topk_stability(importances: pd.DataFrame, k: int = 5) -> dict[str, float]:
    """Agreement of tabular attributions between folds.

    ``importances``: one row per fold, one column per feature group, values = mean
    absolute attribution in that fold. Returns the mean pairwise Jaccard index of the
    top-``k`` groups (1 = same top-k in every fold) and the mean pairwise Kendall tau of
    the full rankings.
    """
    if len(importances) < 2:
        raise ValueError(f"stability needs at least two folds; got {len(importances)}")
    if not 1 <= k <= importances.shape[1]:
        raise ValueError(f"k must be between 1 and the number of features ({importances.shape[1]}); got {k}")
    values = importances.abs().to_numpy(float)
    tops = [set(np.argsort(-row, kind="stable")[:k]) for row in values]
    jaccard, tau = [], []
    for i, j in itertools.combinations(range(len(values)), 2):
        jaccard.append(len(tops[i] & tops[j]) / len(tops[i] | tops[j]))
        t = stats.kendalltau(values[i], values[j]).statistic
        tau.append(0.0 if np.isnan(t) else t)
    return {"k": k, "n_folds": len(values), "topk_jaccard": float(np.mean(jaccard)), "kendall_tau": float(np.mean(tau))}
