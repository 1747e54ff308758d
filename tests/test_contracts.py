"""docs/contracts.md stays true to the code: its tables match what the code builds, and
every docs/ reference in the source points to a file and heading that exist."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO
from senolab.cohorts.dataset import Batch, CohortDataset
from senolab.cohorts.schema import CORE_COLUMNS, LABELS
from senolab.cohorts.tabular import MetadataEncoder
from test_cohort_layer import make_cohort

CONTRACTS = REPO / "docs" / "contracts.md"
DOC = CONTRACTS.read_text()
THIS_FILE = "tests/test_contracts.py"
OLD_NOTES = "DESIGN" + ".md"  # spelled in two parts so this file does not cite it
DOCS_REFERENCE = re.compile(r"docs/([\w./-]+\.md)(?:#([\w-]+))?")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ helpers
def slug(heading: str) -> str:
    """A markdown heading's anchor as GitHub makes it: lower case, punctuation dropped,
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", markdown, re.M)}


def section(markdown: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of level 2."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"{CONTRACTS.name} has no section '## {heading}'"
    return match.group(1)


def table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header starts with ``first_header``, with
    backticks stripped from the cells."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"^\s*\| {re.escape(first_header)} \|", line)]
    assert len(starts) == 1, f"expected one table headed '{first_header}', found {len(starts)}"
    rows = []
    header = [c.strip() for c in lines[starts[0]].strip().strip("|").split("|")]
    for line in lines[starts[0] + 2:]:
        if not line.strip().startswith("|"):
            break
        cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
        rows.append(dict(zip(header, cells)))
    return rows


def rank(shape: str) -> int:
    """The number of dimensions of a documented shape: ``(B, 1, H, W)`` -> 4, ``(B,)`` -> 1."""
    return len([part for part in shape.strip("()").split(",") if part.strip()])


def source_files():
    """Python files of the package and the tests, except this one."""
    for path in sorted([*(REPO / "senolab").rglob("*.py"), *(REPO / "tests").rglob("*.py")]):
        if path.relative_to(REPO).as_posix() != THIS_FILE:
            yield path


def a_batch(with_tabular: bool) -> dict:
    cohort = make_cohort(n_patients=4, images_per_patient=1)
    metadata = MetadataEncoder(cohort.columns).fit(cohort.table) if with_tabular else None
    radiomics = None
    if with_tabular:
        ids = cohort.table["case_id"]
        radiomics = pd.DataFrame(np.ones((len(ids), 3), np.float32), index=ids, columns=["a", "b", "c"])
    dataset = CohortDataset(cohort, size=32, metadata=metadata, radiomics=radiomics, augment=with_tabular)
    return next(iter(DataLoader(dataset, batch_size=4)))


# --------------------------------------------------------------------------- case table
def test_case_table_section_lists_exactly_the_core_columns():
    rows = table(section(DOC, "Case table"), "column")
    documented = [row["column"] for row in rows]
    assert documented == list(CORE_COLUMNS), (
        f"docs/contracts.md#case-table lists {documented}; schema.CORE_COLUMNS is {list(CORE_COLUMNS)}"
    )


def test_case_table_section_names_the_labels():
    label_row = next(row for row in table(section(DOC, "Case table"), "column") if row["column"] == "label")
    assert all(label in label_row["meaning"] for label in LABELS), label_row


# -------------------------------------------------------------------------------- batch
@pytest.mark.parametrize("with_tabular", [True, False], ids=["tabular+augmented", "image-only"])
def test_batch_typeddict_keys_are_those_of_a_real_batch(with_tabular):
    batch = a_batch(with_tabular)
    assert set(batch) == set(Batch.__annotations__), (
        f"a real batch has {sorted(batch)}; cohorts.dataset.Batch declares {sorted(Batch.__annotations__)}"
    )
    assert Batch.__required_keys__ == frozenset(Batch.__annotations__)  # every key is always there


def test_batch_section_matches_the_typeddict_and_real_dtypes_and_ranks():
    rows = {row["key"]: row for row in table(section(DOC, "Batch"), "key")}
    assert list(rows) == list(Batch.__annotations__), "docs/contracts.md#batch and Batch list other keys"
    batch = a_batch(with_tabular=True)
    for key, row in rows.items():
        value = batch[key]
        if isinstance(value, torch.Tensor):
            assert str(value.dtype).removeprefix("torch.") == row["dtype"], f"{key}: dtype {value.dtype} vs doc {row}"
            assert value.ndim == rank(row["shape"]), f"{key}: shape {tuple(value.shape)} vs doc {row['shape']}"
        else:
            assert row["dtype"] == "list of str" and all(isinstance(v, str) for v in value), (key, row)


# ------------------------------------------------------------------------ model outputs
def test_model_outputs_section_matches_a_real_model():
    from senolab.models import HEADS, build_model

    rows = {row["key"]: row for row in table(section(DOC, "Model outputs"), "key")}
    head_keys = {HEADS.get(name).output_key for name in HEADS.names()}
    assert head_keys | {"embedding", "tokens"} == set(rows), f"doc lists {sorted(rows)}; heads give {sorted(head_keys)}"
    torch.manual_seed(0)
    model = build_model("unet", {"cls": {"num_classes": 3}, "seg": {}, "box": {}}).eval()
    with torch.no_grad():
        out = model(a_batch(with_tabular=False))
    assert set(out) <= set(rows) and set(out) >= head_keys | {"embedding"}, sorted(out)
    for key, value in out.items():
        assert value.ndim == rank(rows[key]["shape"]), f"{key}: {tuple(value.shape)} vs doc {rows[key]}"


# ---------------------------------------------------------------- evaluation outputs
def test_summary_section_matches_what_evaluate_writes(tmp_path):
    from senolab.evaluation import evaluate
    from senolab.evaluation.metrics import registered_metrics

    text = section(DOC, "Evaluation outputs")
    rng = np.random.default_rng(0)
    n = 24
    probs = rng.dirichlet([1, 1], n)
    table_ = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                           "site": ["a"] * (n // 2) + ["b"] * (n // 2), "label": [float(i % 2) for i in range(n)],
                           "prob_benign": probs[:, 0], "prob_malignant": probs[:, 1],
                           "lesion_present": [True] * n, "dice": rng.random(n)})
    evaluation = evaluate(table_, n_resamples=5, progress=False)
    summary = evaluation.to_summary({})
    block = re.search(r"```\n(\{\"config\".*?)```", text, re.S).group(1)
    for key in summary:
        assert f'"{key}"' in block, f"summary.json key {key!r} is not in the documented shape"
    for key in evaluation.settings:
        assert f'"{key}"' in block, f"summary.json evaluation setting {key!r} is not documented"
    entry = summary["aggregates"]["model"]["a"]["auc"]
    assert all(f'"{k}"' in block for k in entry), f"aggregate entry keys {sorted(entry)} not all documented"
    worst = summary["aggregates"]["model"]["worst_site"]["auc"]
    assert all(f'"{k}"' in block for k in worst), f"worst_site entry keys {sorted(worst)} not all documented"
    assert f'"{next(k for k in summary["aggregates"]["model"] if k not in ("a", "b", "worst_site"))}"' in block
    metrics_line = re.search(r"Metrics are those of the registry.*?:(.*?)\.\n", text, re.S).group(1)
    documented = re.findall(r"`(\w+)`", metrics_line)
    registered = [m.name for m in registered_metrics()]
    assert len(set(documented)) == len(documented) and set(documented) == set(registered), (
        f"documented metrics {documented}; METRICS holds {registered}"
    )
    results = pd.read_csv(evaluation.write(tmp_path)["results"])
    assert list(results.columns[:4]) == ["method", "site", "n_cases", "n_patients"]
    assert "`method, site, n_cases, n_patients`, then `<metric>, <metric>_lo, <metric>_hi`" in text


