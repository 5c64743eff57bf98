"""The model card's reporting checklist (TRIPOD+AI / CLAIM): every item on the card, each filled
from the model folder's own files, flipping to "reported" when the evidence is added."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import tiny_evaluated_run

from chexvision_lib.data.provenance import OFFICIAL_SPLIT_SHA256
from chexvision_lib.publishing.checklist import (
    ITEMS,
    NOT_APPLICABLE,
    NOT_REPORTED,
    REPORTED,
    STATUSES,
    checklist_rows,
)
from chexvision_lib.publishing.model_card import (
    CHECKLIST_HEADING,
    read_card_inputs,
    render_model_card,
)
from chexvision_lib.publishing.model_folder import build_model_folder, data_section

# TRIPOD+AI (BMJ 2024): 27 main items, some split into lettered subitems (3a-c, 5a-b, 6a-c,
# 8a-c, 9a-c, 12a-g, 18a-f, 20a-c, 23a-b, 27a-c). CLAIM 2024 update: items 1 to 44.
TRIPOD_AI_SUBITEMS = {3: "abc", 5: "ab", 6: "abc", 8: "abc", 9: "abc", 12: "abcdefg", 18: "abcdef"}
TRIPOD_AI_SUBITEMS |= {20: "abc", 23: "ab", 27: "abc"}
TRIPOD_AI_ITEMS = {
    f"{n}{letter}" for n in range(1, 28) for letter in TRIPOD_AI_SUBITEMS.get(n, [""])
}
CLAIM_ITEMS = {str(n) for n in range(1, 45)}


# ----------------------------------------------------------------------------------------------
# Fixtures: one tiny run and its model folder (the setup of tests/test_publish.py, no figures)
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checklist")
    run = tiny_evaluated_run(synth_root, root)
    return run


@pytest.fixture(scope="module")
def folder(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("checklist_hub") / "model"
    return build_model_folder(run, out, figures=False, repo_id="someone/chexvision-test")


@pytest.fixture
def copy(folder: Path, tmp_path: Path) -> Path:
    """A private copy of the model folder that a test may change."""
    return Path(shutil.copytree(folder, tmp_path / "model"))


def section(card: str) -> str:
    """The checklist section of a card, up to the next heading."""
    body = card.split(CHECKLIST_HEADING, 1)[1]
    return CHECKLIST_HEADING + body.split("\n## ", 1)[0]


def rows_of(card: str) -> dict[str, list[str]]:
    """Checklist table rows by item title: [TRIPOD+AI, CLAIM, status, evidence]."""
    rows = {}
    lines = section(card).splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("| Item |"))
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows[cells[0]] = cells[1:]
    return rows


def status(card: str, item_id: str) -> str:
    item = next(i for i in ITEMS if i.id == item_id)
    return rows_of(card)[item.title][2]


def evidence(card: str, item_id: str) -> str:
    item = next(i for i in ITEMS if i.id == item_id)
    return rows_of(card)[item.title][3]


def edit_json(path: Path, edit) -> None:
    values = json.loads(path.read_text())
    edit(values)
    path.write_text(json.dumps(values))


def with_source(copy: Path, source_edit) -> None:
    """Rewrite the folder's data section as if the run had recorded another data source."""
    config = json.loads((copy / "config.json").read_text())
    source = source_edit(dict(config["training"]["data_source"]))
    config["data"] = data_section({**config["training"], "data_source": source}, {})
    (copy / "config.json").write_text(json.dumps(config))


# ----------------------------------------------------------------------------------------------
# The items themselves
# ----------------------------------------------------------------------------------------------


def test_items_cite_real_item_numbers():
    assert len({item.id for item in ITEMS}) == len(ITEMS)
    assert len({item.title for item in ITEMS}) == len(ITEMS)
    for item in ITEMS:
        tripod = [n.strip() for n in item.tripod_ai.split(",") if n.strip()]
        claim = [n.strip() for n in item.claim.split(",") if n.strip()]
        assert tripod or claim, item
        assert set(tripod) <= TRIPOD_AI_ITEMS, item
        assert set(claim) <= CLAIM_ITEMS, item
    ids = {item.id for item in ITEMS}
    assert {
        "intended_use",
        "data_source",
        "patient_split",
        "reference_standard",
        "expert_labels",
        "discrimination",
        "calibration",
        "subgroups",
        "operating_point",
        "limitations",
        "sample_sizes",
        "missing_data",
        "external_validation",
    } == ids


