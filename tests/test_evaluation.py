"""Evaluation beyond AUC: comparisons, expert label sets, subgroups, the report of a run."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import realdata
from sklearn.metrics import roc_auc_score

from chexvision_lib.core.labels import FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import label_column, predictions_frame, prob_column
from chexvision_lib.data.prepare import prepare
from chexvision_lib.evaluation.compare import compare_predictions, format_comparison
from chexvision_lib.evaluation.evaluate import (
    evaluate_run,
    metrics_from_predictions,
    subgroups_from_predictions,
)
from chexvision_lib.evaluation.label_sets import (
    read_binary_labels,
    read_google_labels,
    score_against_binary,
    score_against_google,
)
from chexvision_lib.evaluation.metrics import delong_test, holm_correction
from chexvision_lib.reporting.report import gradcam_grid, localisation_report, write_figures
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit


def fake_predictions(n: int = 400, seed: int = 0, signal: float = 1.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 15)) < 0.3).astype(int)
    labels[:, 14] = labels[:, :14].max(axis=1)
    probs = 1 / (1 + np.exp(-(signal * (labels - 0.5) + rng.normal(0, 1, (n, 15)))))
    metadata = pd.DataFrame(
        {
            "image_id": [f"{i // 2 + 1:08d}_{i % 2:03d}.png" for i in range(n)],
            "patient": [str(i // 2 + 1) for i in range(n)],
            "age": rng.integers(5, 90, n).astype(float),
            "sex": rng.choice(["M", "F"], n),
            "view": rng.choice(["PA", "AP"], n),
        }
    )
    return predictions_frame(metadata, probs, labels)


def test_compare_agrees_with_delong_and_holm():
    a, b = fake_predictions(seed=1), fake_predictions(seed=1, signal=0.8)
    b[[label_column(n) for n in OUTPUTS]] = a[[label_column(n) for n in OUTPUTS]]
    table = compare_predictions(a, b)
    assert table["output"].tolist() == list(OUTPUTS)
    y = a[label_column("Effusion")].to_numpy()
    expected = delong_test(y, a[prob_column("Effusion")], b[prob_column("Effusion")])
    row = table.set_index("output").loc["Effusion"]
    assert row["p_value"] == pytest.approx(expected["p_value"])
    assert row["diff"] == pytest.approx(expected["diff"])
    findings = table[table["output"].isin(FINDINGS)]
    np.testing.assert_allclose(findings["p_holm"], holm_correction(findings["p_value"]))
    text = format_comparison(table, "A", "B")
    assert "Effusion" in text and "Holm" in text
    b.loc[0, label_column("Mass")] = 1 - b.loc[0, label_column("Mass")]
    with pytest.raises(ValueError, match="Mass: the two files disagree on labels"):
        compare_predictions(a, b)


def test_google_and_tang_label_files(tmp_path: Path):
    predictions = fake_predictions(n=40)
    names = predictions["image_id"].tolist()
    google = tmp_path / "google.csv"
    rows = [
        "Image Index,Finding Labels,Patient ID,Fracture,Pneumothorax,Airspace opacity,"
        "Nodule or mass,Set Id"
    ]
    rng = np.random.default_rng(3)
    expert = rng.integers(0, 2, (30, 3))
    expert[0], expert[1] = 0, 1  # both classes present in every column
    for name, (ptx, opacity, nodule) in zip(names[:30], expert, strict=True):
        yes = ["NO", "YES"]
        rows.append(f"{name},x,1,NO,{yes[ptx]},{yes[opacity]},{yes[nodule]},test")
    rows.append("99999999_000.png,x,1,NO,YES,NO,NO,test")  # not among the predictions
    google.write_text("\n".join(rows) + "\n")
    table = score_against_google(predictions, read_google_labels(google), n_resamples=100)
    assert table["n_images"].tolist() == [30, 30, 30]
    scores = predictions.head(30)[[prob_column(f) for f in ("Nodule", "Mass")]].max(axis=1)
    nodule = table.set_index("label").loc["Nodule or mass"]
    assert nodule["auc"] == pytest.approx(roc_auc_score(expert[:, 2], scores))
    assert nodule["ci_low"] <= nodule["auc"] <= nodule["ci_high"]

    tang = tmp_path / "tang.txt"
    tang.write_text("\n".join(f"{n} {i % 2}" for i, n in enumerate(names[:20])) + "\nother.png 1\n")
    binary = score_against_binary(predictions, read_binary_labels(tang), n_resamples=100)
    assert binary["n_images"].tolist() == [20]
    expected = roc_auc_score([i % 2 for i in range(20)], predictions[prob_column("Abnormal")][:20])
    assert binary["auc"].iloc[0] == pytest.approx(expected)

    tang.write_text(f"{names[0]} maybe\n")
    with pytest.raises(ValueError, match=r"tang.txt, line 1: expected 'image 0\|1'"):
        read_binary_labels(tang)
    google.write_text(google.read_text().replace(",NO,test", ",N/A,test", 1))
    with pytest.raises(ValueError, match="google.csv, row 2: Nodule or mass must be YES or NO"):
        read_google_labels(google)


def test_real_google_label_file_reads():
    path = realdata("nih", "google2019_nih-chest-xray-labels.csv.gz")
    with gzip.open(path, "rt") as handle:
        header = handle.readline()
    assert "Airspace opacity" in header
    labels = read_google_labels(path)
    assert len(labels) > 4000 and labels["image_id"].is_unique


def test_subgroups_and_metrics_from_predictions():
    frame = fake_predictions()
    table = subgroups_from_predictions(frame)
    assert set(table["group_column"]) == {"sex", "age_band", "view"}
    male = table[
        (table["group_column"] == "sex") & (table["value"] == "M") & (table["output"] == "Effusion")
    ].iloc[0]
    subset = frame[frame["sex"] == "M"]
    assert male["auc"] == pytest.approx(
        roc_auc_score(subset[label_column("Effusion")], subset[prob_column("Effusion")])
    )
    thresholds = [0.5] * 14 + [0.3]
    metrics = metrics_from_predictions(frame, thresholds, split="test", n_resamples=200)
    assert metrics["n_patients"] == 200
    assert metrics["macro_auc_ci95"][0] < metrics["macro_auc"] < metrics["macro_auc_ci95"][1]
    assert metrics["binary"]["threshold"] == 0.3
    assert metrics["outputs"]["Abnormal"]["at_0.5"]["threshold"] == 0.5


@pytest.fixture(scope="module")
def trained_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report")
    cache = prepare(synth_root, base / "cache", size=64, progress=False)
    run = fit(
        TrainConfig(
            cache=str(cache),
            out=str(base / "run"),
            model="seresnet_small",
            epochs=2,
            batch_size=16,
            threads=2,
        ),
        show_progress=False,
    )
    evaluate_run(run, "test", n_resamples=50, show_progress=False)
    return run


def test_report_writes_figures_gradcam_and_localisation(trained_run: Path):
    figures = write_figures(trained_run, "test")
    for name in (
        "roc_findings",
        "roc_abnormal",
        "auc_bars",
        "confusion_abnormal",
        "training_curves",
    ):
        assert (trained_run / "test" / "figures" / f"{name}.png").stat().st_size > 10_000
        assert name in figures
    title = figures["roc_findings"].texts[0].get_text()
    assert "synthetic" in title and "official" not in title
    gradcam_grid(trained_run, "test", output="Effusion")
    assert (trained_run / "test" / "figures" / "gradcam_Effusion.png").exists()
    table = localisation_report(trained_run, "test")
    assert set(table["method"]) == {"grad_cam", "random"}
    assert (trained_run / "test" / "localisation.csv").exists()
    subgroups = pd.read_csv(trained_run / "test" / "subgroups.csv")
    assert {"group_column", "value", "output", "auc"} <= set(subgroups.columns)
