"""push_kernel.sh: the dry-run folder, a full push against a fake `kaggle` CLI, and refusals.

No network: a small fake `kaggle` on PATH logs its argv and answers like the real CLI. The wheel is
built once per module (by the dry run) and reused with --wheel by the other runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "push_kernel.sh"
BASH = shutil.which("bash")
OWNER = "jane"
# Set in the environment the fake CLI sees; it must never show up in the script's output or files.
SENTINEL_KEY = "0123456789abcdef-sentinel-kaggle-key"

pytestmark = pytest.mark.skipif(BASH is None, reason="push_kernel.sh needs bash")

FAKE_KAGGLE = """\
#!{python}
# Fake Kaggle CLI: logs argv, answers like kaggle 2.x, touches no network.
import json
import os
import shutil
import sys
from pathlib import Path

state = Path(os.environ["FAKE_KAGGLE_STATE"])
state.mkdir(parents=True, exist_ok=True)
args = sys.argv[1:]
with open(state / "calls.log", "a") as log:
    log.write(json.dumps(args) + "\\n")


def folder():
    return Path(args[args.index("-p") + 1])


def bump(name):
    counter = state / name
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    return n


if args == ["--version"]:
    print("Kaggle CLI 2.2.4")
elif args[:2] == ["datasets", "status"]:
    if os.environ.get("FAKE_DATASET_EXISTS") != "1" and not (state / "created").exists():
        print("404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/datasets/status/"
              + args[2], file=sys.stderr)
        sys.exit(1)
    print("ready")
elif args[:2] in (["datasets", "create"], ["datasets", "version"]):
    (state / "uploaded.json").write_text(json.dumps(sorted(p.name for p in folder().iterdir())))
    (state / "created").touch()
    print("Dataset version is being created. Please check progress at https://www.kaggle.com/x")
elif args[:2] == ["kernels", "push"]:
    shutil.copytree(folder(), state / "pushed")
    meta = json.loads((folder() / "kernel-metadata.json").read_text())
    print("Kernel version 1 successfully pushed.  Please check progress at "
          "https://www.kaggle.com/code/" + meta["id"])
elif args[:2] == ["kernels", "status"]:
    final = os.environ.get("FAKE_KERNEL_FINAL", "COMPLETE")
    status = "RUNNING" if bump("kernel_polls") < 2 else final
    print(f'{{args[2]}} has status "KernelWorkerStatus.{{status}}"')
elif args[:2] == ["kernels", "output"]:
    out = folder()
    out.mkdir(parents=True, exist_ok=True)
    slug = args[2].split("/")[1]
    (out / f"{{slug}}.log").write_text("[]")
    (out / "metrics.json").write_text(json.dumps({{"macro_auc": 0.8}}))
    print(f"Output file downloaded to {{out / 'metrics.json'}}")
else:
    print("fake kaggle: unexpected command", args, file=sys.stderr)
    sys.exit(2)
"""


def script_python() -> str | None:
    """The interpreter push_kernel.sh picks: the project's venv, else python3."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else shutil.which("python3")


@pytest.fixture(scope="module", autouse=True)
def _needs_papermill():
    python = script_python()
    probe = [python, "-c", "import nbformat, papermill"] if python else None
    if probe is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("push_kernel.sh's Python lacks papermill/nbformat")


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


def fake_env(tmp: Path, **extra: str) -> tuple[dict[str, str], Path]:
    """Environment with a fake `kaggle` first on PATH; returns it and the fake's state folder."""
    bin_dir = tmp / "fake-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "kaggle"
    fake.write_text(FAKE_KAGGLE.format(python=sys.executable))
    fake.chmod(0o755)
    state = tmp / "fake-state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "FAKE_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        FAKE_KAGGLE_STATE=str(state),
        KAGGLE_USERNAME=OWNER,
        KAGGLE_KEY=SENTINEL_KEY,
        **extra,
    )
    return env, state


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BASH, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300
    )


