"""The cross-dataset study end to end on tiny data: the synthetic NIH set and two sets of class
folders (one evaluation-only), seresnet_small at 32 px, one epoch each. The study runs once per
module; the tests read its files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from PIL import Image

from chexvision_lib.cli import study as study_cli
from chexvision_lib.cli.main import build_parser
from chexvision_lib.core.config import from_dict, read_json_object, to_dict
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, FINDINGS
from chexvision_lib.core.predictions import read_predictions
from chexvision_lib.data.label_space import provided_findings
from chexvision_lib.data.prepare import KINDS
from chexvision_lib.data.synthetic import write_synthetic_nih
from chexvision_lib.reporting.cross_dataset_plots import MACRO, cross_dataset_heatmap
from chexvision_lib.studies import study as study_module
from chexvision_lib.studies.cross_dataset import (
    MATRIX_COLUMNS,
    CrossDatasetConfig,
    DatasetEntry,
    PreparedDataset,
    caveats,
    load_cross_dataset_config,
    run_cross_dataset,
    shared_outputs,
)
from chexvision_lib.studies.study import StudyConfig, load_study_config
from chexvision_lib.training.recipes import RECIPES

TRAINED = ["nih", "peds"]
TESTED = ["nih", "peds", "holdout"]


def write_class_folders(root: Path, n_patients: int, seed: int, size: int = 48) -> Path:
    """NORMAL/ and PNEUMONIA/ of tiny PNGs, two films a patient, named as in the paediatric set
    (person<id>_...) so the split is grouped by patient; pneumonia films carry a bright patch."""
    rng = np.random.default_rng(seed)
    for patient in range(n_patients):
        sick = patient % 2 == 1
        folder = root / ("PNEUMONIA" if sick else "NORMAL")
        folder.mkdir(parents=True, exist_ok=True)
        for film in range(2):
            image = rng.normal(90, 25, (size, size))
            if sick:
                image[10:30, 8:24] += 70
            pixels = np.clip(image, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"person{patient}_{'virus' * sick}{film}.png")
    return root


def study_values(root: Path, out: Path) -> dict:
    return {
        "out": str(out),
        "description": "tiny cross-dataset study",
        "datasets": [
            {"name": "nih", "data_root": str(root / "nih"), "kind": "nih"},
            {"name": "peds", "data_root": str(root / "peds"), "kind": "binary"},
            {
                "name": "holdout",
                "data_root": str(root / "holdout"),
                "kind": "binary",
                "train": False,
            },
        ],
        "architecture": "seresnet_small",
        "size": 32,
        "task": "findings",
        "prepare_workers": 1,
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.003, "threads": 1},
        "fine_tune": [{"from": "nih", "to": "holdout", "epochs": 1, "lr": 0.003}],
        "n_resamples": 50,
    }


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """TrainConfig.threads sets torch's global thread count; give other modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[CrossDatasetConfig, Path]:
    root = tmp_path_factory.mktemp("cross")
    write_synthetic_nih(root / "nih", n_patients=40, image_size=64, seed=5)
    write_class_folders(root / "peds", n_patients=40, seed=1)
    write_class_folders(root / "holdout", n_patients=30, seed=2)
    config = from_dict(CrossDatasetConfig, study_values(root, root / "out"))
    run_cross_dataset(config, show_progress=False)
    return config, root


def test_matrix_has_every_shared_cell(tiny_study):
    config, _ = tiny_study
    matrix = pd.read_csv(Path(config.out) / "matrix.csv")
    assert list(matrix.columns) == MATRIX_COLUMNS
    columns = (matrix["train_dataset"], matrix["test_dataset"], matrix["output"])
    found = set(zip(*columns, strict=True))
    # NIH on NIH: the 14 findings, Abnormal and their macro; any pair with a binary-only set
    # (class folders label Abnormal only) scores Abnormal alone.
    expected = {("nih", "nih", o) for o in (*FINDINGS, ABNORMAL, MACRO)}
    expected |= {(a, b, ABNORMAL) for a in TRAINED for b in TESTED if (a, b) != ("nih", "nih")}
    assert found == expected and len(matrix) == len(expected)
    abnormal = matrix[matrix["output"] == ABNORMAL]
    assert abnormal["auc"].notna().all()
    scored = matrix[matrix["auc"].notna()]
    assert scored["auc"].between(0, 1).all()
    assert (scored["ci_low"] <= scored["auc"] + 1e-9).all()
    assert (scored["auc"] <= scored["ci_high"] + 1e-9).all()
    assert (abnormal["n_positive"] > 0).all() and (
        abnormal["n_positive"] < abnormal["n_images"]
    ).all()
    # every cell scored its test dataset's whole test split (the same images for every model)
    counts = abnormal.groupby("test_dataset")["n_images"].nunique()
    assert (counts == 1).all()


