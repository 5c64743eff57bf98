"""`chexvision score`: predictions of any tool scored against NIH's metadata.

Column forms, subsets, the abnormal score (given, as 1 - No Finding, derived), logits, every error
naming its row or column, the split check, expert labels, DeLong against a reference, and on the
real metadata: scikit-learn's AUCs to 1e-6."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import HEADER_2020, realdata
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from chexvision_lib.cli.main import main as cli_main
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import label_column, prob_column, read_predictions
from chexvision_lib.data.splits import read_split_list
from chexvision_lib.evaluation.compare import compare_predictions
from chexvision_lib.evaluation.label_sets import GOOGLE_MAPPING
from chexvision_lib.evaluation.metrics import delong_test
from chexvision_lib.evaluation.score import (
    ABNORMAL_RULE,
    read_any_predictions,
    score_predictions,
    split_check,
)

N_PATIENTS = 30
TEST_PATIENTS = range(21, N_PATIENTS + 1)  # 20 of the 60 images


def tiny_labels() -> pd.DataFrame:
    """60 images of 30 patients (2 each) with every finding present and absent somewhere."""
    rows = []
    for k in range(2 * N_PATIENTS):
        patient = k // 2 + 1
        vector = [int((k + j) % 4 == 0 or (k * (j + 3)) % 7 == 1) for j in range(len(FINDINGS))]
        if k % 5 == 0:
            vector = [0] * len(FINDINGS)
        rows.append(
            {
                "image": f"{patient:08d}_{k % 2:03d}.png",
                "patient": patient,
                **dict(zip(FINDINGS, vector, strict=True)),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def nih(tmp_path: Path) -> Path:
    """A metadata CSV (NIH's v2020 header) with the two split lists beside it."""
    folder = tmp_path / "nih"
    folder.mkdir()
    labels = tiny_labels()
    lines = [HEADER_2020]
    for k, row in labels.iterrows():
        found = [f for f in FINDINGS if row[f]] or ["No Finding"]
        sex, view = ("M", "PA") if k % 3 else ("F", "AP")
        lines.append(
            f"{row['image']},{'|'.join(found)},0,{row['patient']},{20 + k},{sex},{view},"
            "1024,1024,0.143,0.143"
        )
    (folder / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    test = labels["patient"].isin(TEST_PATIENTS)
    (folder / "test_list.txt").write_text("\n".join(labels.loc[test, "image"]))
    (folder / "train_val_list.txt").write_text("\n".join(labels.loc[~test, "image"]))
    return folder


def metadata(nih: Path) -> str:
    return str(nih / "Data_Entry_2017_v2020.csv")


def scores_for(images: list[str], seed: int = 0) -> np.ndarray:
    """Probabilities (n, 14) that carry some signal about the tiny labels."""
    labels = tiny_labels().set_index("image").loc[images, list(FINDINGS)].to_numpy()
    rng = np.random.default_rng(seed)
    return expit(1.5 * (labels - 0.5) + rng.normal(0, 1, labels.shape))


def listed_test_images(nih: Path) -> list[str]:
    return read_split_list(nih / "test_list.txt")


def write_predictions(
    path: Path,
    images: list[str],
    *,
    findings: tuple[str, ...] = FINDINGS,
    name=lambda f: f"prob_{f}",
    image_column: str = "Image Index",
    extra: dict | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    probs = scores_for(images, seed)
    frame = pd.DataFrame({image_column: images})
    for f in findings:
        frame[name(f)] = probs[:, FINDINGS.index(f)]
    for column, values in (extra or {}).items():
        frame[column] = values
    frame.to_csv(path, index=False)
    return frame


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli_main(["score", *argv])
    except SystemExit as stop:  # argument errors leave from the parser
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(argv: list[str], capsys) -> str:
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("chexvision score: error: "), err
    return first


def label_matrix(frame: pd.DataFrame) -> np.ndarray:
    return tiny_labels().set_index("image").loc[frame["image_id"], list(FINDINGS)].to_numpy()


# ----------------------------------------------------------------------------------------------
# Accepted forms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "prefix"),
    [
        ("Image Index", ""),
        ("image_id", ""),
        ("image", ""),
        ("filename", ""),
        ("path", "/data/images_001/images/"),
        ("Path", "C:\\nih\\images\\"),
    ],
)
def test_each_image_column_form(nih: Path, tmp_path: Path, column: str, prefix: str):
    images = listed_test_images(nih)
    path = tmp_path / "p.csv"
    pd.DataFrame({column: [prefix + i for i in images], "Effusion": 0.5}).to_csv(path, index=False)
    parsed = read_any_predictions(path)
    assert parsed.image_column == column
    assert parsed.image_id.tolist() == images


@pytest.mark.parametrize(
    "name",
    [
        "Pleural_Thickening",
        "Pleural Thickening",
        "prob_Pleural_Thickening",
        "prob_pleural_thickening",
        "PROB_PLEURAL THICKENING",
        "pleural-thickening",
        " prob_Pleural  Thickening ",
    ],
)
def test_each_score_column_form(nih: Path, tmp_path: Path, name: str):
    images = listed_test_images(nih)
    path = tmp_path / "p.csv"
    write_predictions(path, images, findings=("Pleural_Thickening",), name=lambda f: name)
    parsed = read_any_predictions(path)
    assert parsed.columns["Pleural_Thickening"] == name
    assert parsed.findings == ["Pleural_Thickening"]


def test_a_trailing_comma_on_every_line_is_accepted(nih: Path, tmp_path: Path):
    images = listed_test_images(nih)
    path = tmp_path / "p.csv"
    path.write_text("Image Index,Effusion,\n" + "".join(f"{i},0.5,\n" for i in images))
    assert read_any_predictions(path).findings == ["Effusion"]


def test_bbox_spelling_infiltrate_is_infiltration(nih: Path, tmp_path: Path):
    path = tmp_path / "p.csv"
    write_predictions(
        path, listed_test_images(nih), findings=("Infiltration",), name=lambda f: "Infiltrate"
    )
    assert read_any_predictions(path).findings == ["Infiltration"]


def test_all_findings_no_abnormal_column_match_sklearn(nih: Path, tmp_path: Path, capsys):
    """The main case: another tool's `Image Index,prob_Atelectasis,...`, no abnormal column."""
    images = listed_test_images(nih)
    written = write_predictions(tmp_path / "p.csv", images)
    code, out, err = run(
        [
            str(tmp_path / "p.csv"),
            "--metadata",
            metadata(nih),
            "--resamples",
            "50",
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    labels = label_matrix(pd.DataFrame({"image_id": images}))
    for j, finding in enumerate(FINDINGS):
        expected = roc_auc_score(labels[:, j], written[f"prob_{finding}"])
        assert metrics["outputs"][finding]["auc"] == pytest.approx(expected, abs=1e-9)
        low, high = metrics["outputs"][finding]["auc_ci95"]
        assert low <= metrics["outputs"][finding]["auc"] <= high
    derived = written[[f"prob_{f}" for f in FINDINGS]].max(axis=1)
    assert metrics["outputs"][ABNORMAL]["auc"] == pytest.approx(
        roc_auc_score(labels.max(axis=1), derived)
    )
    assert metrics["abnormal_derived"] is True
    assert ABNORMAL_RULE in metrics["abnormal_source"]
    assert "abnormal score DERIVED" in out
    assert metrics["disclaimer"] in out
    assert "Research and teaching use only" in out
    # The written predictions are ours: compare/labels/report read them.
    ours = read_predictions(tmp_path / "out" / "predictions.csv")
    np.testing.assert_allclose(ours[prob_column(ABNORMAL)], derived)
    assert ours[label_column("Effusion")].tolist() == labels[:, FINDINGS.index("Effusion")].tolist()
    assert {"sex", "age_band", "view"} == set(
        pd.read_csv(tmp_path / "out" / "subgroups.csv")["group_column"]
    )
    figures = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert figures == {
        "roc_findings.png",
        "auc_bars.png",
        "confusion_findings.png",
        "roc_abnormal.png",
        "confusion_abnormal.png",
        "reliability.png",
    }


def test_a_subset_of_findings(nih: Path, tmp_path: Path, capsys):
    images = listed_test_images(nih)
    subset = ("Effusion", "Mass", "Hernia")
    written = write_predictions(tmp_path / "p.csv", images, findings=subset)
    result = score_predictions(
        tmp_path / "p.csv", metadata(nih), out=tmp_path / "out", n_resamples=50
    )
    metrics = result.metrics
    assert set(metrics["outputs"]) == {*subset, ABNORMAL}
    assert metrics["source"]["predictions"]["findings_missing"] == [
        f for f in FINDINGS if f not in subset
    ]
    assert "macro_auc_ci95" not in metrics  # a macro CI over 3 of 14 findings would mislead
    np.testing.assert_allclose(
        result.frame[prob_column(ABNORMAL)], written[[f"prob_{f}" for f in subset]].max(axis=1)
    )
    assert result.frame[prob_column("Atelectasis")].isna().all()
    assert "(3 of 14 findings)" in metrics["abnormal_source"]
    code, _, err = run(
        [
            str(tmp_path / "p.csv"),
            "--metadata",
            metadata(nih),
            "--resamples",
            "20",
            "--out",
            str(tmp_path / "figs"),
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "figs" / "figures" / "roc_findings.png").exists()


def test_abnormal_column_is_used_not_derived(nih: Path, tmp_path: Path):
    images = listed_test_images(nih)
    abnormal = np.linspace(0.1, 0.9, len(images))
    write_predictions(tmp_path / "p.csv", images, extra={"prob_Abnormal": abnormal})
    result = score_predictions(tmp_path / "p.csv", metadata(nih), n_resamples=20)
    assert result.metrics["abnormal_derived"] is False
    assert result.metrics["abnormal_source"] == "prob_Abnormal"
    np.testing.assert_allclose(result.frame[prob_column(ABNORMAL)], abnormal)
    assert result.folder == tmp_path / "p_score"


def test_no_finding_is_scored_as_one_minus_p(nih: Path, tmp_path: Path):
    images = listed_test_images(nih)
    no_finding = np.linspace(0.05, 0.95, len(images))
    write_predictions(
        tmp_path / "p.csv", images, findings=("Effusion",), extra={"No Finding": no_finding}
    )
    result = score_predictions(tmp_path / "p.csv", metadata(nih), n_resamples=20)
    assert result.metrics["abnormal_derived"] is False
    assert result.metrics["abnormal_source"] == "1 - No Finding"
    np.testing.assert_allclose(result.frame[prob_column(ABNORMAL)], 1 - no_finding)
    labels = label_matrix(result.frame).max(axis=1)
    assert result.metrics["binary_auc"] == pytest.approx(roc_auc_score(labels, 1 - no_finding))


def test_an_abnormal_column_alone_is_enough(nih: Path, tmp_path: Path, capsys):
    images = listed_test_images(nih)
    pd.DataFrame({"image_id": images, "Abnormal": np.linspace(0, 1, len(images))}).to_csv(
        tmp_path / "p.csv", index=False
    )
    code, out, err = run(
        [str(tmp_path / "p.csv"), "--metadata", metadata(nih), "--resamples", "20"], capsys
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "p_score" / "metrics.json").read_text())
    assert list(metrics["outputs"]) == [ABNORMAL]
    assert (tmp_path / "p_score" / "figures" / "roc_abnormal.png").exists()


def test_logits_are_refused_and_accepted_with_the_flag(nih: Path, tmp_path: Path, capsys):
    images = listed_test_images(nih)
    probs = scores_for(images)
    logits = np.log(probs / (1 - probs))
    frame = pd.DataFrame({"Image Index": images})
    for j, f in enumerate(FINDINGS):
        frame[f] = logits[:, j]
    frame.to_csv(tmp_path / "logits.csv", index=False)
    first = error_line([str(tmp_path / "logits.csv"), "--metadata", metadata(nih)], capsys)
    bad_row = int(np.flatnonzero((logits[:, 0] < 0) | (logits[:, 0] > 1))[0]) + 2
    assert f"logits.csv, row {bad_row}, column 'Atelectasis'" in first
    assert "logits" in first and "--logits" in first

    result = score_predictions(tmp_path / "logits.csv", metadata(nih), logits=True, n_resamples=20)
    np.testing.assert_allclose(result.frame[prob_column("Atelectasis")], probs[:, 0], rtol=1e-9)
    assert result.metrics["source"]["predictions"]["logits"] is True

    write_predictions(tmp_path / "probs.csv", images)
    first = error_line(
        [str(tmp_path / "probs.csv"), "--metadata", metadata(nih), "--logits"], capsys
    )
    assert "probs.csv: --logits was given but every score lies in [0, 1]" in first


def test_our_own_predictions_file_is_accepted(nih: Path, tmp_path: Path):
    """CheXVision's predictions.csv (metadata and label columns besides the scores) scores too."""
    images = listed_test_images(nih)
    write_predictions(tmp_path / "p.csv", images)
    first = score_predictions(tmp_path / "p.csv", metadata(nih), n_resamples=20)
    again = score_predictions(
        first.folder / "predictions.csv", metadata(nih), out=tmp_path / "again", n_resamples=20
    )
    assert again.metrics["outputs"] == first.metrics["outputs"]
    assert "label_Abnormal" in again.metrics["source"]["predictions"]["ignored_columns"]
    assert again.metrics["abnormal_derived"] is False  # the file now has prob_Abnormal


# ----------------------------------------------------------------------------------------------
# Errors: one line naming the file and the row or column
# ----------------------------------------------------------------------------------------------


def _table(images: list[str]) -> dict[str, list]:
    return {"Image Index": images, "Effusion": [0.5] * len(images), "Mass": [0.25] * len(images)}


def _write(tmp: Path, columns: dict[str, list]) -> Path:
    path = tmp / "bad.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def _edit(tmp: Path, images: list[str], column: str, row: int, value: object) -> Path:
    columns = _table(images)
    columns[column] = list(columns[column])
    columns[column][row] = value
    return _write(tmp, columns)


ERRORS = {
    "unknown column": (
        lambda t, i: _write(t, {**_table(i), "prob_Fracture": [0.1] * len(i)}),
        ["bad.csv, column 'prob_Fracture': unknown column name"],
    ),
    "an index written with the rows": (
        lambda t, i: pd.DataFrame(_table(i)).to_csv(t / "bad.csv") or t / "bad.csv",
        ["bad.csv, column 'Unnamed: 0': unknown column name (a column without a header"],
    ),
    "two columns for one finding": (
        lambda t, i: _write(t, {**_table(i), "prob_effusion": [0.1] * len(i)}),
        ["bad.csv: columns 'Effusion' and 'prob_effusion' both give 'Effusion'"],
    ),
    "abnormal and no finding": (
        lambda t, i: _write(
            t, {**_table(i), "Abnormal": [0.1] * len(i), "No Finding": [0.9] * len(i)}
        ),
        ["'Abnormal' and 'No Finding' both give the abnormal score"],
    ),
    "no image column": (
        lambda t, i: _write(t, {"Effusion": [0.5] * len(i)}),
        ["bad.csv: no image column"],
    ),
    "no score column": (
        lambda t, i: _write(t, {"image_id": i}),
        ["bad.csv: no score column"],
    ),
    "image columns disagree": (
        lambda t, i: _write(t, {**_table(i), "path": ["x/" + n for n in i[:-1]] + ["x/other.png"]}),
        ["row 21: columns 'Image Index' and 'path' name different images"],
    ),
    "duplicate image": (
        lambda t, i: _edit(t, i, "Image Index", 3, i[0]),
        ["bad.csv, row 5: image", "appears twice (also row 2)"],
    ),
    "empty image name": (
        lambda t, i: _edit(t, i, "Image Index", 4, ""),
        ["bad.csv, row 6, column 'Image Index': no image name"],
    ),
    "NaN score": (
        lambda t, i: _edit(t, i, "Mass", 6, float("nan")),
        ["bad.csv, row 8, column 'Mass': score '' is empty"],
    ),
    "literal NaN score": (
        lambda t, i: _edit(t, i, "Mass", 2, "NaN"),
        ["bad.csv, row 4, column 'Mass': score 'NaN' is NaN"],
    ),
    "non-numeric score": (
        lambda t, i: _edit(t, i, "Effusion", 7, "high"),
        ["bad.csv, row 9, column 'Effusion': score 'high' is not a number"],
    ),
    "infinite score": (
        lambda t, i: _edit(t, i, "Effusion", 1, "inf"),
        ["bad.csv, row 3, column 'Effusion': score 'inf' is not finite"],
    ),
    "image not in the metadata": (
        lambda t, i: _edit(t, i, "Image Index", 9, "99999999_000.png"),
        ["bad.csv, row 11: image '99999999_000.png' is not in", "--skip-unknown"],
    ),
    "header only": (
        lambda t, i: _write(t, {"Image Index": [], "Effusion": []}),
        ["bad.csv: no rows"],
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_every_error_names_the_row_or_column(nih: Path, tmp_path: Path, capsys, case: str):
    build, needles = ERRORS[case]
    path = build(tmp_path, listed_test_images(nih))
    first = error_line([str(path), "--metadata", metadata(nih)], capsys)
    for needle in needles:
        assert needle in first, first


def test_missing_files_and_bad_flags_are_one_line(nih: Path, tmp_path: Path, capsys):
    missing = tmp_path / "absent.csv"
    assert "absent.csv: predictions file not found" in error_line(
        [str(missing), "--metadata", metadata(nih)], capsys
    )
    write_predictions(tmp_path / "p.csv", listed_test_images(nih))
    assert "--resamples" in error_line(
        [str(tmp_path / "p.csv"), "--metadata", metadata(nih), "--resamples", "0"], capsys
    )
    odd = tmp_path / "mylist.txt"
    odd.write_text("00000001_000.png")
    assert "mylist.txt: cannot tell whether this split list is a test or a train/val list" in (
        error_line(
            [str(tmp_path / "p.csv"), "--metadata", metadata(nih), "--split-list", str(odd)], capsys
        )
    )
    # Writing OUT/predictions.csv over the input is refused.
    (tmp_path / "o").mkdir()
    write_predictions(tmp_path / "o" / "predictions.csv", listed_test_images(nih))
    assert "would overwrite it" in error_line(
        [
            str(tmp_path / "o" / "predictions.csv"),
            "--metadata",
            metadata(nih),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )


def test_skip_unknown_counts_and_skips(nih: Path, tmp_path: Path, capsys):
    images = [*listed_test_images(nih), "99999999_000.png", "99999999_001.png"]
    pd.DataFrame({"image": images, "Effusion": 0.5}).to_csv(tmp_path / "p.csv", index=False)
    code, out, err = run(
        [
            str(tmp_path / "p.csv"),
            "--metadata",
            metadata(nih),
            "--skip-unknown",
            "--resamples",
            "10",
            "--no-figures",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "p_score" / "metrics.json").read_text())
    assert metrics["source"]["predictions"]["skipped_not_in_metadata"] == 2
    assert metrics["n_images"] == len(images) - 2
    assert "skipped 2 image(s) not in the metadata" in out
    assert not (tmp_path / "p_score" / "figures").exists()


# ----------------------------------------------------------------------------------------------
# Which split the images come from
# ----------------------------------------------------------------------------------------------


def test_split_check_verdicts(nih: Path, tmp_path: Path, capsys):
    test = read_split_list(nih / "test_list.txt")
    train = read_split_list(nih / "train_val_list.txt")
    lists = [nih / "train_val_list.txt", nih / "test_list.txt"]
    cases = {
        "all_test": test,
        "mixed": test + train[:5],
        "train_val_only": train,
    }
    for verdict, images in cases.items():
        check = split_check(pd.Series(images), lists)
        assert check["verdict"] == verdict
        assert check["in_test_list"] == len(set(images) & set(test))
        assert check["in_train_val_list"] == len(set(images) & set(train))
        assert check["n_images"] == len(images)
    assert (
        "WARNING: 5 of 25 images are in train_val_list.txt"
        in split_check(pd.Series(test + train[:5]), lists)["message"]
    )
    assert "NOT test results" in split_check(pd.Series(train), lists)["message"]
    only_test = split_check(pd.Series(test + train[:2]), [nih / "test_list.txt"])
    assert only_test["verdict"] == "not_all_test" and only_test["in_no_list"] == 2
    assert split_check(pd.Series(test), [])["verdict"] == "unchecked"

    # Through the command: the lists beside the metadata are found, and the verdict is loud.
    write_predictions(tmp_path / "p.csv", test + train[:5])
    code, out, err = run(
        [str(tmp_path / "p.csv"), "--metadata", metadata(nih), "--resamples", "10", "--no-figures"],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "p_score" / "metrics.json").read_text())
    assert metrics["split_check"]["verdict"] == "mixed"
    assert metrics["split"] == "mixed"
    assert "NOT a test result" in metrics["split_description"]
    assert "WARNING" in out and "NOT test results" in out
    # Lists given explicitly replace the ones found.
    result = score_predictions(
        tmp_path / "p.csv", metadata(nih), split_lists=[], out=tmp_path / "u", n_resamples=10
    )
    assert result.metrics["split_check"]["verdict"] == "unchecked"


# ----------------------------------------------------------------------------------------------
# Expert labels and a reference model
# ----------------------------------------------------------------------------------------------


def test_google_and_binary_rows_where_images_overlap(nih: Path, tmp_path: Path, capsys):
    images = listed_test_images(nih)
    written = write_predictions(tmp_path / "p.csv", images)
    google = tmp_path / "google.csv"
    rows = ["Image Index,Patient ID,Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id"]
    expert = np.array([[k % 2, (k // 2) % 2, (k // 3) % 2] for k in range(12)])
    for name, (a, b, c) in zip(images[:12], expert, strict=True):
        yes = ["NO", "YES"]
        rows.append(f"{name},1,NO,{yes[a]},{yes[b]},{yes[c]},test")
    rows.append("00000001_000.png,1,NO,YES,NO,NO,val")  # a train_val image: not among these
    google.write_text("\n".join(rows) + "\n")
    tang = tmp_path / "tang.txt"
    tang.write_text("\n".join(f"{n} {k % 2}" for k, n in enumerate(images[:10])))
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("00000001_000.png 1\n00000001_001.png 0\n")
    code, out, err = run(
        [
            str(tmp_path / "p.csv"),
            "--metadata",
            metadata(nih),
            "--resamples",
            "30",
            "--no-figures",
            "--google",
            str(google),
            "--binary",
            str(tang),
            "--binary",
            str(elsewhere),
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "p_score" / "metrics.json").read_text())
    files = {Path(e["file"]).name: e["n_overlap"] for e in metrics["expert_labels"]["files"]}
    assert files == {"google.csv": 12, "tang.txt": 10, "elsewhere.txt": 0}
    table = pd.read_csv(tmp_path / "p_score" / "expert_labels.csv").set_index("label")
    assert set(table.index) == {*GOOGLE_MAPPING, "Abnormal (label file)"}
    nodule = written.head(12)[["prob_Nodule", "prob_Mass"]].max(axis=1)
    assert table.loc["Nodule or mass", "auc"] == pytest.approx(roc_auc_score(expert[:, 2], nodule))
    assert table.loc["Nodule or mass", "n_images"] == 12
    derived = written.head(10)[[f"prob_{f}" for f in FINDINGS]].max(axis=1)
    assert table.loc["Abnormal (label file)", "auc"] == pytest.approx(
        roc_auc_score([k % 2 for k in range(10)], derived)
    )
    assert "google.csv: 12 image(s) overlap" in out and "elsewhere.txt: 0 image(s) overlap" in out

    # A Google category whose findings are not all given is not scored, and says why.
    write_predictions(tmp_path / "few.csv", images, findings=("Pneumothorax", "Nodule", "Mass"))
    few = score_predictions(tmp_path / "few.csv", metadata(nih), google=google, n_resamples=20)
    assert [r["label"] for r in few.metrics["expert_labels"]["rows"]] == [
        "Pneumothorax",
        "Nodule or mass",
    ]
    assert "Airspace opacity" in few.metrics["expert_labels"]["files"][0]["not_scored"]


def test_reference_delong(nih: Path, tmp_path: Path, capsys):
    images = listed_test_images(nih)
    write_predictions(tmp_path / "a.csv", images, seed=1)
    first = score_predictions(tmp_path / "a.csv", metadata(nih), out=tmp_path / "a", n_resamples=10)
    # The reference in another form: lower-case names, a path column, No Finding.
    b = write_predictions(
        tmp_path / "b.csv",
        images,
        name=lambda f: f.lower().replace("_", " "),
        image_column="path",
        extra={"No Finding": np.linspace(0.9, 0.1, len(images))},
        seed=2,
    )
    code, out, err = run(
        [
            str(tmp_path / "a.csv"),
            "--metadata",
            metadata(nih),
            "--resamples",
            "10",
            "--no-figures",
            "--reference",
            str(tmp_path / "b.csv"),
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "a_score" / "metrics.json").read_text())
    assert metrics["reference"]["n_shared_images"] == len(images)
    rows = {r["output"]: r for r in metrics["reference"]["rows"]}
    y = label_matrix(first.frame)[:, FINDINGS.index("Effusion")]
    expected = delong_test(y, first.frame[prob_column("Effusion")], b["effusion"])
    assert rows["Effusion"]["p_value"] == pytest.approx(expected["p_value"])
    assert rows["Effusion"]["diff"] == pytest.approx(expected["diff"])
    assert (tmp_path / "a_score" / "comparison.csv").exists()
    assert "DeLong" in out and "Holm" in out
    # Our predictions.csv compares with `compare` as well.
    other = score_predictions(tmp_path / "b.csv", metadata(nih), out=tmp_path / "b", n_resamples=10)
    table = compare_predictions(first.frame, other.frame).set_index("output")
    assert table.loc["Effusion", "p_value"] == pytest.approx(rows["Effusion"]["p_value"])


def test_labels_command_reads_the_written_predictions(nih: Path, tmp_path: Path, capsys):
    images = listed_test_images(nih)
    write_predictions(tmp_path / "p.csv", images)
    score_predictions(tmp_path / "p.csv", metadata(nih), n_resamples=10)
    tang = tmp_path / "tang.txt"
    tang.write_text("\n".join(f"{n} {k % 2}" for k, n in enumerate(images)))
    code = cli_main(
        [
            "labels",
            str(tmp_path / "p_score" / "predictions.csv"),
            "--binary",
            str(tang),
            "--resamples",
            "10",
        ]
    )
    assert code == 0
    assert "Abnormal (label file)" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# The real NIH metadata
# ----------------------------------------------------------------------------------------------


def real_labels(csv_gz: Path) -> pd.DataFrame:
    """Labels read straight from NIH's CSV, independently of chexvision's reader."""
    with gzip.open(csv_gz, "rt") as handle:
        raw = pd.read_csv(handle, usecols=["Image Index", "Finding Labels"])
    parts = raw["Finding Labels"].str.split("|")
    labels = pd.DataFrame({"image_id": raw["Image Index"]})
    for finding in FINDINGS:
        labels[finding] = parts.map(lambda p, f=finding: int(f in p))
    return labels.set_index("image_id")


def test_real_metadata_reproduces_sklearn(tmp_path: Path):
    """Another tool's CSV (`Image Index,prob_Atelectasis,...`, 14 findings, no abnormal column) on
    3,000 of NIH's official test images: scikit-learn's AUCs to 1e-6, CIs, expert-label rows."""
    csv = realdata("nih", "Data_Entry_2017_v2020.csv.gz")
    google = realdata("nih", "google2019_nih-chest-xray-labels.csv.gz")
    test = read_split_list(realdata("nih", "test_list.txt"))
    rng = np.random.default_rng(17)
    images = sorted(rng.choice(test, size=3000, replace=False).tolist())
    labels = real_labels(csv).loc[images, list(FINDINGS)].to_numpy()
    probs = expit(0.8 * labels + rng.normal(0, 1, labels.shape) - 1.0)
    frame = pd.DataFrame({"Image Index": images})
    for j, finding in enumerate(FINDINGS):
        frame[f"prob_{finding}"] = probs[:, j]
    frame.to_csv(tmp_path / "other_tool.csv", index=False, float_format="%.17g")

    result = score_predictions(
        tmp_path / "other_tool.csv", csv, google=google, out=tmp_path / "out", n_resamples=200
    )
    metrics = result.metrics
    for j, finding in enumerate(FINDINGS):
        entry = metrics["outputs"][finding]
        assert abs(entry["auc"] - roc_auc_score(labels[:, j], probs[:, j])) < 1e-6, finding
        assert entry["auc_ci95"][0] < entry["auc"] < entry["auc_ci95"][1]
        assert entry["positives"] == int(labels[:, j].sum())
    assert abs(metrics["binary_auc"] - roc_auc_score(labels.max(axis=1), probs.max(axis=1))) < 1e-6
    assert metrics["abnormal_derived"] is True
    assert metrics["macro_auc_ci95"][0] < metrics["macro_auc"] < metrics["macro_auc_ci95"][1]
    assert metrics["n_patients"] == len({int(i.split("_")[0]) for i in images})
    check = metrics["split_check"]
    assert check["verdict"] == "all_test"
    assert check["in_test_list"] == 3000 and check["in_train_val_list"] == 0
    assert all(entry["official"] for entry in check["lists"])
    assert metrics["split_description"] == "official test split (test_list.txt)"
    assert metrics["source"]["metadata"]["release"] == "NIH Data_Entry_2017_v2020.csv"
    assert "calibration" in metrics  # the hook for evaluation/calibration.py
    assert metrics["disclaimer"]

    # Expert labels where the images overlap with Google's.
    expert = pd.read_csv(google, dtype=str).drop_duplicates("Image Index").set_index("Image Index")
    overlap = [i for i in images if i in expert.index]
    assert metrics["expert_labels"]["files"][0]["n_overlap"] == len(overlap) > 50
    rows = {r["label"]: r for r in metrics["expert_labels"]["rows"]}
    for category, findings in GOOGLE_MAPPING.items():
        y = (expert.loc[overlap, category] == "YES").astype(int).to_numpy()
        columns = [FINDINGS.index(f) for f in findings]
        scores = probs[[images.index(i) for i in overlap]][:, columns].max(axis=1)
        assert abs(rows[category]["auc"] - roc_auc_score(y, scores)) < 1e-6, category
        assert rows[category]["n_images"] == len(overlap)
        assert rows[category]["ci_low"] <= rows[category]["auc"] <= rows[category]["ci_high"]
    written = read_predictions(tmp_path / "out" / "predictions.csv")
    assert written["image_id"].tolist() == images
    assert set(OUTPUTS) <= {c.removeprefix("prob_") for c in written.columns}


def test_real_metadata_train_val_images_are_flagged(tmp_path: Path):
    csv = realdata("nih", "Data_Entry_2017_v2020.csv.gz")
    train = read_split_list(realdata("nih", "train_val_list.txt"))[:400]
    test = read_split_list(realdata("nih", "test_list.txt"))[:600]
    pd.DataFrame({"filename": train + test, "Effusion": np.linspace(0, 1, 1000)}).to_csv(
        tmp_path / "p.csv", index=False
    )
    result = score_predictions(tmp_path / "p.csv", csv, n_resamples=20)
    check = result.metrics["split_check"]
    assert (check["verdict"], check["in_train_val_list"], check["in_test_list"]) == (
        "mixed",
        400,
        600,
    )
