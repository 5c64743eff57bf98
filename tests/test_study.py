"""A tiny study end to end (2 architectures x 2 sizes x 3 folds, one epoch each), and external
validation with fine-tuning on class folders made from a second synthetic set.

The study is trained once per module; the tests read its files.
"""

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
from chexvision_lib.core.config import from_dict, to_dict
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, OUTPUTS
from chexvision_lib.core.predictions import read_predictions
from chexvision_lib.data.batches import CachedSplit
from chexvision_lib.data.synthetic import write_synthetic_nih
from chexvision_lib.evaluation.compare import compare_predictions
from chexvision_lib.evaluation.metrics import choose_threshold
from chexvision_lib.studies import study as study_module
from chexvision_lib.studies.study import (
    PROB_COLUMNS,
    StudyConfig,
    external_validation,
    grid,
    load_study_config,
    member_runs,
    run_study,
    source_thresholds,
)

ARCHS = ["seresnet_small", "resnet18"]
SIZES = [32, 48]
FOLDS = 3
SUMMARY_COLUMNS = [
    "cell",
    "task",
    "arch",
    "init",
    "size",
    "folds",
    "auc_metric",
    "fold_auc_mean",
    "fold_auc_sd",
    "ensemble_auc",
    "ensemble_auc_ci_low",
    "ensemble_auc_ci_high",
    "abnormal_auc",
    "threshold",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "accuracy",
    "reference",
    "p_delong",
    "p_holm",
    "findings_p_holm_below_005",
]


