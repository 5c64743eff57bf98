"""`chexvision leaderboard`: entries scored on the images they share, ranked, DeLong vs the first.

Synthetic entries with a known order (scores = labels + noise of different sizes, and a random
scorer) on 300 images of 150 patients; the intersection of different image sets; labels that
disagree; a foreign-format CSV joined with a tiny Data_Entry file; Holm's adjustment; Markdown and
CSV; the split warning; expert labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import HEADER_2020
from scipy.special import expit

from chexvision_lib.cli.main import main as cli_main
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import (
    METADATA_COLUMNS,
    label_column,
    predictions_frame,
    prob_column,
)
from chexvision_lib.data.nih_index import read_data_entry
from chexvision_lib.evaluation.compare import compare_predictions
from chexvision_lib.evaluation.leaderboard import build_leaderboard, to_markdown
from chexvision_lib.evaluation.metrics import delong_test, holm_correction

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 300
RESAMPLES = 100
NOISE = {"good": 1.2, "medium": 3.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A Data_Entry CSV (v2020 header) with split lists beside it, its labels, and three entries
    in our schema: good, medium and random scorers of all 15 outputs."""
    root = tmp_path_factory.mktemp("leaderboard")
    rng = np.random.default_rng(7)
    lines = [HEADER_2020]
    names = []
    for k in range(N_IMAGES):
        patient = k // 2 + 1
        name = f"{patient:08d}_{k % 2:03d}.png"
        names.append(name)
        found = [f for f in FINDINGS if rng.random() < 0.06] or ["No Finding"]
        lines.append(
            f"{name},{'|'.join(found)},0,{patient},{30 + k % 50},{'MF'[k % 2]},PA,"
            "1024,1024,0.143,0.143"
        )
    nih = root / "nih"
    nih.mkdir()
    metadata = nih / "Data_Entry_2017_v2020.csv"
    metadata.write_text("\n".join(lines) + "\n")
    (nih / "test_list.txt").write_text("\n".join(names) + "\n")
    (nih / "train_val_list.txt").write_text("99999999_000.png\n")
    table = read_data_entry(metadata)
    labels = table[list(OUTPUTS)].to_numpy(dtype=np.int64)
    meta = table.loc[:, list(METADATA_COLUMNS)]
    frames = {
        name: predictions_frame(
            meta, expit(3 * (labels - 0.5) + noise * rng.normal(size=labels.shape)), labels
        )
        for name, noise in NOISE.items()
    }
    frames["random"] = predictions_frame(meta, rng.uniform(size=labels.shape), labels)
    files = {}
    for name, frame in frames.items():
        files[name] = root / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    return {"root": root, "metadata": metadata, "frames": frames, "files": files, "names": names}


def board_of(sources: list, **options):
    return build_leaderboard([str(s) for s in sources], n_resamples=RESAMPLES, **options)