# ------------------------------------------------------------------------- references
def test_nothing_cites_the_old_design_notes():
    citing = [f"{p.relative_to(REPO)}:{i}" for p in [*source_files(), *(REPO / "docs").rglob("*.md"), REPO / "README.md"]
              for i, line in enumerate(p.read_text().splitlines(), 1) if OLD_NOTES in line]
    assert not citing, f"{OLD_NOTES} is not in the repository; cite docs/ instead: {citing}"


def test_docs_references_in_the_source_resolve():
    references = [(p, m) for p in source_files() for m in DOCS_REFERENCE.finditer(p.read_text())]
    assert len(references) >= 10, "the docstrings that rely on a contract should link to docs/contracts.md"
    broken = []
    for path, match in references:
        target, anchor = REPO / "docs" / match.group(1), match.group(2)
        if not target.is_file():
            broken.append(f"{path.relative_to(REPO)}: {match.group(0)} (no such file)")
        elif anchor and anchor not in anchors(target.read_text()):
            broken.append(f"{path.relative_to(REPO)}: {match.group(0)} (no such heading)")
    assert not broken, "\n".join(broken)


def test_links_inside_docs_resolve():
    pages = sorted((REPO / "docs").glob("*.md"))
    assert CONTRACTS in pages and REPO / "docs" / "README.md" in pages
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([\w-]+))?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            linked = (page.parent / target) if target else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in anchors(linked.read_text()):
                broken.append(f"{page.name}: {target}#{anchor} (no such heading)")
    assert not broken, "\n".join(broken)