# ----------------------------------------------------------------------------------------------
# On the card
# ----------------------------------------------------------------------------------------------


def test_card_has_the_checklist_with_every_item(folder: Path):
    card = (folder / "README.md").read_text()
    assert card.count(CHECKLIST_HEADING) == 1
    # near the end: after the file list, before the citation
    assert card.index("## Files") < card.index(CHECKLIST_HEADING) < card.index("## Citation")
    rows = rows_of(card)
    assert list(rows) == [item.title for item in ITEMS]
    for item in ITEMS:
        tripod, claim, state, text = rows[item.title]
        assert tripod == (item.tripod_ai or "—") and claim == (item.claim or "—")
        assert state in STATUSES, (item.id, state)
        assert text, item.id
    # This folder: synthetic data, metrics with CIs, subgroups, thresholds, no calibration
    # block unless evaluate wrote one, no expert labels, no external results.
    for item_id in (
        "intended_use",
        "data_source",
        "missing_data",
        "reference_standard",
        "patient_split",
        "sample_sizes",
        "discrimination",
        "subgroups",
        "operating_point",
        "limitations",
    ):
        assert status(card, item_id) == REPORTED, item_id
    assert status(card, "expert_labels") == NOT_APPLICABLE  # synthetic images: no reader
    assert status(card, "external_validation") == NOT_REPORTED