def calls(state: Path) -> list[list[str]]:
    log = state / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def no_sentinel_anywhere(result: subprocess.CompletedProcess, folder: Path) -> None:
    assert SENTINEL_KEY not in result.stdout + result.stderr
    for path in folder.rglob("*"):
        if path.is_file():
            assert SENTINEL_KEY.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory):
    """One dry run that builds the wheel for real; the other tests reuse that wheel."""
    tmp = tmp_path_factory.mktemp("dry")
    notebook = write_notebook(tmp / "nb" / "01_train.ipynb")
    env, state = fake_env(tmp)
    out = tmp / "out"
    result = run_script(
        "--dry-run", "--notebook", str(notebook), "--owner", OWNER, "--out", str(out),
        "-p", "epochs=3", "-p", "model=densenet121",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    wheels = sorted((out / "wheel-dataset").glob("chexvision-*.whl"))
    assert len(wheels) == 1
    kept = tmp / "wheel" / wheels[0].name
    kept.parent.mkdir()
    shutil.copy(wheels[0], kept)
    return {"out": out.resolve(), "result": result, "state": state, "notebook": notebook,
            "wheel": kept}  # fmt: skip


@pytest.fixture
def notebook(dry_run) -> Path:
    return dry_run["notebook"]


# --- the dry run ------------------------------------------------------------------------


def test_dry_run_builds_a_valid_push_folder(dry_run):
    out = dry_run["out"]
    meta = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{OWNER}/chexvision-train"
    assert meta["title"] == "CheXVision train"
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    assert meta["is_private"] is True and meta["enable_gpu"] is True
    assert meta["enable_internet"] is False
    assert meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["dataset_sources"] == ["nih-chest-xrays/data", f"{OWNER}/chexvision-wheel"]
    assert meta["competition_sources"] == [] and meta["kernel_sources"] == []
    # Kaggle resolves code_file relative to the metadata file
    code_file = out / "kernel" / meta["code_file"]
    assert code_file.is_file()

    nb = json.loads(code_file.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
    install = tags.index(["kaggle-install"])
    parameters = tags.index(["parameters"])
    assert install < parameters
    install_source = "".join(nb["cells"][install]["source"])
    assert "--no-index" in install_source and "/kaggle/input/chexvision-wheel" in install_source
    injected = nb["cells"][parameters + 1]
    assert injected["metadata"]["tags"] == ["injected-parameters"]
    source = "".join(injected["source"])
    assert "epochs = 3" in source and 'model = "densenet121"' in source
    assert nb["metadata"]["papermill"]["parameters"] == {"epochs": 3, "model": "densenet121"}
    assert nb["metadata"]["kernelspec"]["name"] == "python3"

    wheel_dir = out / "wheel-dataset"
    assert len(list(wheel_dir.glob("chexvision-*-py3-none-any.whl"))) == 1
    dataset = json.loads((wheel_dir / "dataset-metadata.json").read_text())
    assert dataset["id"] == f"{OWNER}/chexvision-wheel"
    assert len(dataset["licenses"]) == 1


def test_dry_run_needs_no_kaggle_cli_and_leaks_no_key(dry_run):
    assert calls(dry_run["state"]) == []
    assert "kernel/" in dry_run["result"].stdout  # the folder tree is printed
    no_sentinel_anywhere(dry_run["result"], dry_run["out"])


def test_the_source_notebook_is_left_untouched(dry_run):
    nb = json.loads(dry_run["notebook"].read_text())
    assert nb["cells"][2]["outputs"]  # the stale output was stripped from the copy only
    assert not any("kaggle-install" in c["metadata"].get("tags", []) for c in nb["cells"])


def test_named_notebooks_resolve_in_the_notebooks_folder(dry_run, tmp_path):
    """A copy of the repo layout: notebooks/ by name, and the evaluate kernel's extras."""
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    for name in ("push_kernel.sh", "kernel-metadata.json"):
        shutil.copy(REPO / name, repo / name)
    for name in ("01_train", "02_evaluate"):
        shutil.copy(dry_run["notebook"], repo / "notebooks" / f"{name}.ipynb")
    env, state = fake_env(tmp_path)
    # without a .venv in the copy the script falls back to python3: point that at this Python
    shim = tmp_path / "fake-bin" / "python3"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    args = ["--dry-run", "--owner", OWNER, "--wheel", str(dry_run["wheel"])]

    unknown = subprocess.run(
        [BASH, str(repo / "push_kernel.sh"), *args, "--notebook", "04_nope"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert "available in notebooks/: 01_train 02_evaluate" in unknown.stderr

    result = subprocess.run(
        [BASH, str(repo / "push_kernel.sh"), *args, "--notebook", "02_evaluate", "--internet"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    meta = json.loads((repo / "build" / "kaggle" / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{OWNER}/chexvision-evaluate"
    assert meta["title"] == "CheXVision evaluate"
    assert meta["code_file"] == "chexvision-evaluate.ipynb"
    assert meta["kernel_sources"] == [f"{OWNER}/chexvision-train"]
    assert meta["enable_internet"] is True
    assert calls(state) == []


# --- a real run against the fake CLI ----------------------------------------------------


@pytest.mark.parametrize("dataset_exists", [False, True], ids=["first-push", "new-version"])
def test_push_and_wait_runs_the_kaggle_commands_in_order(dry_run, tmp_path, dataset_exists):
    env, state = fake_env(tmp_path, FAKE_DATASET_EXISTS="1" if dataset_exists else "0")
    out = tmp_path / "out"
    result = run_script(
        "--notebook", str(dry_run["notebook"]), "--owner", OWNER, "--out", str(out),
        "--wheel", str(dry_run["wheel"]), "-p", "epochs=2",
        "--wait", "--interval", "0", "--timeout", "60",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = out.resolve()
    version = dry_run["wheel"].name.split("-")[1]
    dataset = f"{OWNER}/chexvision-wheel"
    kernel = f"{OWNER}/chexvision-train"
    upload = (
        ["datasets", "version", "-p", f"{out}/wheel-dataset", "-m", f"chexvision {version}"]
        if dataset_exists
        else ["datasets", "create", "-p", f"{out}/wheel-dataset"]
    )
    assert calls(state) == [
        ["--version"],  # the CLI starts at all
        ["datasets", "status", dataset],  # exists? -> version, else create
        [*upload, "--dir-mode", "zip"],
        ["datasets", "status", dataset],  # wait until the upload is processed
        ["kernels", "push", "-p", f"{out}/kernel"],
        ["kernels", "status", kernel],  # running
        ["kernels", "status", kernel],  # complete
        ["kernels", "output", kernel, "-p", f"{out}/output/chexvision-train", "-o"],
    ]
    uploaded = json.loads((state / "uploaded.json").read_text())
    assert sorted(uploaded) == sorted(["dataset-metadata.json", dry_run["wheel"].name])
    pushed = json.loads((state / "pushed" / "kernel-metadata.json").read_text())
    assert (state / "pushed" / pushed["code_file"]).is_file()
    assert (out / "output" / "chexvision-train" / "metrics.json").is_file()
    no_sentinel_anywhere(result, out)


def test_a_failed_kernel_exits_nonzero_with_its_log(dry_run, tmp_path):
    env, state = fake_env(tmp_path, FAKE_DATASET_EXISTS="1", FAKE_KERNEL_FINAL="ERROR")
    out = tmp_path / "out"
    result = run_script(
        "--notebook", str(dry_run["notebook"]), "--owner", OWNER, "--out", str(out),
        "--wheel", str(dry_run["wheel"]), "--wait", "--interval", "0",
        env=env,
    )  # fmt: skip
    assert result.returncode != 0
    assert "did not complete" in result.stderr
    assert calls(state)[-1][:2] == ["kernels", "output"]
    assert (out / "output" / "chexvision-train" / "chexvision-train.log").is_file()


def test_a_real_push_refuses_the_placeholder_owner(notebook, tmp_path):
    template = json.loads((REPO / "kernel-metadata.json").read_text())
    if not template["id"].startswith("your-kaggle-username/"):
        pytest.skip("kernel-metadata.json already names its owner")
    env, state = fake_env(tmp_path)
    env.pop("KAGGLE_USERNAME")
    result = run_script("--notebook", str(notebook), "--out", str(tmp_path / "out"), env=env)
    assert result.returncode != 0
    assert "--owner" in result.stderr
    assert calls(state) == []


# --- refusals ---------------------------------------------------------------------------


def test_secret_looking_parameter_is_refused(notebook, tmp_path):
    env, state = fake_env(tmp_path)
    result = run_script(
        "--notebook", str(notebook), "--dry-run", "-p", f"hf_token={SENTINEL_KEY}", env=env
    )
    assert result.returncode != 0
    assert "refusing parameter 'hf_token'" in result.stderr
    assert "Kaggle Secrets" in result.stderr
    assert SENTINEL_KEY not in result.stdout + result.stderr
    assert calls(state) == []


def test_unknown_notebook_lists_what_exists(tmp_path):
    env, _ = fake_env(tmp_path)
    result = run_script("--notebook", "99_nope", "--dry-run", env=env)
    assert result.returncode != 0
    assert "unknown notebook '99_nope'" in result.stderr
    assert "available in notebooks/" in result.stderr


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        ("epochs", "expected -p NAME=VALUE"),
        ("1st=3", "is not a Python identifier"),
    ],
)
def test_malformed_parameter_is_a_usage_error(notebook, tmp_path, parameter, message):
    env, _ = fake_env(tmp_path)
    result = run_script("--notebook", str(notebook), "--dry-run", "-p", parameter, env=env)
    assert result.returncode == 2
    assert message in result.stderr


def test_parameter_missing_from_the_notebook_names_the_ones_it_has(dry_run, tmp_path):
    env, _ = fake_env(tmp_path)
    result = run_script(
        "--notebook", str(dry_run["notebook"]), "--owner", OWNER, "--out", str(tmp_path / "out"),
        "--wheel", str(dry_run["wheel"]), "--dry-run", "-p", "epochz=3",
        env=env,
    )  # fmt: skip
    assert result.returncode != 0
    assert "has no parameter 'epochz'" in result.stderr
    assert "epochs, model, lr" in result.stderr


# --- validation catches bad metadata ----------------------------------------------------


def edit_metadata(folder: Path, **changes) -> None:
    path = folder / "kernel" / "kernel-metadata.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_validate_accepts_the_dry_run_folder(dry_run, tmp_path):
    env, _ = fake_env(tmp_path)
    result = run_script("--validate", str(dry_run["out"]), env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"machine_shape": "NvidiaTeslaP100"}, "machine_shape must be 'NvidiaTeslaT4'"),
        ({"title": "CheXVision training"}, "slugs to 'chexvision-training'"),
        ({"enable_gpu": False}, "enable_gpu must be true"),
        ({"is_private": "yes"}, "'is_private' must be a JSON bool"),
        ({"code_file": "missing.ipynb"}, "'missing.ipynb' not found"),
        ({"dataset_sources": ["nih-chest-xrays/data"]}, "must include 'jane/chexvision-wheel'"),
    ],
    ids=["p100", "title-slug", "no-gpu", "string-bool", "no-code-file", "no-wheel-dataset"],
)
def test_validate_rejects_bad_metadata(dry_run, tmp_path, changes, message):
    folder = tmp_path / "build"
    shutil.copytree(dry_run["out"], folder)
    edit_metadata(folder, **changes)
    env, _ = fake_env(tmp_path)
    result = run_script("--validate", str(folder), env=env)
    assert result.returncode == 1
    assert "validation failed" in result.stderr
    assert message in result.stderr


def test_validate_rejects_a_notebook_with_outputs(dry_run, tmp_path):
    folder = tmp_path / "build"
    shutil.copytree(dry_run["out"], folder)
    notebook = folder / "kernel" / "chexvision-train.ipynb"
    nb = json.loads(notebook.read_text())
    nb["cells"][-1]["execution_count"] = 1
    notebook.write_text(json.dumps(nb))
    env, _ = fake_env(tmp_path)
    result = run_script("--validate", str(folder), env=env)
    assert result.returncode == 1
    assert "carry outputs or execution counts" in result.stderr