def test_a_cell_is_recomputable_from_its_predictions(tiny_study):
    config, _ = tiny_study
    from sklearn.metrics import roc_auc_score

    record = json.loads((Path(config.out) / "cross_dataset.json").read_text())
    cell = next(
        c for c in record["cells"] if (c["train_dataset"], c["test_dataset"]) == ("peds", "nih")
    )
    frame = read_predictions(cell["predictions"])
    known = frame[f"label_{ABNORMAL}"] >= 0
    expected = roc_auc_score(frame[f"label_{ABNORMAL}"][known], frame[f"prob_{ABNORMAL}"][known])
    matrix = pd.read_csv(Path(config.out) / "matrix.csv").set_index(
        ["train_dataset", "test_dataset", "output"]
    )
    assert matrix.loc[("peds", "nih", ABNORMAL), "auc"] == pytest.approx(expected)
    # the class-folder model never learnt a finding: NIH's 14 are left out, and said to be
    assert cell["outputs"] == [ABNORMAL] and cell["never_learnt"] == list(FINDINGS)
    # cross-dataset scores never overwrite the model's own test results
    assert Path(cell["predictions"]).parent.name == "external_nih_32px_test"


def test_markdown_figures_and_record(tiny_study):
    config, _ = tiny_study
    out = Path(config.out)
    markdown = (out / "matrix.md").read_text()
    assert "## Abnormal: AUC [95% CI]" in markdown and "## Pleural Thickening" in markdown
    table = markdown.split("## Abnormal: AUC [95% CI]")[1].split("##")[0]
    header = next(line for line in table.splitlines() if line.startswith("| trained on"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == TESTED
    nih_row = next(line for line in table.splitlines() if line.startswith("| nih"))
    assert nih_row.split("|")[2].strip().startswith("**")  # the diagonal is marked
    assert not nih_row.split("|")[3].strip().startswith("**")
    assert "Trained on peds, tested on nih: left out every finding nih labels" in markdown
    assert "Patient overlap" not in markdown  # no datasets sharing images here
    assert markdown.rstrip().endswith(DISCLAIMER)
    for output in (ABNORMAL, MACRO, "Pleural_Thickening"):
        png = out / f"matrix_{output}.png"
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) > 200
    record = json.loads((out / "cross_dataset.json").read_text())
    assert from_dict(CrossDatasetConfig, record["config"]) == config  # resolved, re-loadable
    assert record["config"]["datasets"][2]["train"] is False
    assert record["config"]["datasets"][0]["options"] == {}  # defaults filled in
    assert len(record["cells"]) == len(TRAINED) * len(TESTED)
    nih = record["datasets"]["nih"]
    assert nih["kind"] == "nih" and nih["synthetic"] is True
    assert set(nih["source_sha256"]) >= {"data_entry_csv"}
    assert record["datasets"]["holdout"]["model"] is None
    assert record["datasets"]["peds"]["provided_findings"] == []
    assert set(record["files"]["figures"]) == {ABNORMAL, MACRO, *FINDINGS}


def test_fine_tune_before_and_after(tiny_study):
    config, _ = tiny_study
    out = Path(config.out)
    rows = pd.read_csv(out / "fine_tune.csv")
    assert list(zip(rows["from"], rows["to"], rows["output"], strict=True)) == [
        ("nih", "holdout", ABNORMAL)
    ]
    row = rows.iloc[0]
    assert 0 <= row["p_value"] <= 1
    assert row["diff"] == pytest.approx(row["auc_after"] - row["auc_before"])
    folder = out / "fine_tune" / "nih_to_holdout"
    before = read_predictions(folder / "before" / "predictions.csv")
    after = read_predictions(folder / "after" / "predictions.csv")
    assert list(before["image_id"]) == list(after["image_id"])  # the same holdout test images
    # BEFORE is the matrix cell (nih model on the holdout test split)
    matrix = pd.read_csv(out / "matrix.csv").set_index(["train_dataset", "test_dataset", "output"])
    assert row["auc_before"] == pytest.approx(matrix.loc[("nih", "holdout", ABNORMAL), "auc"])
    tuned = json.loads((folder / "fine_tuned" / "nih" / "config.json").read_text())
    assert tuned["init_from"] == str(out / "models" / "nih") and tuned["epochs"] == 1
    assert tuned["cache"]["path"].endswith("holdout_32px")
    assert not np.allclose(before[f"prob_{ABNORMAL}"], after[f"prob_{ABNORMAL}"])
    markdown = (out / "matrix.md").read_text()
    assert "## Fine-tuning" in markdown and "nih -> holdout" in markdown
    assert (folder / "summary.md").read_text().rstrip().endswith(DISCLAIMER)


def test_rerun_trains_and_scores_nothing(tiny_study, monkeypatch, capsys):
    config, root = tiny_study
    out = Path(config.out)
    weights = sorted(out.glob("**/model/model.safetensors"))
    assert len(weights) == 3  # two models and one fine-tuned model
    mtimes = [w.stat().st_mtime_ns for w in weights]
    before = pd.read_csv(out / "matrix.csv")
    calls = []
    monkeypatch.setattr(study_module, "fit", lambda *a, **k: calls.append("fit"))
    monkeypatch.setattr(study_module, "evaluate_run", lambda *a, **k: calls.append("evaluate"))
    # Through the command line: `chexvision cross-dataset CONFIG --quiet`.
    config_file = root / "cross.json"
    config_file.write_text(json.dumps(to_dict(config)))
    args = build_parser().parse_args(["cross-dataset", str(config_file), "--quiet"])
    assert args.func is study_cli.run_cross_dataset
    args.func(args)
    assert calls == []
    assert [w.stat().st_mtime_ns for w in weights] == mtimes
    assert DISCLAIMER in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out / "matrix.csv"), before)
    # Other training settings do not silently reuse the models trained with the old ones.
    changed = from_dict(
        CrossDatasetConfig, {**to_dict(config), "train": {**config.train, "lr": 0.1}}
    )
    with pytest.raises(ValueError, match=r"trained with other settings \(\['lr'\]\)"):
        run_cross_dataset(changed, show_progress=False)


