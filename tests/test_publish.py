"""Model folder, model card and Hub publishing, on a tiny real run; the Hub is a recording fake."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from conftest import tiny_evaluated_run
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, ModelCard
from PIL import Image

from chexvision_lib.cli.main import build_parser
from chexvision_lib.cli.main import main as cli_main
from chexvision_lib.core.hub_access import MissingTokenError, resolve_token
from chexvision_lib.core.labels import ABNORMAL, OUTPUTS
from chexvision_lib.data.provenance import OFFICIAL_SPLIT_SHA256
from chexvision_lib.models.registry import ChestClassifier
from chexvision_lib.publishing.hub import push_model_folder
from chexvision_lib.publishing.model_card import render_model_card
from chexvision_lib.publishing.model_folder import (
    UNVERIFIED_NAME,
    ProvenanceError,
    build_model_folder,
    data_section,
    without_local_paths,
)
from chexvision_lib.training.hub_checkpoints import make_epoch_uploader

# The shape of a real token ("hf_" + 34 letters), made up.
FAKE_TOKEN = "hf_" + "QwErTyUiOpAsDfGhJkLzXcVbNmQwErTyUi"
SYNTHETIC_TEST_SPLIT = "test_list.txt of the synthetic set"


# ----------------------------------------------------------------------------------------------
# Fixtures: one tiny run and its model folder per module
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("publish")
    run = tiny_evaluated_run(synth_root, root)
    # Stands in for a Grad-CAM grid written by the explain step: the folder must pick it up.
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(run / "test" / "gradcam_grid.png")
    return run


@pytest.fixture(scope="module")
def folder(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "model"
    return build_model_folder(run, out, repo_id="someone/chexvision-test")


@pytest.fixture(scope="module")
def metrics(run: Path) -> dict:
    return json.loads((run / "test" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def card(folder: Path) -> str:
    return (folder / "README.md").read_text()


@pytest.fixture
def run_copy(run: Path, tmp_path: Path) -> Path:
    """A private copy of the run that a test may damage."""
    return Path(shutil.copytree(run, tmp_path / "run"))


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token anywhere: not in the environment, the login store, or Kaggle."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


class RecordingHubApi:
    """Stands in for HfApi: records each call and its arguments; no network."""

    def __init__(self, existing: list[str] | None = None, fail_commits: bool = False) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.existing = existing or [".gitattributes"]
        self.fail_commits = fail_commits

    def _record(self, name: str, args: tuple, kwargs: dict) -> None:
        self.calls.append((name, args, kwargs))

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(args, kwargs) for call, args, kwargs in self.calls if call == name]

    def create_repo(self, *args, **kwargs):
        self._record("create_repo", args, kwargs)
        return f"https://huggingface.co/{args[0]}"

    def create_branch(self, *args, **kwargs):
        self._record("create_branch", args, kwargs)

    def list_repo_files(self, *args, **kwargs):
        self._record("list_repo_files", args, kwargs)
        return list(self.existing)

    def upload_folder(self, *args, **kwargs):
        self._record("upload_folder", args, kwargs)
        return SimpleNamespace(commit_url="https://huggingface.co/x/commit/upload")

    def create_commit(self, repo_id, operations, **kwargs):
        if self.fail_commits:
            raise ConnectionError("the Hub is unreachable")
        added = {
            op.path_in_repo: hashlib.sha256(Path(op.path_or_fileobj).read_bytes()).hexdigest()
            for op in operations
            if isinstance(op, CommitOperationAdd)
        }
        deleted = [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)]
        self._record("create_commit", (repo_id,), {**kwargs, "added": added, "deleted": deleted})
        n = len(self.named("create_commit"))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{n:040d}")


# ----------------------------------------------------------------------------------------------
# Reading the card as a reader would
# ----------------------------------------------------------------------------------------------


def table_after(text: str, first_header: str) -> list[list[str]]:
    """Cells of the Markdown table whose header row starts with `first_header`."""
    lines = text.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def shown(cell: str, value: float | int | None) -> bool:
    """Whether a card cell shows `value` at the precision the cell has."""
    if value is None:
        return cell == "n/a"
    cell = cell.replace(",", "")
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return cell == f"{value:.{decimals}f}"


def shown_interval(cell: str, interval: list[float]) -> bool:
    low, high = cell.strip("[]").split(", ")
    return shown(low, interval[0]) and shown(high, interval[1])


def output_name(cell: str) -> str:
    return cell.replace(" ", "_")


# ----------------------------------------------------------------------------------------------
# The model folder
# ----------------------------------------------------------------------------------------------


def test_model_folder_holds_the_shipped_files(run: Path, folder: Path):
    assert (folder / "model.safetensors").read_bytes() == (
        run / "model" / "model.safetensors"
    ).read_bytes()
    for split in ("test", "val"):
        published = json.loads((folder / "results" / split / "metrics.json").read_text())
        recorded = json.loads((run / split / "metrics.json").read_text())
        assert published == without_local_paths(recorded)
        assert published["model"]["run"] == run.name  # the run's name, not where it lives
        assert published["model"]["weights_sha256"] == recorded["model"]["weights_sha256"]
    config = json.loads((folder / "config.json").read_text())
    shipped = json.loads((run / "model" / "config.json").read_text())
    # training's keys are kept as they were, local paths cut to their last part
    assert {k: config[k] for k in shipped} == without_local_paths(shipped)
    assert config["training"]["cache"]["path"] == Path(shipped["training"]["cache"]["path"]).name
    assert Path(shipped["training"]["cache"]["path"]).is_absolute()
    # No file of the folder says where the author keeps things.
    for path in folder.rglob("*"):
        if path.suffix in (".json", ".md", ".csv"):
            assert str(run.parent) not in path.read_text(), path
    data = config["data"]
    assert data["synthetic"] is True
    assert set(data["split_files"]) == {
        "Data_Entry_2017.csv",
        "train_val_list.txt",
        "test_list.txt",
    }
    assert (
        data["split_files"]["test_list.txt"]
        == hashlib.sha256(
            Path(shipped["training"]["data_source"]["test_list"]).read_bytes()
        ).hexdigest()
    )
    publication = config["publication"]
    assert (
        publication["weights_sha256"]
        == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    )
    provenance = publication["metrics_provenance"]
    assert provenance == {
        s: "metrics.json records the SHA-256 of these weights" for s in provenance
    }
    assert (folder / "results" / "test" / "subgroups.csv").read_bytes() == (
        run / "test" / "subgroups.csv"
    ).read_bytes()
    figures = {p.name for p in (folder / "figures").glob("*.png")}
    assert {"roc_curves.png", "roc_abnormal.png", "training_curves.png", "auc_bars.png"} <= figures
    assert {"confusion_abnormal.png", "gradcam_test_gradcam_grid.png"} <= figures
    for name in figures:
        assert (folder / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.bin"))  # no pickles


def test_from_pretrained_predicts_identically(run: Path, folder: Path):
    published = ChestClassifier.from_pretrained(folder)
    original = ChestClassifier.from_pretrained(run / "model")
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(published(x), original(x))
    assert published.thresholds == original.thresholds
    assert published.preprocessing == original.preprocessing


def test_rebuilding_replaces_our_folder_but_never_a_foreign_one(run: Path, tmp_path: Path):
    out = build_model_folder(run, tmp_path / "m", figures=False)
    assert build_model_folder(run, out, figures=False) == out  # ours: rebuilt in place
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a model folder built by chexvision"):
        build_model_folder(run, foreign, figures=False)
    assert (foreign / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------------
# Provenance: every number from the weights that ship
# ----------------------------------------------------------------------------------------------


def _edit_json(path: Path, edit) -> None:
    values = json.loads(path.read_text())
    edit(values)
    path.write_text(json.dumps(values))


def _change_weights(run: Path) -> None:
    model = ChestClassifier.from_pretrained(run / "model")
    with torch.no_grad():
        model.abnormal_head.bias += 1.0
    safetensors.torch.save_model(model, str(run / "model" / "model.safetensors"))


def test_refuses_metrics_of_other_weights(run_copy: Path, tmp_path: Path):
    _change_weights(run_copy)  # e.g. training resumed after `evaluate`
    with pytest.raises(ProvenanceError, match="computed by weights with SHA-256"):
        build_model_folder(run_copy, tmp_path / "m", figures=False)
    assert not (tmp_path / "m").exists()


def test_metrics_without_a_recorded_hash_are_checked_by_rescoring(run_copy: Path, tmp_path: Path):
    # Metrics files written before evaluate recorded the weights' hash.
    for split in ("test", "val"):
        _edit_json(run_copy / split / "metrics.json", lambda m: m["model"].pop("weights_sha256"))
    out = build_model_folder(run_copy, tmp_path / "m", figures=False)
    provenance = json.loads((out / "config.json").read_text())["publication"]["metrics_provenance"]
    assert "re-scored with these weights, match predictions.csv" in provenance["test"]
    assert "Checked when this folder was built: " in (out / "README.md").read_text()
    _change_weights(run_copy)
    with pytest.raises(ProvenanceError, match="not made by the shipped weights"):
        build_model_folder(run_copy, tmp_path / "m2", figures=False)


def test_refuses_thresholds_changed_after_evaluation(run_copy: Path, tmp_path: Path):
    _edit_json(run_copy / "model" / "config.json", lambda c: c["thresholds"].__setitem__(-1, 0.9))
    with pytest.raises(ProvenanceError, match=r"thresholds differ.*Abnormal"):
        build_model_folder(run_copy, tmp_path / "m", figures=False)


def test_refuses_metrics_that_predictions_do_not_support(run_copy: Path, tmp_path: Path):
    edit = lambda m: m["outputs"][ABNORMAL].update(auc=0.99)  # noqa: E731
    _edit_json(run_copy / "test" / "metrics.json", edit)
    with pytest.raises(ProvenanceError, match="AUC of Abnormal"):
        build_model_folder(run_copy, tmp_path / "m", figures=False)


def test_refuses_metrics_of_other_data(run_copy: Path, tmp_path: Path):
    # When evaluate records the evaluated cache's source (split-file hashes), they must match.
    other = {"kind": "nih", "sha256": {"test_list": "f" * 64}}
    _edit_json(run_copy / "test" / "metrics.json", lambda m: m.update(data_source=other))
    with pytest.raises(ProvenanceError, match="external evaluation"):
        build_model_folder(run_copy, tmp_path / "m", figures=False)


def test_refuses_unevaluated_run(run_copy: Path, tmp_path: Path):
    shutil.rmtree(run_copy / "test")
    with pytest.raises(FileNotFoundError, match="chexvision evaluate"):
        build_model_folder(run_copy, tmp_path / "m", figures=False)


# ----------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------


def test_card_metadata_names_dataset_split_and_values(folder: Path, metrics: dict):
    loaded = ModelCard.load(folder / "README.md")
    data = loaded.data
    assert data.license == "mit"
    assert data.library_name == "chexvision"
    assert data.pipeline_tag == "image-classification"
    assert {"not-for-clinical-use", "synthetic-data", "chest-x-ray"} <= set(data.tags)
    results = {(r.metric_type, r.metric_config): r for r in data.eval_results}
    for result in data.eval_results:
        assert result.dataset_split == SYNTHETIC_TEST_SPLIT
        assert result.dataset_name.startswith("Synthetic")
    for name in OUTPUTS:
        entry = metrics["outputs"].get(name)
        if entry is not None:
            assert results[("roc_auc", name)].metric_value == entry["auc"]
            assert results[("roc_auc", name)].metric_args["ci95"] == entry["auc_ci95"]
    assert results[("roc_auc", "macro_14_findings")].metric_value == metrics["macro_auc"]
    assert results[("roc_auc", ABNORMAL)].metric_value == metrics["binary_auc"]
    point = metrics["outputs"][ABNORMAL]["at_validation_threshold"]
    assert results[("f1", ABNORMAL)].metric_value == point["f1"]
    assert results[("f1", ABNORMAL)].metric_args["threshold"] == point["threshold"]


def test_card_opens_with_no_clinical_use_and_names_the_split(card: str):
    body = card.split("\n---\n", 1)[1]
    top = body.strip().splitlines()[:8]
    assert any("**Not for clinical use.**" in line for line in top)
    assert any("synthetic" in line.lower() for line in top)
    assert f"test split — {SYNTHETIC_TEST_SPLIT}" in body
    for heading in (
        "## Intended use",
        "## Limitations",
        "## Training data and split",
        "## Preprocessing",
        "## Training",
        "### ROC AUC per output",
        "### Comparison with published figures",
        "## How to use",
        "## Citation",
    ):
        assert heading in body
    assert 'load_model("someone/chexvision-test", revision=' in body
    assert "chexvision predict someone/chexvision-test" in body
    assert "@inproceedings{wang2017chestxray8" in body
    assert "PA vs AP" in body and "text-mined" in body
    assert "![ROC curve per output" in body and "(figures/roc_curves.png)" in body
    assert "![Grad-CAM overlays" in body and "(figures/gradcam_test_gradcam_grid.png)" in body
    assert "### Subgroups" in body and "AUC (binary output)" in body


def test_every_number_on_the_card_equals_metrics_json(card: str, metrics: dict, run: Path):
    outputs = metrics["outputs"]
    rows = table_after(card, "Output")
    seen = set()
    for name_cell, auc, ci, n, positives, threshold in rows:
        if name_cell.startswith("**Macro"):
            assert shown(auc, metrics["macro_auc"])
            assert shown_interval(ci, metrics["macro_auc_ci95"])
            assert shown(n, metrics["n_images"])
            continue
        name = output_name(name_cell)
        seen.add(name)
        assert shown(auc, outputs[name]["auc"]), name
        assert shown_interval(ci, outputs[name]["auc_ci95"]), name
        assert shown(n, outputs[name]["n"]) and shown(positives, outputs[name]["positives"])
        assert shown(threshold, metrics["thresholds"][name]), name
    assert seen == set(outputs)

    points = {row[0]: row[1:] for row in table_after(card, "Binary output")}
    keys = {"Threshold": "threshold", "Sensitivity": "sensitivity", "Specificity": "specificity"}
    keys |= {"PPV": "ppv", "NPV": "npv", "F1": "f1", "Accuracy": "accuracy"}
    keys |= {"TP": "tp", "FP": "fp", "TN": "tn", "FN": "fn"}
    for label, key in keys.items():
        at_validation, at_half = points[label]
        assert shown(at_validation, outputs[ABNORMAL]["at_validation_threshold"][key]), label
        assert shown(at_half, outputs[ABNORMAL]["at_0.5"][key]), label

    headline = re.search(
        r"macro ROC AUC over the 14 findings \*\*([\d.]+)\*\* \(95% CI (\[.*?\])", card
    )
    assert shown(headline[1], metrics["macro_auc"])
    assert shown_interval(headline[2], metrics["macro_auc_ci95"])
    binary = re.search(r"ROC AUC \*\*([\d.]+)\*\* \(95% CI (\[.*?\])", card)
    assert shown(binary[1], metrics["binary_auc"])
    assert shown_interval(binary[2], outputs[ABNORMAL]["auc_ci95"])
    images = re.search(r"\((\d[\d,]*) images, (\d[\d,]*) patients\)", card)
    assert shown(images[1], metrics["n_images"]) and shown(images[2], metrics["n_patients"])

    ours = next(r for r in table_after(card, "Model") if r[0].startswith("**This model**"))
    assert shown(ours[1], metrics["macro_auc"]) and SYNTHETIC_TEST_SPLIT in ours[2]

    val = json.loads((run / "val" / "metrics.json").read_text())
    val_rows = {row[0]: row[1:] for row in table_after(card, "Metric (validation)")}
    assert shown(val_rows["Macro AUC (14 findings)"][0], val["macro_auc"])
    assert shown(val_rows["Binary AUC"][0], val["binary_auc"])


def test_card_for_the_real_nih_release(folder: Path, tmp_path: Path):
    copy = Path(shutil.copytree(folder, tmp_path / "real"))
    config = json.loads((copy / "config.json").read_text())

    def card_for(source: dict) -> str:
        config["data"] = data_section({**config["training"], "data_source": source}, {})
        (copy / "config.json").write_text(json.dumps(config))
        return render_model_card(copy)

    # Not synthetic, but its split lists are not NIH's: not called NIH ChestX-ray14.
    source = {**config["training"]["data_source"], "synthetic": False}
    results = ModelCard(card_for(source)).data.eval_results
    assert {r.dataset_name for r in results} == {UNVERIFIED_NAME}
    # With the official split lists' hashes recorded, and the whole test list indexed:
    official = {**source["sha256"], **OFFICIAL_SPLIT_SHA256}
    card = card_for({**source, "sha256": official, "counts": {**source["counts"], "test": 25_596}})
    results = ModelCard(card).data.eval_results
    assert {(r.dataset_name, r.dataset_split) for r in results} == {
        ("NIH ChestX-ray14", "official test_list.txt")
    }
    assert "synthetic" not in card.split("## Model summary")[0].lower()
    assert "unverified" not in card.lower()
    assert "synthetic-data" not in ModelCard(card).data.tags
    # Part of the test list only (images missing from the copy): the split says so.
    results = ModelCard(card_for({**source, "sha256": official})).data.eval_results
    assert {r.dataset_split for r in results} == {
        f"official test_list.txt, the {source['counts']['test']:,} of its 25,596 images indexed"
    }


def test_card_for_a_binary_head(folder: Path, tmp_path: Path):
    copy = Path(shutil.copytree(folder, tmp_path / "binary"))
    shutil.rmtree(copy / "figures")
    config = json.loads((copy / "config.json").read_text())
    config["head"] = "binary"
    config["preprocessing"]["outputs"] = [ABNORMAL]
    (copy / "config.json").write_text(json.dumps(config))
    metrics_path = copy / "results" / "test" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["outputs"] = {ABNORMAL: metrics["outputs"][ABNORMAL]}
    metrics["macro_auc"] = None
    del metrics["macro_auc_ci95"]
    metrics_path.write_text(json.dumps(metrics))
    card = render_model_card(copy)
    results = ModelCard(card).data.eval_results
    assert [(r.metric_type, r.metric_config) for r in results] == [
        ("roc_auc", ABNORMAL),
        ("f1", ABNORMAL),
    ]
    assert "returns one sigmoid probability" in card
    assert [row[0] for row in table_after(card, "Output")] == [ABNORMAL]
    assert "No figures were included" in card


def test_subgroup_table_rendered_and_checked(run: Path, card: str, run_copy: Path, tmp_path: Path):
    subgroups = pd.read_csv(run / "test" / "subgroups.csv", dtype={"value": str})
    rows = table_after(card, "Grouped by")
    assert len(rows) == len(subgroups)
    for cells, row in zip(rows, subgroups.itertuples(index=False), strict=True):
        assert cells[:2] == [row.group_column, str(row.value)]
        assert output_name(cells[2]) == row.output
        assert shown(cells[3], row.n_images) and shown(cells[4], row.n_positive)
        assert shown(cells[5], None if pd.isna(row.auc) else row.auc)
    binary = subgroups[subgroups["output"] == ABNORMAL]
    assert len(table_after(card, "Subgroup")) == len(binary)

    subgroups.loc[subgroups.index[0], "n_images"] += 1  # a table predictions do not support
    subgroups.to_csv(run_copy / "test" / "subgroups.csv", index=False)
    with pytest.raises(ProvenanceError, match="subgroups.csv"):
        build_model_folder(run_copy, tmp_path / "m", figures=False)
    (run_copy / "test" / "subgroups.csv").unlink()
    card = (build_model_folder(run_copy, tmp_path / "m", figures=False) / "README.md").read_text()
    assert "Not computed for this model" in card


# ----------------------------------------------------------------------------------------------
# Token
# ----------------------------------------------------------------------------------------------


def test_missing_token_lists_the_three_ways(no_token: None):
    with pytest.raises(MissingTokenError) as caught:
        resolve_token()
    message = str(caught.value)
    assert "HF_TOKEN" in message and "hf auth login" in message and "Kaggle" in message


def test_token_sources_in_order(no_token: None, monkeypatch: pytest.MonkeyPatch):
    secrets = types.ModuleType("kaggle_secrets")

    class UserSecretsClient:
        def get_secret(self, name: str) -> str:
            assert name == "HF_TOKEN"
            return "hf_from_kaggle"

    secrets.UserSecretsClient = UserSecretsClient
    monkeypatch.setitem(sys.modules, "kaggle_secrets", secrets)
    with pytest.raises(MissingTokenError):
        resolve_token()  # off Kaggle, the Kaggle client is not consulted
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert resolve_token() == "hf_from_kaggle"
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_from_login_store")
    assert resolve_token() == "hf_from_login_store"
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert resolve_token() == FAKE_TOKEN


# ----------------------------------------------------------------------------------------------
# Pushing
# ----------------------------------------------------------------------------------------------


def test_dry_run_lists_exactly_the_upload_without_a_token(
    folder: Path, no_token: None, capsys: pytest.CaptureFixture
):
    listing = push_model_folder(folder, "someone/chexvision-test", dry_run=True)
    assert capsys.readouterr().out.strip() == listing.strip()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    lines = listing.splitlines()[1:]
    assert len(lines) == len(files)
    for line, path in zip(lines, files, strict=True):
        name, size, _, digest = line.split()
        assert name == path.relative_to(folder).as_posix()
        assert int(size.replace(",", "")) == path.stat().st_size
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_makes_one_commit_with_the_folder(folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    stale = ["README.md", "figures/old_plot.png", ".gitattributes"]
    api = RecordingHubApi(existing=stale)
    url = push_model_folder(folder, "someone/chexvision-test", private=True, revision="v1", api=api)
    assert url == f"https://huggingface.co/someone/chexvision-test/commit/{1:040d}"
    assert [call for call, _, _ in api.calls] == [
        "create_repo",
        "create_branch",
        "list_repo_files",
        "create_commit",
    ]
    ((repo_args, repo_kwargs),) = api.named("create_repo")
    assert repo_args == ("someone/chexvision-test",)
    assert repo_kwargs["exist_ok"] is True and repo_kwargs["private"] is True
    ((_, branch_kwargs),) = api.named("create_branch")
    assert branch_kwargs["branch"] == "v1" and branch_kwargs["exist_ok"] is True
    ((_, commit),) = api.named("create_commit")
    assert commit["revision"] == "v1" and commit["token"] == FAKE_TOKEN
    expected = {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }
    assert commit["added"] == expected
    assert commit["deleted"] == ["figures/old_plot.png"]  # .gitattributes stays


def test_push_to_main_creates_no_branch(folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    api = RecordingHubApi()
    push_model_folder(folder, "someone/chexvision-test", api=api)
    assert not api.named("create_branch")
    assert api.named("create_repo")[0][1]["private"] is False
    with pytest.raises(ValueError, match="branch name"):
        push_model_folder(folder, "someone/x", revision="a" * 40, api=api)


def test_push_refuses_a_changed_folder_or_a_token_in_a_file(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    (copy / "results" / "notes.txt").write_text(f"token={FAKE_TOKEN}")
    api = RecordingHubApi()
    with pytest.raises(ValueError, match="contains your Hugging Face token") as caught:
        push_model_folder(copy, "someone/x", api=api)
    assert FAKE_TOKEN not in str(caught.value)
    (copy / "results" / "notes.txt").unlink()
    with open(copy / "model.safetensors", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ProvenanceError, match="not the file the card was built for"):
        push_model_folder(copy, "someone/x", api=api, dry_run=True)
    assert not api.calls


def test_epoch_uploader_pushes_every_n_epochs_to_a_branch(
    run: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    api = RecordingHubApi()
    upload = make_epoch_uploader("someone/ckpt", every_epochs=2, api=api)
    for epoch in range(1, 6):
        upload(run, epoch)
    upload(run, 5, final=True)
    commits = api.named("create_commit")
    assert len(commits) == 3  # epochs 2 and 4, then the final one
    assert len(api.named("create_repo")) == 1 and len(api.named("create_branch")) == 1
    assert api.named("create_repo")[0][1]["private"] is True
    assert api.named("create_branch")[0][1]["branch"] == "checkpoints"
    for _, commit in commits:
        assert commit["revision"] == "checkpoints"
        assert set(commit["added"]) == {
            "model/model.safetensors",
            "model/config.json",
            "history.csv",
            "checkpoints/last.pt",
        }
    with pytest.raises(ValueError, match="every_epochs"):
        make_epoch_uploader("someone/ckpt", every_epochs=0, api=api)


def test_epoch_uploader_failure_does_not_stop_training(
    run: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    upload = make_epoch_uploader("someone/ckpt", 1, api=RecordingHubApi(fail_commits=True))
    with caplog.at_level(logging.WARNING):
        upload(run, 1)
    assert "upload of epoch 1" in caplog.text and "training continues" in caplog.text


def test_epoch_uploader_needs_a_token_before_training(no_token: None):
    with pytest.raises(MissingTokenError):
        make_epoch_uploader("someone/ckpt", 1, api=RecordingHubApi())


def test_publishing_never_leaks_the_token(
    run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    api = RecordingHubApi()
    out = build_model_folder(run, tmp_path / "m", figures=False)
    push_model_folder(out, "someone/x", dry_run=True)
    push_model_folder(out, "someone/x", revision="v2", api=api)
    make_epoch_uploader("someone/ckpt", 1, api=api)(run, 1)
    make_epoch_uploader("someone/ckpt", 1, api=RecordingHubApi(fail_commits=True))(run, 1)
    captured = capsys.readouterr()
    assert api.named("create_commit")[0][1]["token"] == FAKE_TOKEN  # it was used...
    assert FAKE_TOKEN not in captured.out + captured.err + caplog.text  # ...and never shown
    for path in [*out.rglob("*"), *run.rglob("*")]:
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    return build_parser()


def test_cli_card_and_push(run: Path, tmp_path: Path, no_token: None, capsys):
    out = tmp_path / "cli_model"
    args = _parser().parse_args(["card", str(run), "--out", str(out), "--no-figures"])
    args.func(args)
    assert capsys.readouterr().out.strip() == f"model card: {out / 'README.md'}"
    args = _parser().parse_args(["push", str(out), "--repo-id", "someone/x", "--dry-run"])
    args.func(args)
    assert "model.safetensors" in capsys.readouterr().out
    # Without a token: one line through the CLI's error path, status 2, no traceback.
    assert cli_main(["push", str(out), "--repo-id", "someone/x", "--private"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chexvision push: error: no Hugging Face token found")
    assert "Traceback" not in err
