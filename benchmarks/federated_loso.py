"""Federated learning across BUSI, BUS-BRA and BrEaST, leave-one-site-out (issue 17).

    .venv/bin/python benchmarks/federated_loso.py [--config configs/study_federated_loso.yaml] [--out runs/federated_loso]

Runs the study (resumable: run it again after a stop) and prints, per unseen target site:
AUC with its patient-bootstrap 95% CI for pooled ERM (centralised), each source site alone
(local_<site>), FedAvg, FedProx, FedBN (the clients' averaged BatchNorm, and fedbn_adabn:
the target's own BatchNorm statistics, transductive), FedAdam; DeLong's p against pooled
ERM on the same target cases; the rounds run and the model bytes communicated per run
(sent + received, summed over rounds); each source site's in-site AUC on its own held-out
patients; and the issue's goal - the best federated method within 0.02 AUC of pooled ERM
at every unseen site and above every local-only model - checked and stated where it fails.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from senolab.adaptation import METHODS
from senolab.engine.config import load_study_config
from senolab.evaluation.formatting import interval_text, number_text
from senolab.runners.study import run_study

REPO = Path(__file__).resolve().parents[1]
GOAL_MARGIN = 0.02


def communication(out: Path, row: pd.Series) -> tuple[float, float]:
    """(rounds run, MB sent + received) of a unit's federation; NaN for centralised runs."""
    trained_as = METHODS.get(row["method_name"]).trains_as or row["method"]
    history = out / "runs" / row["target_site"] / trained_as / f"seed{row['seed']}" / "history.csv"
    if not METHODS.get(row["method_name"]).federated and trained_as == row["method"]:
        return float("nan"), float("nan")
    table = pd.read_csv(history)
    return float(len(table)), float((table["bytes_sent"] + table["bytes_received"]).sum() / 1e6)


def insite_by_site(out: Path, results: pd.DataFrame) -> pd.DataFrame:
    """Each source site's AUC on its own held-out patients (source_test), per method and target."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for r in results.itertuples():
        cases = pd.read_parquet(out / "runs" / r.target_site / r.method / f"seed{r.seed}" / "predictions.parquet")
        source = cases[(cases["domain"] == "source") & cases["label"].notna()]
        for site, group in source.groupby("site"):
            y = (group["label_name"] == "malignant").astype(int)
            auc = roc_auc_score(y, group["score"]) if y.nunique() == 2 else float("nan")
            rows.append({"method": r.method, "target": r.target_site, "site": site, "n": len(group), "auc": auc})
    return pd.DataFrame(rows)


def goal_lines(results: pd.DataFrame) -> list[str]:
    """The goal, per target: the best federated method (not transductive) within 0.02 AUC of
    pooled ERM and above every local-only model."""
    lines = []
    federated = results[results["federated"] & ~results["local"] & ~results["transductive"]]
    for target, rows in results.groupby("target_site"):
        erm = rows.loc[rows["method"] == "erm", "auc"]
        fed = federated[federated["target_site"] == target]
        local = rows[rows["local"]]
        if erm.empty or fed.empty:
            lines.append(f"- {target}: not measured (erm or a federated method missing)")
            continue
        best = fed.loc[fed["auc"].idxmax()]
        gap = float(erm.iloc[0] - best["auc"])
        beats_local = bool((best["auc"] > local["auc"]).all())
        verdict = "MET" if gap <= GOAL_MARGIN and beats_local else "NOT MET"
        lines.append(f"- {target}: {verdict}. best federated {best['method']} AUC {best['auc']:.3f} vs pooled erm "
                     f"{erm.iloc[0]:.3f} (short by {gap:+.3f}; goal <= {GOAL_MARGIN}); local-only "
                     + ", ".join(f"{m} {a:.3f}" for m, a in zip(local["method"], local["auc"]))
                     + ("; above every local-only model" if beats_local else "; NOT above every local-only model"))
    return lines


def method_name(config, label: str) -> str:
    """The registered method of a result row's label (``local_<site>`` is ``local``)."""
    exact = {spec.label: spec.name for spec in config.methods}
    if label in exact:
        return exact[label]
    return next(spec.name for spec in config.methods if label.startswith(f"{spec.label}_"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "study_federated_loso.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "federated_loso")
    args = parser.parse_args()
    config = load_study_config(args.config)
    began = time.perf_counter()
    run_study(config, args.out)
    wall = time.perf_counter() - began

    results = pd.read_csv(args.out / "results.csv")
    results["method_name"] = [method_name(config, label) for label in results["method"]]
    results["federated"] = [METHODS.get(n).federated or METHODS.get(n).trains_as == "fedbn"
                            for n in results["method_name"]]
    results["local"] = results["method_name"] == "local"
    comms = [communication(args.out, row) for _, row in results.iterrows()]
    results["rounds"], results["mb"] = [c[0] for c in comms], [c[1] for c in comms]

    print("| target | method | transductive | AUC [95% CI] | DeLong p vs pooled erm | in-site AUC | rounds "
          "| MB communicated |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results.sort_values(["target_site", "method"]).to_dict("records"):
        p = r.get("auc_p_vs_erm")
        print(f"| {r['target_site']} | {r['method']} | {'yes' if r['transductive'] else 'no'} | {interval_text(r, 'auc')} "
              f"| {'-' if p is None or not np.isfinite(p) else f'{p:.2g}'} | {number_text(r.get('insite_auc'))} "
              f"| {'-' if not np.isfinite(r['rounds']) else int(r['rounds'])} "
              f"| {'-' if not np.isfinite(r['mb']) else round(r['mb'])} |")
    print("\nIn-site AUC per source site (its own held-out patients):\n")
    insite = insite_by_site(args.out, results)
    table = insite.pivot_table(index=["target", "method"], columns="site", values="auc").round(3)
    print(table.to_string(na_rep="-"))
    print("\nGoal (best federated, not transductive, within 0.02 AUC of pooled erm and above every local-only "
          "model, at every unseen site):")
    print("\n".join(goal_lines(results)))
    print(f"\nwall time: {wall / 60:.1f} min ({len(results)} result rows), seed(s) {config.seeds}")


if __name__ == "__main__":
    main()
