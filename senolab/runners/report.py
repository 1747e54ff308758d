"""The run report: markdown and a self-contained HTML page (figures embedded)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    sections = _sections(report, out)
    md = "\n\n".join(f"## {title}\n\n{body}" for title, body, _ in sections)
    md_path = out / "report.md"
    md_path.write_text(f"# senolab run: {report['name']}\n\n{md}\n")
    page = "".join(f"<h2>{html.escape(title)}</h2>{body_html}" for title, _, body_html in sections)
    html_path = out / "report.html"
    html_path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>senolab run</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "img{max-width:100%;border:1px solid #eee;margin:4px 0}</style></head><body>"
        f"<h1>senolab run: {html.escape(report['name'])}</h1>{page}</body></html>"
    )
    return md_path, html_path


def _sections(report: dict, out: Path) -> list[tuple[str, str, str]]:
    cohorts = report["cohorts"]
    cohort_table = pd.DataFrame([{
        "cohort": cohorts["cohort"], "images": cohorts["n_images"], "patients": cohorts["n_patients"],
        **cohorts["classes"], "lesions": cohorts["n_lesions"], "duplicate groups": cohorts["duplicate_groups"]}])
    sections = [("Cohorts", _md_table(cohort_table) + "\n\n![cohorts](figures/cohorts.png)",
                 cohort_table.to_html(index=False) + _img(out / "figures" / "cohorts.png"))]
    if "radiomics" in report:
        text = str(report["radiomics"]["summary"])
        sections.append(("Radiomics", f"```\n{text}\n```", f"<pre>{html.escape(text)}</pre>"))
    study = report["study"]
    shown = [c for c in ("method", "target_site", "transductive", "selection", "auc", "auc_lo", "auc_hi",
                         "insite_auc", "gap_auc", "dice", "site_classifier_acc") if c in study.columns]
    table = study[shown].round(3)
    tsne = out / "study" / "embeddings_tsne.png"
    sections.append((
        "Cross-site results (target site unseen in training; AUC with patient-bootstrap 95% CI)",
        _md_table(table) + ("\n\n![embeddings](study/embeddings_tsne.png)" if tsne.exists() else ""),
        table.to_html(index=False) + (_img(tsne) if tsne.exists() else ""),
    ))
    games = pd.DataFrame([{"method": m["method"], "target": m["target"], **g} for m in report["methods"]
                          for g in m["pointing_game"]])
    if len(games):
        games = games.round(3)
        figures = [Path(f) for m in report["methods"] for f in m["figures"] if f.endswith(".png")]
        sections.append((
            "Explanations (share of positive attribution inside the lesion vs chance)",
            _md_table(games) + "\n\n" + "\n".join(f"![{f.stem}]({f.relative_to(out)})" for f in figures),
            games.to_html(index=False) + "".join(_img(f) for f in figures),
        ))
    timing = pd.DataFrame([report["timings"]])
    sections.append(("Tracking and timings", f"{report['tracking']}\n\n{_md_table(timing)}",
                     f"<pre>{html.escape(report['tracking'])}</pre>{timing.to_html(index=False)}"))
    return sections


def _md_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<div><img alt='{html.escape(Path(path).stem)}' src='data:image/png;base64,{data}'></div>"
