"""`chexvision kaggle push` (push_kernel.sh) against a fake Kaggle API on 127.0.0.1 that the
real `kaggle` client talks to: the dry-run folder, first and later pushes, every way Kaggle can
say no, a failed kernel, --wait with its output, the chained evaluate kernel, and refusals.

The wheel is built once per module (by the dry run) and reused with --wheel by the other runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_kaggle_api import FakeKaggle, FakeKaggleUnavailable

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "push_kernel.sh"
BASH = shutil.which("bash")
OWNER = "fake-owner"  # the fake's user: the pushes go to its own account
WHEEL_REF = f"{OWNER}/chexvision-wheel"
KERNEL_REF = f"{OWNER}/chexvision-train"

pytestmark = pytest.mark.skipif(BASH is None, reason="push_kernel.sh needs bash")


def write_notebook(path: Path) -> Path:
    """A minimal training notebook: a title, a parameters cell, a cell with a stale output."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        "epochs = 1\nmodel = 'resnet18'\nlr = 1e-3", metadata={"tags": ["parameters"]}
    )
    run = nbformat.v4.new_code_cell("print(epochs, model)")
    run.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1 resnet18\n")]
    run.execution_count = 7
    nb.cells = [nbformat.v4.new_markdown_cell("# Train"), params, run]
    # no kernelspec on purpose: the script must set one, since papermill refuses a notebook without
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def offline_env(tmp: Path) -> dict[str, str]:
    """No Kaggle credentials and no route to Kaggle: what a dry run must be happy with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp / "home"), KAGGLE_CONFIG_DIR=str(tmp / "no-kaggle-config"))
    return env


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BASH, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def kaggle():
    try:
        with FakeKaggle(username=OWNER) as fake:
            yield fake
    except FakeKaggleUnavailable as error:
        pytest.skip(f"the fake Kaggle API cannot bind localhost:80 ({error})")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory):
    """One dry run that builds the wheel for real; the other tests reuse that wheel."""
    tmp = tmp_path_factory.mktemp("dry")
    notebook = write_notebook(tmp / "nb" / "01_train.ipynb")
    out = tmp / "out"
    result = run_script(
        "--dry-run", "--notebook", str(notebook), "--owner", OWNER, "--out", str(out),
        "-p", "epochs=3", "-p", "model=densenet121",
        env=offline_env(tmp),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    wheels = sorted((out / "wheel-dataset").glob("chexvision-*.whl"))
    assert len(wheels) == 1
    kept = tmp / "wheel" / wheels[0].name
    kept.parent.mkdir()
    shutil.copy(wheels[0], kept)
    return {"out": out.resolve(), "result": result, "notebook": notebook, "wheel": kept}


@pytest.fixture
def notebook(dry_run) -> Path:
    return dry_run["notebook"]


def push(kaggle: FakeKaggle, dry_run: dict, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_script(
        "--notebook", str(dry_run["notebook"]), "--owner", OWNER, "--out", str(tmp / "out"),
        "--wheel", str(dry_run["wheel"]), "--interval", "0.01", "--timeout", "30", *extra,
        env=kaggle.subprocess_env(),
    )  # fmt: skip


# --- the dry run ------------------------------------------------------------------------


def test_dry_run_builds_a_valid_push_folder(dry_run):
    out = dry_run["out"]
    meta = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == KERNEL_REF
    assert meta["title"] == "CheXVision train"
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    assert meta["is_private"] is True and meta["enable_gpu"] is True
    assert meta["enable_internet"] is False
    assert meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["dataset_sources"] == ["nih-chest-xrays/data", WHEEL_REF]
    assert meta["competition_sources"] == [] and meta["kernel_sources"] == []
    code_file = out / "kernel" / meta["code_file"]  # relative to the metadata file
    assert code_file.is_file()

    nb = json.loads(code_file.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
    install = tags.index(["kaggle-install"])
    parameters = tags.index(["parameters"])
    assert install < parameters
    install_source = "".join(nb["cells"][install]["source"])
    wheel_sha256 = __import__("hashlib").sha256(dry_run["wheel"].read_bytes()).hexdigest()
    assert "--no-index" in install_source and wheel_sha256 in install_source
    injected = nb["cells"][parameters + 1]
    assert injected["metadata"]["tags"] == ["injected-parameters"]
    source = "".join(injected["source"])
    assert "epochs = 3" in source and 'model = "densenet121"' in source
    assert nb["metadata"]["papermill"]["parameters"] == {"epochs": 3, "model": "densenet121"}
    assert nb["metadata"]["kernelspec"]["name"] == "python3"

    wheel_dir = out / "wheel-dataset"
    assert len(list(wheel_dir.glob("chexvision-*-py3-none-any.whl"))) == 1
    dataset = json.loads((wheel_dir / "dataset-metadata.json").read_text())
    assert dataset["id"] == WHEEL_REF
    assert len(dataset["licenses"]) == 1


def test_dry_run_needs_no_credentials_and_says_what_it_built(dry_run):
    assert "kernel/" in dry_run["result"].stdout  # the folder tree is printed
    assert "nothing was uploaded" in dry_run["result"].stdout


def test_the_source_notebook_is_left_untouched(dry_run):
    nb = json.loads(dry_run["notebook"].read_text())
    assert nb["cells"][2]["outputs"]  # the stale output was stripped from the copy only
    assert not any("kaggle-install" in c["metadata"].get("tags", []) for c in nb["cells"])


def test_named_notebooks_resolve_and_chain(dry_run, tmp_path):
    """A copy of the repo layout: notebooks/ by name; evaluate mounts train, publish evaluate."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    for name in ("push_kernel.sh", "kernel-metadata.json"):
        shutil.copy(REPO / name, repo / name)
    for name in ("01_train", "02_evaluate", "03_publish"):
        shutil.copy(dry_run["notebook"], repo / "notebooks" / f"{name}.ipynb")
    env = offline_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO)  # the copy has no package of its own
    args = ["--dry-run", "--owner", OWNER, "--wheel", str(dry_run["wheel"]), "--repo", str(repo)]
    command = [sys.executable, "-m", "chexvision_lib.cli", "kaggle", "push", *args]

    unknown = subprocess.run(
        [*command, "--notebook", "04_nope"], env=env, capture_output=True, text=True
    )
    assert unknown.returncode == 2
    assert "01_train, 02_evaluate, 03_publish" in unknown.stderr

    for name, upstream in (("evaluate", "train"), ("publish", "evaluate")):
        done = subprocess.run(
            [*command, "--notebook", f"0{2 if name == 'evaluate' else 3}_{name}", "--internet"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        meta = json.loads(
            (repo / "build" / "kaggle" / "kernel" / "kernel-metadata.json").read_text()
        )
        assert meta["id"] == f"{OWNER}/chexvision-{name}"
        assert meta["title"] == f"CheXVision {name}"
        assert meta["kernel_sources"] == [f"{OWNER}/chexvision-{upstream}"]
        assert meta["enable_internet"] is True


# --- pushes through the real kaggle client --------------------------------------------------


def test_first_push_creates_the_wheel_dataset_and_the_kernel(kaggle, dry_run, tmp_path):
    kaggle.dataset_processing_polls = 2  # Kaggle processes an upload for a while
    result = push(kaggle, dry_run, tmp_path, "-p", "epochs=2")
    assert result.returncode == 0, result.stderr
    dataset = kaggle.datasets[WHEEL_REF]
    assert [v["version_number"] for v in dataset["versions"]] == [1]
    assert dataset["files"][dry_run["wheel"].name] == dry_run["wheel"].read_bytes()
    saved = kaggle.saved_kernel(KERNEL_REF)
    assert saved.enable_gpu and not saved.enable_internet
    assert saved.machine_shape == "NvidiaTeslaT4"
    assert list(saved.dataset_data_sources) == ["nih-chest-xrays/data", WHEEL_REF]
    notebook = json.loads(saved.text)
    assert any("epochs = 2" in "".join(c["source"]) for c in notebook["cells"])
    # The kernel was pushed only once the wheel's version was live.
    methods = kaggle.methods()
    assert methods.index("SaveKernel") > max(
        i for i, m in enumerate(methods) if m in ("GetDatasetStatus", "GetDataset")
    )
    assert "version 1 is ready" in result.stdout
    assert kaggle.key not in result.stdout + result.stderr


def test_second_push_uploads_a_new_version_and_waits_for_it(kaggle, dry_run, tmp_path):
    kaggle.add_dataset(WHEEL_REF, {"chexvision-0.0.9-py3-none-any.whl": b"old wheel"})
    kaggle.dataset_processing_polls = 3
    result = push(kaggle, dry_run, tmp_path)
    assert result.returncode == 0, result.stderr
    versions = kaggle.datasets[WHEEL_REF]["versions"]
    assert [v["version_number"] for v in versions] == [1, 2]
    assert "version 2 is ready" in result.stdout
    assert kaggle.methods().count("SaveKernel") == 1


def test_a_rejected_source_fails_the_push(kaggle, dry_run, tmp_path):
    kaggle.reject_sources = ["nih-chest-xrays/data"]
    result = push(kaggle, dry_run, tmp_path)
    assert result.returncode == 2
    assert "could not attach dataset sources ['nih-chest-xrays/data']" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_push_error_fails_with_kaggles_message(kaggle, dry_run, tmp_path):
    kaggle.save_kernel_error = "Notebook quota exceeded for this week"
    result = push(kaggle, dry_run, tmp_path)
    assert result.returncode == 2
    assert "Notebook quota exceeded for this week" in result.stderr


def test_an_http_error_fails_with_kaggles_message(kaggle, dry_run, tmp_path):
    kaggle.fail_method = ("SaveKernel", 403, "Permission 'kernels.create' was denied")
    result = push(kaggle, dry_run, tmp_path)
    assert result.returncode == 2
    assert "Permission 'kernels.create' was denied" in result.stderr


def test_a_failed_kernel_fails_even_when_its_message_says_complete(kaggle, dry_run, tmp_path):
    kaggle.kernel_statuses = ["running", "error"]
    kaggle.failure_message = "Session did not complete: CUDA out of memory"
    kaggle.kernel_log = "RuntimeError: CUDA out of memory"
    result = push(kaggle, dry_run, tmp_path, "--wait")
    assert result.returncode == 2
    assert "ended with status error: Session did not complete: CUDA out of memory" in result.stderr
    log = tmp_path / "out" / "output" / "chexvision-train" / "chexvision-train.log"
    assert "CUDA out of memory" in log.read_text()


def test_wait_follows_the_kernel_and_downloads_its_output(kaggle, dry_run, tmp_path):
    kaggle.kernel_statuses = ["queued", "running", "complete"]
    kaggle.kernel_output_files = {"runs/notebook/train/history.csv": b"epoch,macro_auc\n1,0.7\n"}
    output = tmp_path / "fetched"
    result = push(kaggle, dry_run, tmp_path, "--wait", "--output-dir", str(output))
    assert result.returncode == 0, result.stderr
    assert (output / "runs/notebook/train/history.csv").read_bytes().endswith(b"1,0.7\n")
    assert kaggle.methods().count("GetKernelSessionStatus") == 3


def test_wait_gives_up_after_the_timeout(kaggle, dry_run, tmp_path):
    kaggle.kernel_statuses = ["running"]
    result = run_script(
        "--notebook", str(dry_run["notebook"]), "--owner", OWNER, "--out", str(tmp_path / "out"),
        "--wheel", str(dry_run["wheel"]), "--interval", "0.05", "--timeout", "0.3", "--wait",
        env=kaggle.subprocess_env(),
    )  # fmt: skip
    assert result.returncode == 2
    assert "still running after" in result.stderr


def test_status_reads_the_structured_field(kaggle, tmp_path):
    kaggle.add_kernel(KERNEL_REF)
    kaggle.kernel_statuses = [("error", "Session did not complete")]
    done = subprocess.run(
        [sys.executable, "-m", "chexvision_lib.cli", "kaggle", "status", KERNEL_REF],
        env={**kaggle.subprocess_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{KERNEL_REF}: error (Session did not complete)" in done.stdout


def test_missing_credentials_stop_before_the_build(dry_run, tmp_path):
    result = run_script(
        "--notebook", str(dry_run["notebook"]), "--owner", OWNER, "--out", str(tmp_path / "out"),
        env=offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    assert "credentials" in result.stderr
    assert not (tmp_path / "out").exists()


# --- refusals ---------------------------------------------------------------------------


def test_a_real_push_refuses_the_placeholder_owner(notebook, tmp_path):
    template = json.loads((REPO / "kernel-metadata.json").read_text())
    if not template["id"].startswith("your-kaggle-username/"):
        pytest.skip("kernel-metadata.json already names its owner")
    env = offline_env(tmp_path)
    result = run_script("--notebook", str(notebook), "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 2
    assert "--owner" in result.stderr


def test_secret_looking_parameter_is_refused(notebook, tmp_path):
    secret = "0123456789abcdef-sentinel"
    result = run_script(
        "--notebook", str(notebook), "--dry-run", "-p", f"hf_token={secret}",
        env=offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    assert "refusing parameter 'hf_token'" in result.stderr
    assert "Kaggle Secrets" in result.stderr
    assert secret not in result.stdout + result.stderr


def test_unknown_notebook_lists_what_exists(tmp_path):
    result = run_script("--notebook", "99_nope", "--dry-run", env=offline_env(tmp_path))
    assert result.returncode == 2
    assert "unknown notebook '99_nope'" in result.stderr
    assert "01_train, 02_evaluate, 03_publish" in result.stderr


@pytest.mark.parametrize(
    ("parameter", "message"),
    [("epochs", "expected -p NAME=VALUE"), ("1st=3", "is not a Python identifier")],
)
def test_malformed_parameter_is_a_usage_error(notebook, tmp_path, parameter, message):
    result = run_script(
        "--notebook", str(notebook), "--dry-run", "-p", parameter, env=offline_env(tmp_path)
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_parameter_missing_from_the_notebook_names_the_ones_it_has(dry_run, tmp_path):
    result = run_script(
        "--notebook", str(dry_run["notebook"]), "--owner", OWNER, "--out", str(tmp_path / "out"),
        "--wheel", str(dry_run["wheel"]), "--dry-run", "-p", "epochz=3",
        env=offline_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2
    assert "has no parameter 'epochz'" in result.stderr
    assert "epochs, model, lr" in result.stderr


# --- validation catches bad metadata ----------------------------------------------------


def edit_metadata(folder: Path, **changes) -> None:
    path = folder / "kernel" / "kernel-metadata.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_validate_accepts_the_dry_run_folder(dry_run, tmp_path):
    result = run_script("--validate", str(dry_run["out"]), env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"machine_shape": "NvidiaTeslaP100"}, "machine_shape must be 'NvidiaTeslaT4'"),
        ({"title": "CheXVision training"}, "slugs to 'chexvision-training'"),
        ({"enable_gpu": False}, "enable_gpu must be True"),
        ({"is_private": "yes"}, "'is_private' must be a JSON bool"),
        ({"code_file": "missing.ipynb"}, "'missing.ipynb' not found"),
        ({"dataset_sources": ["nih-chest-xrays/data"]}, f"must include '{WHEEL_REF}'"),
    ],
    ids=["p100", "title-slug", "no-gpu", "string-bool", "no-code-file", "no-wheel-dataset"],
)
def test_validate_rejects_bad_metadata(dry_run, tmp_path, changes, message):
    folder = tmp_path / "build"
    shutil.copytree(dry_run["out"], folder)
    edit_metadata(folder, **changes)
    result = run_script("--validate", str(folder), env=offline_env(tmp_path))
    assert result.returncode == 2
    assert "validation failed" in result.stderr
    assert message in result.stderr


def test_validate_rejects_a_notebook_with_outputs(dry_run, tmp_path):
    folder = tmp_path / "build"
    shutil.copytree(dry_run["out"], folder)
    notebook = folder / "kernel" / "chexvision-train.ipynb"
    nb = json.loads(notebook.read_text())
    nb["cells"][-1]["execution_count"] = 1
    notebook.write_text(json.dumps(nb))
    result = run_script("--validate", str(folder), env=offline_env(tmp_path))
    assert result.returncode == 2
    assert "carry outputs or execution counts" in result.stderr
