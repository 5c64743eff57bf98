"""A Kaggle session rehearsal: the rendered kernels run by papermill in folders laid out like
Kaggle's (input/ mounted datasets and earlier outputs, working/ the current directory), in a fresh
virtual environment whose only CheXVision is the wheel the install cell installs with --no-index.

Session 1 runs the train kernel on an NIH-layout dataset in input/; session 2 runs the evaluate
kernel with session 1's output attached, as Kaggle mounts a kernel source. Nothing under input/
may change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from chexvision_lib.data.synthetic import write_synthetic_nih
from chexvision_lib.publishing.kaggle_kernel import build_kernel, bundle_dependencies

REPO = Path(__file__).resolve().parents[1]
KERNEL_NAME = "chexvision-rehearsal"
OWNER = "rehearsal"
TINY = {"recipe": "None", "model": "seresnet_small", "image_size": "64", "epochs": "2"}


def fresh_venv(root: Path) -> Path:
    """A venv that sees this project's dependencies (torch, papermill, ...) but not the project:
    only the wheel can bring chexvision_lib in. Its own old setuptools is removed so the one torch
    needs (from the project's venv) is the one pip sees."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    (site,) = root.glob("lib/python*/site-packages")
    for stale in [
        *site.glob("setuptools*"),
        *site.glob("_distutils_hack"),
        *site.glob("distutils-*.pth"),
    ]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    project_site = next(
        Path(p) for p in sys.path if p.endswith("site-packages") and "chexvision" not in p
    )
    (site / "project-dependencies.pth").write_text(f"{project_site}\n")
    python = root / "bin" / "python"
    imports = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('chexvision_lib'))"],
        capture_output=True, text=True, check=True, cwd=root,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    assert imports.stdout.strip() == "None", "the fresh venv must not see the project"
    subprocess.run(
        [str(python), "-m", "ipykernel", "install", "--prefix", str(root), "--name", KERNEL_NAME],
        check=True, capture_output=True,
    )  # fmt: skip
    return python


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def run_kernel(notebook: Path, kaggle: Path, executed: Path) -> None:
    papermill.execute_notebook(
        str(notebook), str(executed), kernel_name=KERNEL_NAME, cwd=str(kaggle / "working"),
        progress_bar=False,
    )  # fmt: skip


@pytest.fixture
def kaggle_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    venv = tmp_path / "venv"
    fresh_venv(venv)
    # The push machine has the package index (once, for the bundled wheels); Kaggle does not.
    bundle_dependencies(tmp_path)
    monkeypatch.setenv("JUPYTER_PATH", str(venv / "share" / "jupyter"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # network off: no index, and no proxy that works
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    return venv


def kaggle_session(root: Path, wheel_dir: Path, nih: Path, monkeypatch) -> Path:
    (root / "input").mkdir(parents=True)
    shutil.copytree(wheel_dir, root / "input" / "chexvision-wheel")
    (root / "input" / "data").symlink_to(nih, target_is_directory=True)
    (root / "working").mkdir()
    monkeypatch.setenv("CHEXVISION_KAGGLE_ROOT", str(root))
    return root


def test_train_then_evaluate_kernels_in_kaggle_layout(kaggle_env, tmp_path, monkeypatch):
    nih = tmp_path / "nih-chest-xrays"
    write_synthetic_nih(nih, n_patients=40, image_size=64)
    train = build_kernel(
        REPO / "notebooks" / "01_train.ipynb", OWNER, tmp_path / "build-train", TINY,
        template=REPO / "kernel-metadata.json", repo=REPO,
    )  # fmt: skip

    first = kaggle_session(tmp_path / "session1", train.wheel_dir, nih, monkeypatch)
    before = tree_digest(first / "input")
    run_kernel(train.notebook, first, tmp_path / "train-executed.ipynb")
    site = next((kaggle_env / "lib").glob("python*/site-packages"))
    assert (site / "chexvision_lib" / "__init__.py").is_file(), "installed from the wheel"
    assert (site / "pytorch_grad_cam").is_dir(), "the bundled dependency, installed offline"
    run = first / "working" / "runs" / "notebook" / "train"
    assert (run / "model" / "model.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "seresnet_small" and config["recipe"] is None
    assert tree_digest(first / "input") == before

    evaluate = build_kernel(
        REPO / "notebooks" / "02_evaluate.ipynb", OWNER, tmp_path / "build-evaluate",
        {"resamples": "50", "cam_outputs": "Abnormal"},
        template=REPO / "kernel-metadata.json", repo=REPO, wheel=train.wheel,
    )  # fmt: skip
    second = kaggle_session(tmp_path / "session2", evaluate.wheel_dir, nih, monkeypatch)
    shutil.copytree(first / "working", second / "input" / "chexvision-train", symlinks=True)
    before = tree_digest(second / "input")
    run_kernel(evaluate.notebook, second, tmp_path / "evaluate-executed.ipynb")
    evaluated = second / "working" / "runs" / "notebook" / "train"
    metrics = json.loads((evaluated / "test" / "metrics.json").read_text())
    assert metrics["n_images"] > 0 and 0 <= metrics["binary_auc"] <= 1
    assert (evaluated / "test" / "figures" / "gradcam_Abnormal.png").is_file()
    assert tree_digest(second / "input") == before, "a mounted output was written to"
    assert not (
        second / "input" / "chexvision-train" / "runs" / "notebook" / "train" / "test"
    ).exists()


def test_install_cell_refuses_a_wheel_it_was_not_pushed_with(kaggle_env, tmp_path, monkeypatch):
    nih = tmp_path / "nih"
    nih.mkdir()
    build = build_kernel(
        REPO / "notebooks" / "02_evaluate.ipynb", OWNER, tmp_path / "build", {},
        template=REPO / "kernel-metadata.json", repo=REPO,
    )  # fmt: skip
    session = kaggle_session(tmp_path / "session", build.wheel_dir, nih, monkeypatch)
    mounted = session / "input" / "chexvision-wheel" / build.wheel.name
    mounted.write_bytes(mounted.read_bytes() + b"\0")  # an older (different) version is served
    with pytest.raises(papermill.PapermillExecutionError, match="not the wheel this kernel"):
        run_kernel(build.notebook, session, tmp_path / "executed.ipynb")
    site = next((kaggle_env / "lib").glob("python*/site-packages"))
    assert not (site / "chexvision_lib").exists()
    assert os.environ["PIP_NO_INDEX"] == "1"