def test_config_errors_are_clear(tmp_path: Path):
    base = study_values(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match=r"unknown CrossDatasetConfig parameter\(s\) \['epochs'\]"):
        from_dict(CrossDatasetConfig, {**base, "epochs": 3})
    bad_entry = {**base, "datasets": [{**base["datasets"][0], "trian": False}]}
    with pytest.raises(ValueError, match=r"datasets\[0\] \(nih\): unknown DatasetEntry"):
        from_dict(CrossDatasetConfig, bad_entry)
    unknown_pair = {**base, "fine_tune": [{"from": "nih", "to": "indiana"}]}
    with pytest.raises(ValueError, match=r"fine_tune\[0\]: to 'indiana' is not a dataset"):
        from_dict(CrossDatasetConfig, unknown_pair)
    from_evaluation_only = {**base, "fine_tune": [{"from": "holdout", "to": "nih"}]}
    with pytest.raises(ValueError, match="from 'holdout' is not a dataset with train=true"):
        from_dict(CrossDatasetConfig, from_evaluation_only)
    with pytest.raises(ValueError, match=r"fine_tune\[0\]: unknown key\(s\) \['epoch'\]"):
        from_dict(
            CrossDatasetConfig, {**base, "fine_tune": [{"from": "nih", "to": "peds", "epoch": 1}]}
        )
    nothing_to_train = {**base, "datasets": [{**d, "train": False} for d in base["datasets"]]}
    nothing_to_train["fine_tune"] = []
    with pytest.raises(ValueError, match="no dataset has train=true"):
        from_dict(CrossDatasetConfig, nothing_to_train)
    twice = {**base, "datasets": [base["datasets"][0], base["datasets"][0]], "fine_tune": []}
    with pytest.raises(ValueError, match=r"the names \['nih'\] are used more than once"):
        from_dict(CrossDatasetConfig, twice)
    with pytest.raises(ValueError, match=r"kind: 'dicom' is not one of"):
        from_dict(
            CrossDatasetConfig, {**base, "datasets": [{**base["datasets"][0], "kind": "dicom"}]}
        )
    binary_with_option = [{**base["datasets"][1], "options": {"target": "abnormal"}}]
    with pytest.raises(ValueError, match=r"options: .*target.* not apply to --kind binary"):
        from_dict(CrossDatasetConfig, {**base, "datasets": binary_with_option, "fine_tune": []})
    with pytest.raises(ValueError, match=r"train: \['model'\] are set by the study"):
        from_dict(CrossDatasetConfig, {**base, "train": {"model": "resnet18"}})
    with pytest.raises(ValueError, match="size: seresnet_small needs at least 32 px"):
        from_dict(CrossDatasetConfig, {**base, "size": 16})
    with pytest.raises(ValueError, match=r"task: 'multilabel' is not one of"):
        from_dict(CrossDatasetConfig, {**base, "task": "multilabel"})
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps({**base, "modle": "vgg19"}))
    with pytest.raises(ValueError, match=r"bad\.json: unknown CrossDatasetConfig parameter"):
        load_cross_dataset_config(bad_file)
    assert not (tmp_path / "out").exists()