def test_rows_read_the_run_files(folder: Path, run: Path):
    card = (folder / "README.md").read_text()
    metrics = json.loads((folder / "results" / "test" / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    text = evidence(card, "discrimination")
    assert f"{metrics['macro_auc']:.4f}" in text
    low, high = metrics["macro_auc_ci95"]
    assert f"[{low:.4f}, {high:.4f}]" in text
    assert f"{metrics['bootstrap']['n_resamples']} bootstrap resamples of patients" in text
    assert "`results/test/metrics.json`" in text
    text = evidence(card, "operating_point")
    assert f"`{config['threshold_method']}`" in text and "validation split" in text
    point = metrics["outputs"]["Abnormal"]["at_validation_threshold"]
    assert f"sensitivity {point['sensitivity']:.3f}" in text
    text = evidence(card, "sample_sizes")
    for split in ("val", "test"):
        recorded = json.loads((run / split / "metrics.json").read_text())
        assert f"{recorded['n_patients']:,} patients" in text
    assert f"train: {config['data']['counts']['train']:,} images indexed" in text
    text = evidence(card, "patient_split")
    assert "test: test_list.txt of the synthetic set" in text
    assert "patient level" in text and "check_patient_disjoint" in text
    assert "synthetic" in evidence(card, "reference_standard")
    assert "Research" in evidence(card, "intended_use")
    assert "disclaimer opens the card" in evidence(card, "intended_use")
    assert "Labels were text-mined" in evidence(card, "limitations")


def test_data_source_row_shows_hashes_and_verdict(folder: Path, copy: Path):
    card = (folder / "README.md").read_text()
    text = evidence(card, "data_source")
    split_files = json.loads((folder / "config.json").read_text())["data"]["split_files"]
    assert split_files
    for name, digest in split_files.items():
        assert f"`{name}` `{digest}`" in text
    assert "**not verified**" in text and "synthetic" in text

    # A real copy whose split lists are NIH's: verified, and its labels are the NLP-mined ones.
    with_source(
        copy,
        lambda s: {**s, "synthetic": False, "sha256": {**s["sha256"], **OFFICIAL_SPLIT_SHA256}},
    )
    card = render_model_card(copy)
    text = evidence(card, "data_source")
    assert "**verified**" in text and "not verified" not in text
    for digest in OFFICIAL_SPLIT_SHA256.values():
        assert digest in text
    assert status(card, "reference_standard") == REPORTED
    assert "text-mined from the radiology reports by NLP" in evidence(card, "reference_standard")
    assert status(card, "expert_labels") == NOT_REPORTED  # real images, no expert results

    # Not synthetic, split lists not NIH's: unverified, with the reasons; labels not established.
    with_source(copy, lambda s: {**s, "synthetic": False})
    card = render_model_card(copy)
    text = evidence(card, "data_source")
    assert "**not verified**" in text and "not that of NIH's official" in text
    assert status(card, "reference_standard") == NOT_REPORTED


def test_items_flip_when_the_evidence_is_added_or_removed(copy: Path):
    metrics_path = copy / "results" / "test" / "metrics.json"
    edit_json(metrics_path, lambda m: m.pop("calibration", None))
    card = render_model_card(copy)
    assert status(card, "calibration") == NOT_REPORTED
    assert status(card, "subgroups") == REPORTED

    entry = {"brier": 0.1234, "brier_ci95": [0.1, 0.15], "ece": 0.0456, "ece_ci95": [0.02, 0.07]}
    calibration = {
        "binning": {"strategy": "uniform", "n_bins": 10},
        "bootstrap": {"unit": "patient", "n_resamples": 50, "seed": 0},
        "outputs": {"Abnormal": entry},
    }
    edit_json(metrics_path, lambda m: m.update(calibration=calibration))
    (copy / "results" / "test" / "subgroups.csv").unlink()
    card = render_model_card(copy)
    assert status(card, "calibration") == REPORTED
    text = evidence(card, "calibration")
    assert "Brier 0.1234 [0.1000, 0.1500]" in text and "ECE 0.0456 [0.0200, 0.0700]" in text
    assert "10 uniform bins" in text
    assert status(card, "subgroups") == NOT_REPORTED
    assert "`results/test/subgroups.csv`" in evidence(card, "subgroups")

    assert status(card, "external_validation") == NOT_REPORTED
    external = copy / "results" / "external_shenzhen_test"
    external.mkdir()
    (external / "metrics.json").write_text("{}")
    (copy / "results" / "test" / "google_expert_labels.csv").write_text("label,auc\n")
    card = render_model_card(copy)
    assert status(card, "external_validation") == REPORTED
    assert "`results/external_shenzhen_test/metrics.json`" in evidence(card, "external_validation")
    assert status(card, "expert_labels") == REPORTED
    assert "`results/test/google_expert_labels.csv`" in evidence(card, "expert_labels")

    edit_json(copy / "config.json", lambda c: c.pop("threshold_method"))
    assert status(render_model_card(copy), "operating_point") == NOT_REPORTED


def test_missing_data_counts_come_from_the_source(copy: Path):
    with_source(copy, lambda s: {**s, "skipped": {"missing_images": 3, "other_views": 0}})
    text = evidence(render_model_card(copy), "missing_data")
    assert "`missing_images` 3" in text and "other_views" not in text
    with_source(copy, lambda s: {k: v for k, v in s.items() if k != "skipped"})
    config = json.loads((copy / "config.json").read_text())
    config["data"]["skipped"] = None
    config["data"]["counts"] = {}
    (copy / "config.json").write_text(json.dumps(config))
    assert status(render_model_card(copy), "missing_data") == NOT_REPORTED


def test_no_local_paths_in_the_checklist(folder: Path, run: Path, copy: Path):
    with_source(copy, lambda s: {**s, "synthetic": False})  # reasons quote recorded values
    for card in ((folder / "README.md").read_text(), render_model_card(copy)):
        text = section(card)
        assert str(run.parent) not in text and str(Path.home()) not in text
        # no absolute path: nothing that starts with "/" or a drive letter after a space,
        # backtick or bracket
        assert not re.search(r"(^|[\s`(\[])(/[\w.-]+/|[A-Za-z]:\\)", text), text


def test_checklist_rows_directly(folder: Path):
    inputs = read_card_inputs(folder)
    rows = checklist_rows(inputs)  # the card's text: the folder's README.md
    assert [row.item for row in rows] == list(ITEMS)
    by_id = {row.item.id: row for row in rows}
    assert by_id["intended_use"].status == REPORTED
    item, state, text = by_id["limitations"]  # rows are (item, status, evidence)
    assert state == REPORTED and "## Limitations" in text
    without_card = {row.item.id: row for row in checklist_rows(inputs, "")}
    assert without_card["intended_use"].status == NOT_REPORTED
    assert without_card["limitations"].status == NOT_REPORTED