def test_better_entries_rank_higher_and_beat_a_random_scorer(world):
    files = world["files"]
    board = board_of([files["random"], files["medium"], files["good"]])
    table = board.table.set_index("entry")
    assert board.table["entry"].tolist() == ["good", "medium", "random"]
    assert table["rank"].tolist() == [1, 2, 3]
    assert board.reference == "random"
    assert board.rank_by == "macro_auc"
    assert board.common_findings == list(FINDINGS)
    good = table.loc["good"]
    assert good["macro_auc"] > table.loc["medium", "macro_auc"] > table.loc["random", "macro_auc"]
    assert good["macro_ci_low"] < good["macro_auc"] < good["macro_ci_high"]
    assert good["binary_ci_low"] < good["binary_auc"] < good["binary_ci_high"]
    assert good["binary_p_delong"] < 0.05 and good["binary_auc_diff"] > 0
    assert good["findings_better_holm"] > 0 and good["findings_worse_holm"] == 0
    assert np.isnan(table.loc["random", "binary_p_delong"])  # the reference is not tested
    assert 0 <= good["brier_abnormal"] <= 1 and 0 <= good["ece_abnormal"] <= 1
    assert (board.table["n_images"] == N_IMAGES).all()
    assert (board.table["n_patients"] == N_IMAGES // 2).all()

    # The binary p-value is DeLong's test of the same scores.
    frames = world["frames"]
    y = frames["good"][label_column(ABNORMAL)].to_numpy()
    expected = delong_test(
        y,
        frames["good"][prob_column(ABNORMAL)].to_numpy(),
        frames["random"][prob_column(ABNORMAL)].to_numpy(),
    )
    assert good["binary_p_delong"] == pytest.approx(expected["p_value"])
    assert good["binary_auc_diff"] == pytest.approx(expected["diff"])


def test_holm_is_applied_within_each_entry(world):
    files = world["files"]
    board = board_of([files["medium"], files["good"], files["random"]], per_finding=True)
    for name in ("good", "random"):
        tests = board.delong[board.delong["entry"] == name]
        findings = tests[tests["output"].isin(FINDINGS)]
        assert len(findings) == len(FINDINGS)
        np.testing.assert_allclose(
            findings["p_holm"].to_numpy(), holm_correction(findings["p_value"].to_numpy())
        )
        binary = tests[tests["output"] == ABNORMAL]
        assert binary["p_holm"].iloc[0] == binary["p_value"].iloc[0]  # a single test
        row = board.table.set_index("entry").loc[name]
        for finding, p in zip(findings["output"], findings["p_holm"], strict=True):
            assert row[f"p_holm_{finding}"] == pytest.approx(p)
    # The same numbers as `compare` gives for the pair.
    direct = compare_predictions(world["frames"]["good"], world["frames"]["medium"])
    mine = board.delong[board.delong["entry"] == "good"].reset_index(drop=True)
    np.testing.assert_allclose(mine["p_holm"], direct["p_holm"])
    markdown = to_markdown(board)
    assert "## AUC per finding (Holm-adjusted DeLong p vs medium)" in markdown
    assert "Holm-adjusted" in markdown and "not adjusted" in markdown


def test_entries_are_restricted_to_the_images_they_share(world, tmp_path):
    frames = world["frames"]
    names = world["names"]
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    frames["good"][frames["good"]["image_id"].isin(names[:250])].to_csv(a, index=False)
    frames["medium"][frames["medium"]["image_id"].isin(names[50:])].to_csv(b, index=False)
    board = board_of([a, b, world["files"]["random"]])
    table = board.table.set_index("entry")
    assert board.n_images == 200
    assert (table["n_images"] == 200).all()
    assert table["images_given"].to_dict() == {"a": 250, "b": 250, "random": N_IMAGES}
    assert "Scored on the 200 images (100 patients) that all 3 entries share" in to_markdown(board)

    c = tmp_path / "c.csv"
    frames["medium"][frames["medium"]["image_id"].isin(names[250:])].to_csv(c, index=False)
    with pytest.raises(ValueError, match="share no image"):
        board_of([a, c])


def test_entries_that_disagree_on_a_label_are_refused_naming_the_image(world, tmp_path):
    frame = world["frames"]["medium"].copy()
    image = frame["image_id"].iloc[17]
    frame.loc[17, label_column("Effusion")] = 1 - frame.loc[17, label_column("Effusion")]
    changed = tmp_path / "changed.csv"
    frame.to_csv(changed, index=False)
    with pytest.raises(ValueError, match=rf"image '{image}'.*label of Effusion"):
        board_of([world["files"]["good"], changed])


def test_a_foreign_csv_is_scored_with_the_metadata(world, tmp_path):
    """Any tool's CSV: `Image Index` with a folder, findings named with spaces, a subset of them,
    no abnormal column (derived, and said so)."""
    good = world["frames"]["good"]
    given = [f for f in FINDINGS if f not in ("Hernia", "Fibrosis")]
    foreign = pd.DataFrame({"Image Index": "images_001/images/" + good["image_id"]})
    for finding in given:
        foreign[finding.replace("_", " ")] = good[prob_column(finding)]
    path = tmp_path / "other_tool.csv"
    foreign.to_csv(path, index=False)

    with pytest.raises(ValueError, match=rf"{path}.*--metadata"):
        board_of([world["files"]["random"], path])

    board = board_of([world["files"]["random"], path], metadata=world["metadata"])
    table = board.table.set_index("entry")
    assert board.common_findings == given
    other = table.loc["other_tool"]
    assert other["kind"] == "foreign" and bool(other["abnormal_derived"])
    assert other["findings_scored"] == len(given)
    assert other["macro_ci_low"] < other["macro_auc"] < other["macro_ci_high"]
    assert other["findings_tested"] == len(given)
    assert board.table["entry"].iloc[0] == "other_tool"
    markdown = to_markdown(board)
    assert "abnormal score derived" in markdown
    assert f"over the {len(given)} findings every entry scores" in markdown


def test_a_run_folder_is_read_from_its_split(world, tmp_path):
    run = tmp_path / "runA"
    (run / "val").mkdir(parents=True)
    world["frames"]["good"].to_csv(run / "val" / "predictions.csv", index=False)
    board = board_of([world["files"]["random"], run], split="val")
    assert board.table.set_index("entry").loc["runA", "kind"] == "run"
    with pytest.raises(FileNotFoundError, match="chexvision evaluate"):
        board_of([world["files"]["random"], run])  # no test/ folder


def test_the_split_check_warns_when_images_are_not_test_images(world, tmp_path):
    names = world["names"]
    (tmp_path / "test_list.txt").write_text("\n".join(names[:100]))
    (tmp_path / "train_val_list.txt").write_text("\n".join(names[100:]))
    lists = [tmp_path / "test_list.txt", tmp_path / "train_val_list.txt"]
    files = world["files"]
    board = board_of([files["good"], files["medium"]], split_lists=lists)
    assert board.split_check["verdict"] == "mixed"
    assert board.warning.startswith("WARNING: 200 of 300 images are in train_val_list.txt")
    assert to_markdown(board).splitlines()[2].startswith("**Split check: WARNING")
    unchecked = board_of([files["good"], files["medium"]])
    assert unchecked.split_check["verdict"] == "unchecked" and unchecked.warning


def google_file(world, path: Path) -> Path:
    frame = world["frames"]["good"].iloc[:120]
    rows = ["Image Index,Fracture,Pneumothorax,Airspace opacity,Nodule or mass"]
    for _, r in frame.iterrows():
        opacity = max(r[label_column(f)] for f in ("Consolidation", "Infiltration", "Edema"))
        nodule = max(r[label_column("Nodule")], r[label_column("Mass")])
        values = [0, r[label_column("Pneumothorax")], opacity, nodule]
        rows.append(r["image_id"] + "," + ",".join("YES" if v else "NO" for v in values))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_cli_prints_and_writes_markdown_and_csv(world, tmp_path, capsys):
    files = world["files"]
    out = tmp_path / "out"
    google = google_file(world, tmp_path / "google.csv")
    code = cli_main(
        [
            "leaderboard",
            str(files["random"]),
            str(files["good"]),
            "--names",
            "coin,model",
            "--metadata",
            str(world["metadata"]),
            "--google",
            str(google),
            "--resamples",
            str(RESAMPLES),
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "WARNING" in captured.err  # the test list beside the metadata is not NIH's own
    assert captured.out.rstrip().endswith(DISCLAIMER)
    assert "| 1 | model |" in captured.out
    table = pd.read_csv(out / "leaderboard.csv")
    assert table["entry"].tolist() == ["model", "coin"]
    assert table["split_verdict"].tolist() == ["all_test", "all_test"]
    assert {"google_pneumothorax_auc", "google_airspace_opacity_auc"} <= set(table.columns)
    assert table["google_pneumothorax_n_images"].iloc[0] == 120
    assert table["google_pneumothorax_auc"].iloc[0] > table["google_pneumothorax_auc"].iloc[1]
    markdown = (out / "leaderboard.md").read_text()
    assert markdown.startswith("# Leaderboard")
    assert "Google: Nodule or mass AUC [95% CI]" in markdown
    assert "on 120 of the shared images" in markdown
    assert DISCLAIMER in markdown
    delong = pd.read_csv(out / "leaderboard_delong.csv")
    assert set(delong["entry"]) == {"model"} and len(delong) == len(OUTPUTS)


def test_cli_user_errors_are_one_line(world, tmp_path, capsys):
    foreign = tmp_path / "tool.csv"
    pd.DataFrame({"image": world["names"], "Effusion": 0.5}).to_csv(foreign, index=False)
    code = cli_main(["leaderboard", str(world["files"]["good"]), str(foreign)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"chexvision leaderboard: error: {foreign}")
    assert "--metadata" in err.splitlines()[0]
    code = cli_main(["leaderboard", str(world["files"]["good"]), "--resamples", "10"])
    assert code == 2
    assert "at least two entries" in capsys.readouterr().err


def test_help_imports_nothing_heavy():
    heavy = ("torch", "pandas", "numpy", "matplotlib")
    code = (
        "import sys\nfrom chexvision_lib.cli.main import main\n"
        "try:\n    main(['leaderboard', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