def test_shared_outputs_and_overlap_caveat():
    outputs, never_learnt = shared_outputs(
        provided_findings("binary"), provided_findings("nih"), "findings"
    )
    assert outputs == [ABNORMAL] and never_learnt == list(FINDINGS)
    outputs, never_learnt = shared_outputs(
        provided_findings("nih"), provided_findings("rsna"), "findings"
    )
    assert outputs == ["Pneumonia", ABNORMAL] and never_learnt == []
    assert shared_outputs(list(FINDINGS), list(FINDINGS), "binary") == ([ABNORMAL], [])
    # A copy that labels fewer findings than its dataset's map (VinDr's Kaggle train.csv): the
    # recorded list, not the map, decides what is scored.
    kaggle_vindr = PreparedDataset(
        DatasetEntry("vindr", "/data/vindr", "vindr"),
        Path("vindr"),
        {"kind": "vindr", "provided_findings": ["Cardiomegaly", "Effusion"]},
    )
    assert kaggle_vindr.provided == ["Cardiomegaly", "Effusion"]
    outputs, _ = shared_outputs(provided_findings("nih"), kaggle_vindr.provided, "findings")
    assert outputs == ["Cardiomegaly", "Effusion", ABNORMAL]

    def dataset(name: str, kind: str) -> PreparedDataset:
        return PreparedDataset(
            DatasetEntry(name, f"/data/{name}", kind), Path(name), {"kind": kind}
        )

    prepared = {d.entry.name: d for d in (dataset("nih", "nih"), dataset("rsna", "rsna"))}
    notes = caveats(prepared)
    assert len(notes) == 1 and "nih and rsna" in notes[0] and "NIH ChestX-ray14 images" in notes[0]
    # the Hub's parquet copy is NIH too
    hub = PreparedDataset(DatasetEntry("hub", "/h", "hub"), Path("h"), {"kind": "hub_parquet"})
    assert hub.kind == "nih" and len(caveats({"hub": hub, "rsna": prepared["rsna"]})) == 1
    assert caveats({"a": dataset("a", "binary"), "b": dataset("b", "binary")}) == []


def test_heatmap_marks_missing_cells_and_the_diagonal(tmp_path: Path):
    matrix = pd.DataFrame(
        [
            ("a", "a", ABNORMAL, 0.91, 0.88, 0.94),
            ("a", "b", ABNORMAL, 0.70, 0.60, 0.80),
            ("b", "b", ABNORMAL, float("nan"), float("nan"), float("nan")),
        ],
        columns=["train_dataset", "test_dataset", "output", "auc", "ci_low", "ci_high"],
    )
    figure = cross_dataset_heatmap(
        matrix, ABNORMAL, tested=["a", "b", "c"], path=tmp_path / "m.png"
    )
    ax = figure.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "0.910\n[0.880, 0.940]" in texts and "0.700\n[0.600, 0.800]" in texts
    assert texts.count("not shared") == 3  # (a, c), (b, a), (b, c)
    assert "n/a\n(one class)" in texts
    outlined = [p for p in ax.patches if not p.get_fill()]
    assert sorted((p.get_x(), p.get_y()) for p in outlined) == [(0, 0), (1, 1)]
    assert DISCLAIMER in [t.get_text() for t in figure.texts]
    with Image.open(tmp_path / "m.png") as image:
        assert image.format == "PNG"


def test_study_config_takes_every_kind_and_its_options(tmp_path: Path):
    base = {"out": str(tmp_path / "o"), "data_root": str(tmp_path)}
    for kind in KINDS:
        assert from_dict(StudyConfig, {**base, "kind": kind}).kind == kind
    with pytest.raises(ValueError, match=r"kind: 'dicom' is not one of"):
        from_dict(StudyConfig, {**base, "kind": "dicom"})
    with pytest.raises(ValueError, match=r"options: .*target.* not apply to --kind nih"):
        from_dict(StudyConfig, {**base, "kind": "nih", "options": {"target": "abnormal"}})
    synthetic = {"out": str(tmp_path / "o"), "synthetic_patients": 20}
    with pytest.raises(ValueError, match="options apply to a data_root"):
        from_dict(StudyConfig, {**synthetic, "options": {"uncertainty": "ones"}})
    rsna = pytest.importorskip("chexvision_lib.data.sources.rsna")
    target = sorted(rsna.OPTIONS["target"])[0]
    config = from_dict(StudyConfig, {**base, "kind": "rsna", "options": {"target": target}})
    assert config.options == {"target": target}
    with pytest.raises(ValueError, match=r"options: .*target.*'nope'.* is not one of"):
        from_dict(StudyConfig, {**base, "kind": "rsna", "options": {"target": "nope"}})


