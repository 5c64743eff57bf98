"""The three notebooks run top to bottom through papermill on a tiny synthetic subset (as CI and
`kaggle kernels push` run them), produce their artefacts, and export to HTML."""

from pathlib import Path

import nbformat
import papermill
import pytest
from conftest import REPO
from nbconvert import HTMLExporter

NOTEBOOKS = ("01_train", "02_evaluate", "03_publish")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_clean(name: str):
    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    first = notebook.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", [])
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
            # only imports, calls and plots: no function or class definitions
            assert "def " not in cell.source and "class " not in cell.source


def _run(name: str, out: Path, parameters: dict) -> nbformat.NotebookNode:
    executed = out / f"{name}.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / f"{name}.ipynb"),
        str(executed),
        parameters=parameters,
        cwd=str(out),
        progress_bar=False,
        kernel_name="python3",
    )
    notebook = nbformat.read(executed, as_version=4)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    (out / f"{name}.html").write_text(html)
    return notebook


def test_three_notebooks_run_in_sequence(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    _run(
        "01_train",
        tmp_path,
        {
            "work_dir": str(work),
            "data_root": "synthetic",
            "synthetic_patients": 40,
            # CI's tiny settings, instead of the recipe a Kaggle "Run All" trains
            "recipe": None,
            "model": "seresnet_small",
            "image_size": 64,
            "epochs": 2,
            "lr": 3e-3,
        },
    )
    run = work / "train"
    assert (run / "model" / "model.safetensors").exists()
    evaluated = _run(
        "02_evaluate",
        tmp_path,
        {"run_dir": str(run), "work_dir": str(work), "resamples": 100, "cam_outputs": "Abnormal"},
    )
    assert (run / "test" / "metrics.json").exists()
    assert (run / "test" / "figures" / "roc_abnormal.png").exists()
    assert (run / "test" / "figures" / "gradcam_Abnormal.png").exists()
    images = [
        o for c in evaluated.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 5, "figures are shown inline"
    _run(
        "03_publish",
        tmp_path,
        {"run_dir": str(run), "work_dir": str(work), "model_dir": str(work / "model")},
    )
    card = (work / "model" / "README.md").read_text()
    assert "Not for clinical use" in card
    for name in NOTEBOOKS:
        assert (tmp_path / f"{name}.html").stat().st_size > 10_000


def test_unknown_parameter_and_missing_data_root_are_rejected(tmp_path: Path):
    with pytest.raises(papermill.PapermillExecutionError, match="unknown notebook parameter"):
        _run("01_train", tmp_path, {"work_dir": str(tmp_path), "data_rot": "synthetic"})
    with pytest.raises(papermill.PapermillExecutionError, match="does not exist; looked at"):
        _run(
            "01_train",
            tmp_path,
            {"work_dir": str(tmp_path), "data_root": str(tmp_path / "no-such-folder")},
        )