def study_values(data_root: Path, out: Path) -> dict:
    return {
        "out": str(out),
        "data_root": str(data_root),
        "prepare_workers": 1,
        "architectures": ARCHS,
        "initialisations": ["scratch"],
        "sizes": SIZES,
        "tasks": ["findings"],
        "folds": FOLDS,
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.003, "threads": 1},
        "n_resamples": 100,
        "reference": "seresnet_small-scratch-48px-findings",
    }


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """TrainConfig.threads sets torch's global thread count; give other modules theirs back.
    One thread per process: on a shared 2-core machine, two OpenMP threads spin against other
    processes and made this module 4x slower."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyConfig, pd.DataFrame]:
    root = tmp_path_factory.mktemp("study")
    write_synthetic_nih(root / "nih", n_patients=40, image_size=64, seed=5)
    config = from_dict(StudyConfig, study_values(root / "nih", root / "out"))
    return config, run_study(config, show_progress=False)


def cell_folder(config: StudyConfig, name: str) -> Path:
    return Path(config.out) / name


def fold_runs(config: StudyConfig, name: str) -> list[Path]:
    return [cell_folder(config, name) / f"fold{i}" for i in range(FOLDS)]


def test_summary_has_one_row_per_cell(tiny_study):
    config, summary = tiny_study
    out = Path(config.out)
    assert sorted(summary["cell"]) == sorted(cell.name for cell in grid(config))
    assert len(summary) == len(ARCHS) * len(SIZES)
    assert set(SUMMARY_COLUMNS) <= set(summary.columns)
    assert (summary["folds"] == FOLDS).all()
    written = pd.read_csv(out / "summary.csv")
    assert list(written["cell"]) == list(summary["cell"])
    np.testing.assert_allclose(written["ensemble_auc"], summary["ensemble_auc"])
    markdown = (out / "summary.md").read_text()
    assert all(name in markdown for name in summary["cell"])
    assert "ensemble AUC [95% CI]" in markdown and "p DeLong (Holm)" in markdown
    assert markdown.rstrip().endswith(DISCLAIMER)
    # each cell's caches were prepared by the study at its own size
    assert {CachedSplit(out / "caches" / f"{s}px", "test").size for s in SIZES} == set(SIZES)


def test_ensemble_is_the_mean_of_the_folds_test_probabilities(tiny_study):
    config, summary = tiny_study
    for name in summary["cell"]:
        folds = [
            read_predictions(run / "test" / "predictions.csv") for run in fold_runs(config, name)
        ]
        ensemble = read_predictions(cell_folder(config, name) / "ensemble" / "predictions.csv")
        assert all(list(f["image_id"]) == list(ensemble["image_id"]) for f in folds)
        mean = np.mean([f[PROB_COLUMNS].to_numpy(dtype=float) for f in folds], axis=0)
        np.testing.assert_allclose(ensemble[PROB_COLUMNS].to_numpy(dtype=float), mean)
        # the folds are different models: averaging is not a no-op
        assert not np.allclose(folds[0][PROB_COLUMNS[-1]], folds[1][PROB_COLUMNS[-1]])
        metrics = json.loads((cell_folder(config, name) / "ensemble" / "metrics.json").read_text())
        fold_aucs = [
            json.loads((run / "test" / "metrics.json").read_text())["macro_auc"]
            for run in fold_runs(config, name)
        ]
        row = summary.set_index("cell").loc[name]
        assert row["fold_auc_mean"] == pytest.approx(np.mean(fold_aucs))
        assert row["fold_auc_sd"] == pytest.approx(np.std(fold_aucs, ddof=1))
        assert row["ensemble_auc"] == pytest.approx(metrics["macro_auc"])


def test_thresholds_come_from_out_of_fold_validation_predictions(tiny_study):
    config, summary = tiny_study
    name = summary["cell"].iloc[0]
    cell = cell_folder(config, name)
    vals = [read_predictions(run / "val" / "predictions.csv") for run in fold_runs(config, name)]
    oof = pd.concat(vals, ignore_index=True)
    test_ids = set(read_predictions(cell / "ensemble" / "predictions.csv")["image_id"])
    assert not set(oof["image_id"]) & test_ids  # no test image chooses a threshold
    cache = Path(config.out) / "caches" / f"{SIZES[0]}px"
    pool = pd.concat([CachedSplit(cache, s).table for s in ("train", "val")])
    assert sorted(oof["image_id"]) == sorted(pool["image_id"])  # every pool image exactly once
    y = oof[f"label_{ABNORMAL}"].to_numpy()
    expected = choose_threshold(y, oof[f"prob_{ABNORMAL}"].to_numpy(), "youden")
    metrics = json.loads((cell / "ensemble" / "metrics.json").read_text())
    assert metrics["thresholds"][ABNORMAL] == pytest.approx(expected)
    assert "out-of-fold validation" in metrics["threshold_source"]
    assert summary.set_index("cell").loc[name, "threshold"] == pytest.approx(expected)
    saved_oof = pd.read_csv(cell / "ensemble" / "oof_val_predictions.csv")
    assert sorted(saved_oof["fold"].unique()) == list(range(FOLDS))


def test_folds_are_patient_disjoint_and_score_their_own_validation_fold(tiny_study):
    config, _ = tiny_study
    cache = Path(config.out) / "caches" / f"{SIZES[0]}px"
    test_patients = set(CachedSplit(cache, "test").table["patient"])
    val_patients = []
    for fold in range(FOLDS):
        split = {"folds": FOLDS, "fold": fold, "seed": config.seed}
        train = set(CachedSplit(cache, "train", **split).table["patient"])
        val = set(CachedSplit(cache, "val", **split).table["patient"])
        assert not train & val and not (train | val) & test_patients
        val_patients.append(val)
        run = Path(config.out) / grid(config)[0].name / f"fold{fold}"
        assert set(read_predictions(run / "val" / "predictions.csv")["patient"]) == val
    everyone = set().union(*val_patients)
    assert sum(len(v) for v in val_patients) == len(everyone)  # each patient in one fold only
    # every cell used the same folds: fold assignment depends on the seed, not on the cell
    for cell in grid(config):
        recorded = json.loads((Path(config.out) / cell.name / "fold1" / "config.json").read_text())
        assert (recorded["folds"], recorded["fold"], recorded["seed"]) == (FOLDS, 1, config.seed)


def test_delong_p_value_against_the_reference_cell(tiny_study):
    config, summary = tiny_study
    table = summary.set_index("cell")
    reference = config.reference
    assert table.loc[reference, "reference"] and np.isnan(table.loc[reference, "p_delong"])
    others = table.drop(index=reference)
    assert others["p_delong"].between(0, 1).all()
    assert (others["p_holm"] >= others["p_delong"] - 1e-12).all()
    name = others.index[0]
    direct = compare_predictions(
        read_predictions(cell_folder(config, name) / "ensemble" / "predictions.csv"),
        read_predictions(cell_folder(config, reference) / "ensemble" / "predictions.csv"),
    ).set_index("output")
    assert others.loc[name, "p_delong"] == pytest.approx(direct.loc[ABNORMAL, "p_value"])


def test_rerun_trains_nothing_and_an_interrupted_fold_resumes(tiny_study, monkeypatch, capsys):
    config, summary = tiny_study
    weights = sorted(Path(config.out).glob("*/fold*/model/model.safetensors"))
    mtimes = [w.stat().st_mtime_ns for w in weights]
    calls: list[bool] = []
    real_fit = study_module.fit

    def counting_fit(train_config, resume=False, show_progress=True):
        calls.append(resume)
        return real_fit(train_config, resume=resume, show_progress=show_progress)

    monkeypatch.setattr(study_module, "fit", counting_fit)
    # Through the command line: `chexvision study CONFIG --quiet` on the finished study.
    config_file = Path(config.out).parent / "study.json"
    config_file.write_text(json.dumps(to_dict(config)))
    parser = build_parser()
    args = parser.parse_args(["study", str(config_file), "--quiet"])
    args.func(args)
    assert calls == []
    assert [w.stat().st_mtime_ns for w in weights] == mtimes
    assert DISCLAIMER in capsys.readouterr().out
    again = pd.read_csv(Path(config.out) / "summary.csv")
    np.testing.assert_allclose(again["ensemble_auc"], summary["ensemble_auc"])

    # A fold killed after training but before its test metrics: resumed, not started over.
    fold = Path(config.out) / grid(config)[0].name / "fold1"
    (fold / "test" / "metrics.json").unlink()
    run_study(config, show_progress=False)
    assert calls == [True]
    assert (fold / "test" / "metrics.json").exists()

    # Changed training settings do not silently reuse folds trained with the old ones.
    changed = from_dict(StudyConfig, {**to_dict(config), "train": {**config.train, "lr": 0.01}})
    with pytest.raises(ValueError, match=r"trained with other settings \(\['lr'\]\)"):
        run_study(changed, show_progress=False)


def test_unknown_and_bad_config_keys_are_rejected(tmp_path: Path):
    base = {"out": str(tmp_path / "o"), "synthetic_patients": 20}
    with pytest.raises(ValueError, match=r"unknown StudyConfig parameter\(s\) \['archs'\]"):
        from_dict(StudyConfig, {**base, "archs": ["resnet18"]})
    with pytest.raises(ValueError, match=r"train: unknown TrainConfig parameter\(s\) \['bacth"):
        from_dict(StudyConfig, {**base, "train": {"bacth_size": 8}})
    with pytest.raises(ValueError, match=r"train: \['model'\] are set by the study"):
        from_dict(StudyConfig, {**base, "train": {"model": "resnet18"}})
    with pytest.raises(
        ValueError, match=r"unknown architectures 'resnet19' \(did you mean resnet18"
    ):
        from_dict(StudyConfig, {**base, "architectures": ["resnet19"]})
    timm_cells = from_dict(StudyConfig, {**base, "architectures": ["timm/resnet10t"]})
    assert timm_cells.architectures == ("timm/resnet10t",)
    with pytest.raises(ValueError, match="sizes: image_size 72 does not fit timm/vit_tiny"):
        from_dict(
            StudyConfig, {**base, "architectures": ["timm/vit_tiny_patch16_224"], "sizes": [72]}
        )
    with pytest.raises(ValueError, match=r"tasks: \['multilabel'\] not accepted"):
        from_dict(StudyConfig, {**base, "tasks": ["multilabel"]})
    with pytest.raises(ValueError, match="alexnet needs at least 63 px"):
        from_dict(StudyConfig, {**base, "architectures": ["alexnet"], "sizes": [48]})
    with pytest.raises(ValueError, match="folds must be at least 2"):
        from_dict(StudyConfig, {**base, "folds": 1})
    with pytest.raises(ValueError, match="reference: 'nope' is not a cell"):
        from_dict(StudyConfig, {**base, "reference": "nope"})
    with pytest.raises(ValueError, match="exactly one data source"):
        from_dict(StudyConfig, {**base, "cache": "somewhere"})
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps({**base, "epochs": 3}))
    with pytest.raises(
        ValueError, match=r"bad\.json: unknown StudyConfig parameter\(s\) \['epochs"
    ):
        load_study_config(bad_file)


def test_missing_imagenet_weights_stop_the_study_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    base = {"out": str(tmp_path / "o"), "synthetic_patients": 20, "sizes": [64]}
    with_imagenet = {**base, "architectures": ["resnet18"], "initialisations": ["imagenet"]}
    with pytest.raises(FileNotFoundError, match="ImageNet weights for 'resnet18' not found"):
        run_study(from_dict(StudyConfig, with_imagenet), show_progress=False)
    with pytest.raises(ValueError, match="'seresnet_small' is trained from scratch"):
        run_study(from_dict(StudyConfig, {**base, "initialisations": ["imagenet"]}))
    assert not (tmp_path / "o").exists()  # nothing prepared, nothing trained


def test_example_study_files_are_valid():
    tiny = load_study_config(REPO / "studies" / "tiny_synthetic.json")
    assert len(grid(tiny)) == 4 and tiny.folds == 3 and tiny.synthetic_patients > 0
    pediatric = load_study_config(REPO / "studies" / "pediatric_5fold.json")
    assert [c.name for c in grid(pediatric)] == ["seresnet_small-scratch-128px-binary"]
    assert pediatric.folds == 5 and pediatric.train["epochs"] == 20


def write_binary_folders(nih_root: Path, out: Path) -> Path:
    """Class folders (NORMAL/, ABNORMAL/) from a synthetic NIH set; names carry the patient."""
    entries = pd.read_csv(nih_root / "Data_Entry_2017.csv", index_col=False)
    paths = {p.name: p for p in nih_root.glob("images_*/images/*.png")}
    for image, labels, patient in zip(
        entries["Image Index"], entries["Finding Labels"], entries["Patient ID"], strict=True
    ):
        folder = out / ("NORMAL" if labels == "No Finding" else "ABNORMAL")
        folder.mkdir(parents=True, exist_ok=True)
        # person<id>_<n>: the paediatric naming, so the split is grouped by patient
        Image.open(paths[image]).save(folder / f"person{patient}_{Path(image).stem}.png")
    return out


def test_external_validation_before_and_after_fine_tuning(tiny_study, tmp_path, monkeypatch):
    config, _ = tiny_study
    cell = cell_folder(config, "seresnet_small-scratch-48px-findings")
    run = cell / "fold0"
    write_synthetic_nih(tmp_path / "nih", n_patients=30, image_size=64, seed=11)
    external = write_binary_folders(tmp_path / "nih", tmp_path / "external")
    out = tmp_path / "ext"
    options = {"fine_tune_epochs": 1, "batch_size": 16, "n_resamples": 100}
    result = external_validation(
        run, external, out, train={"threads": 1}, show_progress=False, **options
    )
    before = read_predictions(out / "before" / "predictions.csv")
    after = read_predictions(out / "after" / "predictions.csv")
    assert list(before["image_id"]) == list(after["image_id"])  # the same external test images
    assert before["image_id"].str.startswith(("NORMAL/", "ABNORMAL/")).all()
    # BEFORE is the trained model as it is, at its own thresholds
    own = read_predictions(run / "external_external_48px_test" / "predictions.csv")
    np.testing.assert_allclose(before[PROB_COLUMNS[-1]], own[PROB_COLUMNS[-1]])
    model_thresholds = json.loads((run / "model" / "config.json").read_text())["thresholds"]
    assert result["before"]["operating_point"]["threshold"] == pytest.approx(model_thresholds[-1])
    # AFTER: fine-tuned from the run's weights, same architecture and head, on external data
    tuned = json.loads((out / "fine_tuned" / "fold0" / "config.json").read_text())
    assert tuned["init_from"] == str(run) and tuned["head"] == "dual"
    assert tuned["model"] == "seresnet_small" and tuned["epochs"] == 1
    assert not np.allclose(before[PROB_COLUMNS[-1]], after[PROB_COLUMNS[-1]])
    for label in ("before", "after"):
        low, high = result[label]["auc_ci95"]
        assert 0 <= low <= result[label]["auc"] <= high <= 1
    assert 0 <= result["delong_after_vs_before"]["p_value"] <= 1
    assert result["delong_after_vs_before"]["diff"] == pytest.approx(
        result["after"]["auc"] - result["before"]["auc"]
    )
    assert (out / "summary.md").read_text().rstrip().endswith(DISCLAIMER)

    # Again: the fine-tuned model is reused, not trained a second time.
    monkeypatch.setattr(study_module, "fit", lambda *a, **k: pytest.fail("fine-tuned again"))
    again = external_validation(
        run, external, out, train={"threads": 1}, show_progress=False, **options
    )
    assert again["after"]["auc"] == pytest.approx(result["after"]["auc"])


def test_a_cell_is_external_validated_as_its_fold_ensemble(tiny_study):
    config, _ = tiny_study
    cell = cell_folder(config, "seresnet_small-scratch-48px-findings")
    members = member_runs(cell)
    assert [m.name for m in members] == [f"fold{i}" for i in range(FOLDS)]
    ensemble = json.loads((cell / "ensemble" / "metrics.json").read_text())["thresholds"]
    assert source_thresholds(cell, members) == [ensemble[name] for name in OUTPUTS]
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        member_runs(Path(config.out) / "caches")


def test_external_command_is_registered(tmp_path: Path):
    parser = build_parser()
    args = parser.parse_args(
        ["external", "RUN", "ROOT", "--out", str(tmp_path), "--fine-tune-epochs", "2"]
    )
    assert (args.run, args.external_root, args.fine_tune_epochs) == ("RUN", "ROOT", 2)
    assert args.func is study_cli.run_external


def test_tta_rows_score_the_same_fold_models_with_augmentation(tiny_study, monkeypatch):
    """Last in the module: it adds rows to the shared study's summary. The folds are finished,
    so nothing trains again; each cell gains a +tta-hflip row built from the folds' TTA scores."""
    config, _ = tiny_study
    monkeypatch.setattr(study_module, "fit", lambda *a, **k: pytest.fail("trained again"))
    plain = run_study(config, show_progress=False)  # the folds as earlier tests left them
    with_tta = from_dict(StudyConfig, {**to_dict(config), "tta": ["hflip"]})
    summary = run_study(with_tta, show_progress=False)
    cells = [cell.name for cell in grid(config)]
    assert list(summary["cell"]) == [n for c in cells for n in (c, f"{c}+tta-hflip")]
    merged = summary.set_index("cell")
    for name in cells:  # the plain rows are unchanged
        assert merged.loc[name, "ensemble_auc"] == pytest.approx(
            plain.set_index("cell").loc[name, "ensemble_auc"]
        )
        folds = [
            read_predictions(run / "test" / "tta-hflip" / "predictions.csv")
            for run in fold_runs(config, name)
        ]
        ensemble = read_predictions(
            cell_folder(config, name) / "ensemble-tta-hflip" / "predictions.csv"
        )
        mean = np.mean([f[PROB_COLUMNS].to_numpy(dtype=float) for f in folds], axis=0)
        np.testing.assert_allclose(ensemble[PROB_COLUMNS].to_numpy(dtype=float), mean)
        assert merged.loc[f"{name}+tta-hflip", "tta"] == "hflip"
    assert "`+tta-<name>` rows" in (Path(config.out) / "summary.md").read_text()
    with pytest.raises(ValueError, match="tta must be one of"):
        from_dict(StudyConfig, {**to_dict(config), "tta": ["vflip"]})