def test_external_command_takes_kind_and_options(tmp_path: Path):
    parser = build_parser()
    args = parser.parse_args(
        ["external", "RUN", "ROOT", "--out", str(tmp_path), "--kind", "rsna"]
        + ["--option", "target=lung-opacity", "--option", "x=y"]
    )
    assert args.kind == "rsna" and args.option == [("target", "lung-opacity"), ("x", "y")]
    with pytest.raises(SystemExit):
        parser.parse_args(["external", "RUN", "ROOT", "--out", "o", "--option", "target"])


STUDY_FILES = sorted((REPO / "studies").glob("*.json"))


def test_the_tang2020_and_public_study_files_exist():
    names = {path.name for path in STUDY_FILES}
    assert {"tang2020_rsna_abnormal.json", "tang2020_rsna_lung_opacity.json"} <= names
    assert {"tang2020_indiana.json", "cross_dataset_public.json"} <= names


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_every_study_file_loads(path: Path):
    """Each studies/*.json loads with its own loader, so none can rot unnoticed."""
    values = read_json_object(path)
    assert values.get("description"), f"{path.name} needs a description"
    try:
        if "datasets" in values:
            config = load_cross_dataset_config(path)
            assert all(Path(e.data_root).is_absolute() for e in config.entries)
        else:
            config = load_study_config(path)
    except ModuleNotFoundError as error:  # a reader of data/sources/ not written yet
        if not str(error.name).startswith("chexvision_lib.data.sources."):
            raise
        pytest.skip(f"{path.name} needs {error.name}")
    # The study folder lies under the working directory's runs/ (made absolute when loaded).
    assert Path(config.out).absolute().relative_to(Path.cwd().absolute()).parts[0] == "runs"


def test_tang2020_study_files_follow_the_paper():
    for target in ("abnormal", "lung_opacity"):
        values = read_json_object(REPO / "studies" / f"tang2020_rsna_{target}.json")
        assert values["architectures"] == ["vgg19"] and values["initialisations"] == ["imagenet"]
        assert values["sizes"] == [256] and values["tasks"] == ["binary"]
        assert values["kind"] == "rsna" and values["options"] == {
            "target": target.replace("_", "-")
        }
        assert values["train"]["optimizer"] == "sgd" and values["train"]["lr"] == 1e-3
        recipe = RECIPES[values["train"]["recipe"]]  # the values spelt out are the recipe's
        assert {k: v for k, v in values["train"].items() if k in recipe} == {
            k: recipe[k] for k in values["train"] if k in recipe
        }
    indiana = read_json_object(REPO / "studies" / "tang2020_indiana.json")
    assert indiana["train"] == values["train"]
    assert indiana["fine_tune"][0]["from"] == "nih" and indiana["fine_tune"][0]["to"] == "indiana"
    assert [d.get("train", True) for d in indiana["datasets"]] == [True, False]


def test_a_chexpert_dataset_scores_only_the_findings_both_label(tmp_path: Path):
    fixtures = pytest.importorskip("dataset_fixtures")
    pytest.importorskip("chexvision_lib.data.sources.chexpert")
    write_synthetic_nih(tmp_path / "nih", n_patients=30, image_size=64, seed=7)
    chexpert = fixtures.write_chexpert(tmp_path / "chexpert")
    values = {
        "out": str(tmp_path / "out"),
        "datasets": [
            {"name": "nih", "data_root": str(tmp_path / "nih"), "kind": "nih"},
            {
                "name": "chexpert",
                "data_root": str(chexpert or tmp_path / "chexpert"),
                "kind": "chexpert",
                "train": False,
            },
        ],
        "size": 32,
        "prepare_workers": 1,
        "train": {"epochs": 1, "batch_size": 16, "threads": 1},
        "n_resamples": 20,
    }
    matrix = run_cross_dataset(from_dict(CrossDatasetConfig, values), show_progress=False)
    cell = matrix[(matrix["train_dataset"] == "nih") & (matrix["test_dataset"] == "chexpert")]
    labelled = {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia"}
    shared = [f for f in FINDINGS if f in labelled | {"Pneumothorax"}]  # in FINDINGS order
    assert list(cell["output"]) == [*shared, MACRO, ABNORMAL]
    assert "Infiltration" not in set(cell["output"])  # CheXpert does not label it
