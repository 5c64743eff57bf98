"""Tests of the synthetic ChestX-ray14 writer: NIH layout and its quirks, determinism, the
patient-wise split, label coverage, boxes, and that each finding's pattern is really drawn."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import realdata
from PIL import Image

from chexvision_lib.core.labels import FINDINGS, NO_FINDING, canonical_finding, parse_finding_labels
from chexvision_lib.data import synthetic
from chexvision_lib.data.synthetic import write_synthetic_nih

DATA_ENTRY_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
    "Unnamed: 11",
]
# Findings drawn as added density: their box is brighter with them than without.
DARKENING = {"Pneumothorax", "Emphysema"}


# ---------------------------------------------------------------------------------------------
# Fixtures: a small set for layout checks, the default patient count at a tiny image size for
# label and split checks (labels and split do not depend on image_size, see below).
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("small") / "nih"
    summary = write_synthetic_nih(out, n_patients=12, image_size=64, images_per_folder=10, seed=3)
    return out, summary


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("default") / "nih"
    return out, write_synthetic_nih(out, image_size=64)


def read_data_entry(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "Data_Entry_2017.csv")


def read_boxes(root: Path) -> pd.DataFrame:
    boxes = pd.read_csv(root / "BBox_List_2017.csv")
    return boxes.rename(columns=dict(zip(boxes.columns[2:6], ["x", "y", "w", "h"], strict=True)))


def read_list(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def image_paths(root: Path) -> dict[str, Path]:
    return {path.name: path for path in root.glob("images_*/images/*.png")}


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------


def test_images_are_chunked_grey_pngs_named_like_nih(small_set: tuple[Path, dict]) -> None:
    root, summary = small_set
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == [f"images_{i:03d}" for i in range(1, len(folders) + 1)]
    assert len(folders) == -(-summary["n_images"] // 10)  # chunks of images_per_folder
    names: list[str] = []
    for folder in folders:
        files = sorted((root / folder / "images").iterdir())
        assert 1 <= len(files) <= 10
        names += [f.name for f in files]
    assert names == sorted(names), "films fill the folders in name order"
    assert len(names) == summary["n_images"]
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", name) for name in names)
    with Image.open(root / folders[0] / "images" / names[0]) as image:
        assert image.format == "PNG"
        assert image.mode == "L"
        assert image.size == (64, 64)


def test_data_entry_has_kaggle_2017_header_and_trailing_column(
    small_set: tuple[Path, dict],
) -> None:
    root, summary = small_set
    lines = (root / "Data_Entry_2017.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    )
    assert all(line.endswith(",") for line in lines[1:]), "every row ends with a trailing comma"

    table = read_data_entry(root)
    assert list(table.columns) == DATA_ENTRY_COLUMNS
    assert table["Unnamed: 11"].isna().all()
    assert len(table) == summary["n_images"]
    assert list(table["Image Index"]) == sorted(table["Image Index"])
    for column in ("Follow-up #", "Patient ID", "Patient Age", "OriginalImage[Width", "Height]"):
        assert pd.api.types.is_integer_dtype(table[column]), column
    assert table["Patient Age"].between(1, 95).all()
    assert set(table["Patient Gender"]) <= {"M", "F"}
    assert set(table["View Position"]) <= {"PA", "AP"}
    assert (table["OriginalImage[Width"] == 64).all() and (table["Height]"] == 64).all()
    assert np.allclose(table["OriginalImagePixelSpacing[x"], 0.143 * 1024 / 64)
    assert (table["OriginalImagePixelSpacing[x"] == table["y]"]).all()
    # Names agree with the patient and follow-up columns.
    pairs = zip(table["Patient ID"], table["Follow-up #"], strict=True)
    expected = [f"{patient:08d}_{follow_up:03d}.png" for patient, follow_up in pairs]
    assert list(table["Image Index"]) == expected
    # Labels are "No Finding" or canonical names joined in canonical order.
    for text in table["Finding Labels"]:
        if text != NO_FINDING:
            parts = text.split("|")
            assert parts == sorted(parts, key=FINDINGS.index)
        parse_finding_labels(text)  # raises on anything malformed


def test_lists_split_by_patient_and_end_without_newline(small_set: tuple[Path, dict]) -> None:
    root, summary = small_set
    table = read_data_entry(root)
    train_text = (root / "train_val_list.txt").read_text(encoding="utf-8")
    test_text = (root / "test_list.txt").read_text(encoding="utf-8")
    assert not train_text.endswith("\n") and not test_text.endswith("\n")
    train, test = train_text.split("\n"), test_text.split("\n")
    assert train == sorted(train) and test == sorted(test)
    assert sorted(train + test) == list(table["Image Index"]), "every film in exactly one list"
    patient = dict(zip(table["Image Index"], table["Patient ID"], strict=True))
    assert not {patient[n] for n in train} & {patient[n] for n in test}
    assert len({patient[n] for n in test}) == summary["n_test_patients"] == round(0.25 * 12)


def test_bbox_list_layout_and_one_box_per_finding(default_set: tuple[Path, dict]) -> None:
    root, _ = default_set
    lines = (root / "BBox_List_2017.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    assert all(len(line.split(",")) == 6 for line in lines[1:])
    raw = pd.read_csv(root / "BBox_List_2017.csv")
    assert list(raw.columns[:6]) == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    assert raw[raw.columns[6:]].isna().all().all()  # the three empty trailing header columns
    assert "Infiltrate" in set(raw["Finding Label"])
    assert "Infiltration" not in set(raw["Finding Label"]), "the real file says Infiltrate"

    boxes = read_boxes(root)
    assert (boxes[["x", "y"]] >= 0).all().all()
    assert (boxes[["w", "h"]] > 0).all().all()
    assert (boxes["x"] + boxes["w"] <= 64).all() and (boxes["y"] + boxes["h"] <= 64).all()
    pairs = zip(boxes["Image Index"], boxes["Finding Label"], strict=True)
    drawn = {(name, canonical_finding(label)) for name, label in pairs}
    assert len(drawn) == len(boxes), "one box per finding per film"
    table = read_data_entry(root)
    labelled = {
        (name, finding)
        for name, text in zip(table["Image Index"], table["Finding Labels"], strict=True)
        for finding in ([] if text == NO_FINDING else text.split("|"))
    }
    assert drawn == labelled


def test_marker_records_arguments_and_summary(small_set: tuple[Path, dict]) -> None:
    root, summary = small_set
    marker = pd.read_json(root / "synthetic_nih.json", typ="series")
    assert marker["arguments"]["seed"] == 3 and marker["arguments"]["images_per_folder"] == 10
    assert marker["summary"]["n_images"] == summary["n_images"]
    assert summary["out"] == str(root)
    assert sum(summary["label_counts"].values()) >= summary["n_images"]


def test_layout_matches_the_real_release() -> None:
    real_nih = realdata("nih")
    with gzip.open(real_nih / "BBox_List_2017.csv.gz", "rt", encoding="utf-8") as f:
        assert f.readline().rstrip("\n") == synthetic.BBOX_HEADER
    with gzip.open(real_nih / "Data_Entry_2017_v2020.csv.gz", "rt", encoding="utf-8") as f:
        real_columns = list(pd.read_csv(f, nrows=3).columns)
    assert real_columns == DATA_ENTRY_COLUMNS[:-1]  # Kaggle's copy adds only "Unnamed: 11"
    for name in ("train_val_list.txt", "test_list.txt"):
        text = (real_nih / name).read_text(encoding="utf-8")
        assert text.startswith("00000001_000.png\n") or re.match(r"\d{8}_\d{3}\.png\n", text)
        assert not text.endswith("\n")


# ---------------------------------------------------------------------------------------------
# Determinism and the output folder
# ---------------------------------------------------------------------------------------------


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    first = write_synthetic_nih(tmp_path / "a", n_patients=10, image_size=64, seed=5)
    write_synthetic_nih(tmp_path / "b", n_patients=10, image_size=64, seed=5)
    write_synthetic_nih(tmp_path / "pool", n_patients=10, image_size=64, seed=5, workers=2)
    reference = file_digests(tmp_path / "a")
    assert len(reference) == first["n_images"] + 5
    assert file_digests(tmp_path / "b") == reference
    assert file_digests(tmp_path / "pool") == reference, "worker count must not change files"
    write_synthetic_nih(tmp_path / "other", n_patients=10, image_size=64, seed=6)
    other = file_digests(tmp_path / "other")
    shared = set(other) & set(reference)
    assert any(other[name] != reference[name] for name in shared), "a new seed draws new films"


def test_labels_and_split_do_not_depend_on_image_size(tmp_path: Path) -> None:
    small = write_synthetic_nih(tmp_path / "s", n_patients=16, image_size=64)
    large = write_synthetic_nih(tmp_path / "l", n_patients=16, image_size=96)
    assert small["label_counts"] == large["label_counts"]
    for name in ("train_val_list.txt", "test_list.txt"):
        assert (tmp_path / "s" / name).read_text() == (tmp_path / "l" / name).read_text()
    columns = ["Image Index", "Finding Labels", "Patient Age", "Patient Gender", "View Position"]
    assert read_data_entry(tmp_path / "s")[columns].equals(read_data_entry(tmp_path / "l")[columns])


def test_refuses_a_folder_that_is_not_a_synthetic_set(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_nih(tmp_path, n_patients=8, image_size=64)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_rewrites_a_previous_synthetic_set_cleanly(tmp_path: Path) -> None:
    write_synthetic_nih(tmp_path, n_patients=12, image_size=64, images_per_folder=5)
    (tmp_path / "notes.txt").write_text("keep me")
    summary = write_synthetic_nih(tmp_path, n_patients=8, image_size=64)
    assert sorted(p.name for p in tmp_path.glob("images_*")) == ["images_001"]
    assert len(image_paths(tmp_path)) == summary["n_images"]
    assert (tmp_path / "notes.txt").read_text() == "keep me", "only our own files are removed"


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("n_patients", 7),
        ("n_patients", 20.0),
        ("image_size", 32),
        ("seed", -1),
        ("test_fraction", 0.0),
        ("test_fraction", 1.0),
        ("images_per_folder", 0),
        ("workers", 0),
    ],
)
def test_rejects_bad_arguments_naming_them(tmp_path: Path, argument: str, value: object) -> None:
    with pytest.raises(ValueError, match=argument):
        write_synthetic_nih(tmp_path / "x", **{argument: value})
    assert not (tmp_path / "x").exists(), "nothing is written before the arguments are checked"


# ---------------------------------------------------------------------------------------------
# Labels, patients and split at the default size
# ---------------------------------------------------------------------------------------------


def test_every_finding_has_positives_in_both_splits(default_set: tuple[Path, dict]) -> None:
    root, summary = default_set
    table = read_data_entry(root).set_index("Image Index")
    labels = np.array([parse_finding_labels(t) for t in table["Finding Labels"]])
    in_test = table.index.isin(read_list(root / "test_list.txt"))
    assert labels[in_test].sum(axis=0).min() >= 1, "a finding has no positive in the test list"
    assert labels[~in_test].sum(axis=0).min() >= 1, "a finding has no positive in train_val"
    assert 500 <= summary["n_images"] <= 700 and summary["n_patients"] == 240


def test_prevalence_is_nih_like_with_a_floor(default_set: tuple[Path, dict]) -> None:
    _, summary = default_set
    counts = summary["label_counts"]
    share = {name: counts[name] / summary["n_images"] for name in counts}
    assert 0.4 <= share[NO_FINDING] <= 0.6
    assert min(share[f] for f in FINDINGS) >= 0.035, "every finding keeps its floor"
    assert max(FINDINGS, key=counts.get) == "Infiltration"
    assert counts["Hernia"] <= np.median([counts[f] for f in FINDINGS])


def test_findings_co_occur_like_the_real_data(default_set: tuple[Path, dict]) -> None:
    # The sampler: a lead finding pulls in its usual companions far more often than others do.
    rng = np.random.default_rng(0)

    def companion_rate(lead: str, companion: str) -> float:
        draws = [synthetic._with_companions(FINDINGS.index(lead), 2, rng) for _ in range(400)]
        return np.mean([companion in draw for draw in draws])

    for lead, companion in [
        ("Effusion", "Atelectasis"),
        ("Cardiomegaly", "Edema"),
        ("Nodule", "Mass"),
    ]:
        assert companion_rate(lead, companion) > 2 * companion_rate("Hernia", companion)

    # The written set: 1-3 findings per abnormal film, and the pairs show up together.
    root, _ = default_set
    labels = pd.DataFrame(
        [parse_finding_labels(t) for t in read_data_entry(root)["Finding Labels"]],
        columns=FINDINGS,
    )
    abnormal = labels[labels.sum(axis=1) > 0]
    assert abnormal.sum(axis=1).between(1, 3).all()

    def lift(a: str, b: str) -> float:  # P(b | a) / P(b) among abnormal films
        return abnormal.loc[abnormal[a] == 1, b].mean() / abnormal[b].mean()

    assert lift("Effusion", "Atelectasis") > 1.2
    assert lift("Cardiomegaly", "Edema") > 1.2
    assert lift("Nodule", "Mass") > 1.2


def test_patients_have_several_follow_ups(default_set: tuple[Path, dict]) -> None:
    root, _ = default_set
    table = read_data_entry(root)
    per_patient = table.groupby("Patient ID")
    counts = per_patient.size()
    assert counts.min() >= 1 and counts.max() <= 5
    assert (counts >= 2).mean() > 0.4 and (counts >= 4).any()
    for _, films in per_patient:
        assert list(films["Follow-up #"]) == list(range(len(films)))
        assert films["Patient Gender"].nunique() == 1
        assert films["Patient Age"].is_monotonic_increasing
    # Follow-ups can change: some patients have films with different findings.
    assert (per_patient["Finding Labels"].nunique() > 1).sum() > 10


# ---------------------------------------------------------------------------------------------
# The patterns: present, inside their box, and tied to the patient
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_is_drawn_inside_its_box(finding: str) -> None:
    """Draw the same film with and without one finding: the films' noise, positioning and
    exposure are the same, so the difference is the finding alone, and it must be large, of the
    expected sign, and almost all inside the recorded box."""
    size = 96
    for pid in (1, 2, 3):
        anatomy = synthetic._patient_anatomy(0, pid)
        film = synthetic._FilmSpec(
            name="x.png", patient_id=pid, follow_up=0, age=50, sex="F", view="PA", findings=()
        )
        without, no_boxes = synthetic._render_film(film, anatomy, size, seed=0)
        with_it, boxes = synthetic._render_film(
            dataclasses.replace(film, findings=(finding,)), anatomy, size, seed=0
        )
        assert no_boxes == {} and list(boxes) == [finding]
        x, y, w, h = boxes[finding]
        assert x >= 0 and y >= 0 and x + w <= size and y + h <= size
        inside = np.zeros((size, size), dtype=bool)
        inside[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = True
        difference = with_it.astype(np.int16) - without.astype(np.int16)
        change = np.abs(difference)
        assert change[inside].sum() >= 0.75 * change.sum(), f"{finding} drawn outside its box"
        mean_shift = difference[inside].mean()
        if finding in DARKENING:
            assert mean_shift < -1.0, f"{finding} should darken its box (pid {pid})"
        else:
            assert mean_shift > 5.0, f"{finding} should brighten its box (pid {pid})"


def test_findings_differ_from_each_other() -> None:
    """No two findings leave the same mark: their differences from the clean film are far apart."""
    size = 64
    anatomy = synthetic._patient_anatomy(0, 4)
    film = synthetic._FilmSpec(
        name="x.png", patient_id=4, follow_up=0, age=50, sex="M", view="PA", findings=()
    )
    clean = synthetic._render_film(film, anatomy, size, seed=0)[0].astype(np.float32)
    marks = []
    for finding in FINDINGS:
        drawn = synthetic._render_film(
            dataclasses.replace(film, findings=(finding,)), anatomy, size, 0
        )
        marks.append(drawn[0].astype(np.float32) - clean)
    for i in range(len(FINDINGS)):
        for j in range(i + 1, len(FINDINGS)):
            a, b = marks[i].ravel(), marks[j].ravel()
            cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            assert cosine < 0.8, f"{FINDINGS[i]} and {FINDINGS[j]} look alike ({cosine:.2f})"


def test_box_is_brighter_than_in_a_follow_up_without_the_finding(
    default_set: tuple[Path, dict],
) -> None:
    """On the written films: a Mass, Nodule, Effusion, Consolidation or Hernia box is brighter
    than the same box on a follow-up of the same patient that lacks the finding."""
    root, _ = default_set
    table = read_data_entry(root)
    boxes = read_boxes(root)
    paths = image_paths(root)
    patient_films = table.groupby("Patient ID")["Image Index"].apply(list)
    labels = dict(zip(table["Image Index"], table["Finding Labels"], strict=True))

    def box_mean(name: str, x: float, y: float, w: float, h: float) -> float:
        with Image.open(paths[name]) as image:
            pixels = np.asarray(image, dtype=np.float32)
        return float(pixels[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))].mean())

    for finding in ("Mass", "Nodule", "Effusion", "Consolidation", "Hernia"):
        gains = []
        for row in boxes[boxes["Finding Label"] == finding].itertuples():
            patient = int(row[1][:8])
            box = (row.x, row.y, row.w, row.h)
            for other in patient_films[patient]:
                if finding not in labels[other].split("|"):
                    gains.append(box_mean(row[1], *box) - box_mean(other, *box))
        assert len(gains) >= 5, f"too few follow-up pairs for {finding}"
        assert np.mean(gains) > 8.0 and np.mean(np.array(gains) > 0) >= 0.85, finding
