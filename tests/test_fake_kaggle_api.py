"""The fake Kaggle API (tests/fake_kaggle_api.py) against the real kaggle client and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("kagglesdk")
requests = pytest.importorskip("requests")

from fake_kaggle_api import (  # noqa: E402 (after the importorskip)
    REDACTED,
    FakeKaggle,
    FakeKaggleUnavailable,
    fake_kaggle_fixture,
    fake_kaggle_or_skip,
)

fake_kaggle = fake_kaggle_fixture()

OWNER = "fake-owner"
DATASET = f"{OWNER}/chexvision-weights"
KERNEL = f"{OWNER}/chexvision-train"
MISSING = "someone-else/not-a-dataset"
KAGGLE_CLI = Path(sys.executable).with_name("kaggle")


def dataset_folder(root: Path, payload: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    meta = {"id": DATASET, "title": "CheXVision weights", "licenses": [{"name": "CC0-1.0"}]}
    (root / "dataset-metadata.json").write_text(json.dumps(meta))
    (root / "weights.bin").write_bytes(payload)
    return root


def kernel_folder(root: Path, sources: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "id": KERNEL,
        "title": "CheXVision train",
        "code_file": "train.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_internet": False,
        "machine_shape": "NvidiaTeslaT4",
        "dataset_sources": sources,
    }
    (root / "kernel-metadata.json").write_text(json.dumps(meta))
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": ["print('hi')\n", "x = 1"],
                "outputs": [{"output_type": "stream", "name": "stdout", "text": "stale"}],
                "execution_count": 1,
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "train.ipynb").write_text(json.dumps(notebook))
    return root


def test_authenticate_uses_the_fake_and_errors_are_http_errors(fake_kaggle: FakeKaggle) -> None:
    api = fake_kaggle.client_api()
    assert api.config_values["username"] == OWNER
    assert fake_kaggle.requests == []  # a legacy key authenticates without any call

    with pytest.raises(requests.HTTPError) as raised:
        api.dataset_status(DATASET)
    assert raised.value.response.status_code == 404
    assert str(raised.value) == f"Dataset {DATASET} not found"
    assert fake_kaggle.requests == [
        ("GetDatasetStatus", {"ownerSlug": OWNER, "datasetSlug": "chexvision-weights"})
    ]
    assert fake_kaggle.auth_schemes == ["basic"]
    assert fake_kaggle.auth_usernames == {OWNER}
    assert fake_kaggle.key not in repr((fake_kaggle.requests, fake_kaggle.http_log))

    env = fake_kaggle.env()
    assert env["KAGGLE_API_ENVIRONMENT"] == "LOCALHOST"
    assert env["KAGGLE_USERNAME"] == OWNER and env["KAGGLE_KEY"] == fake_kaggle.key
    assert json.loads((Path(env["KAGGLE_CONFIG_DIR"]) / "kaggle.json").read_text())["key"]
    assert "localhost" in env["NO_PROXY"]


def test_bearer_token_is_introspected_and_never_stored(
    fake_kaggle: FakeKaggle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", "secret-token-123")
    api = fake_kaggle.client_api()
    assert api.config_values["auth_method"] == "ACCESS_TOKEN"
    fake_kaggle.add_kernel(KERNEL)
    api.kernels_status(KERNEL)
    assert fake_kaggle.methods() == ["IntrospectToken", "GetKernelSessionStatus"]
    assert fake_kaggle.bodies("IntrospectToken") == [{"token": REDACTED}]
    assert fake_kaggle.auth_schemes[-1] == "bearer"
    state = repr((fake_kaggle.requests, fake_kaggle.http_log, fake_kaggle.auth_schemes))
    assert "secret-token-123" not in state


def test_dataset_create_then_version_waits_for_processing(
    fake_kaggle: FakeKaggle, tmp_path: Path
) -> None:
    api = fake_kaggle.client_api()
    folder = dataset_folder(tmp_path / "ds", b"first weights")
    fake_kaggle.dataset_processing_polls = 2

    created = api.dataset_create_new(str(folder), quiet=True)
    assert (created.status, created.error, created.ref) == ("ok", "", DATASET)
    assert fake_kaggle.methods() == ["GetDatasetStatus", "StartBlobUpload", "CreateDataset"]
    polls = [json.loads(api.dataset_status(DATASET, format="json")) for _ in range(3)]
    assert polls == [
        {"status": "blobs_received", "current_version_number": 0},
        {"status": "blobs_received", "current_version_number": 0},
        {"status": "ready", "current_version_number": 1},
    ]

    (folder / "weights.bin").write_bytes(b"second weights")
    versioned = api.dataset_create_version(str(folder), "retrained", quiet=True)
    assert versioned.status == "ok"
    assert api.dataset_status(DATASET) == "blobs_received"
    assert json.loads(api.dataset_status(DATASET, format="json(current_version_number)")) == {
        "current_version_number": 1
    }
    assert fake_kaggle.methods()[-1:] == ["GetDataset"]  # that format does not poll the status
    assert api.dataset_status(DATASET) == "blobs_received"
    assert api.dataset_status(DATASET) == "ready"
    assert json.loads(api.dataset_status(DATASET, format="json"))["current_version_number"] == 2

    stored = fake_kaggle.datasets[DATASET]
    assert [v["files"] for v in stored["versions"]] == [
        {"weights.bin": b"first weights"},
        {"weights.bin": b"second weights"},
    ]
    assert [v["notes"] for v in stored["versions"]] == [None, "retrained"]
    assert stored["files"] == {"weights.bin": b"second weights"}
    assert stored["status"] == "ready" and stored["private"] is True
    listed = api.dataset_list_files(DATASET).files
    assert [(f.name, f.total_bytes) for f in listed] == [("weights.bin", 14)]
    assert fake_kaggle.unhandled == []

    again = api.dataset_create_new(str(folder), quiet=True)  # the slug now exists
    assert again.status == "error" and "already in use" in again.error


def test_kernel_push_status_and_output(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    api = fake_kaggle.client_api()
    fake_kaggle.reject_sources = [MISSING]
    folder = kernel_folder(tmp_path / "kernel", [DATASET, MISSING])

    pushed = api.kernels_push(str(folder))
    assert pushed.error == ""
    assert pushed.invalid_dataset_sources == [MISSING]
    assert pushed.version_number == 1 and pushed.ref == KERNEL
    assert pushed.url == f"https://www.kaggle.com/code/{KERNEL}"

    saved = fake_kaggle.saved_kernel(KERNEL)
    assert saved.dataset_data_sources == [DATASET, MISSING]  # what the client sent
    assert fake_kaggle.kernels[KERNEL]["dataset_sources"] == [DATASET]  # what "Kaggle" kept
    assert (saved.enable_gpu, saved.enable_internet) == (True, False)
    assert saved.machine_shape == "NvidiaTeslaT4" and saved.is_private is True
    assert (saved.kernel_type, saved.language, saved.new_title) == (
        "notebook",
        "python",
        "CheXVision train",
    )
    cell = json.loads(saved.text)["cells"][0]
    assert cell["source"] == "print('hi')\nx = 1" and cell["outputs"] == []
    raw = fake_kaggle.kernels[KERNEL]["versions"][0]
    assert raw["datasetDataSources"] == [DATASET, MISSING] and raw["enableGpu"] is True

    fake_kaggle.kernel_statuses = ["running", "running", "error"]
    fake_kaggle.failure_message = "CUDA out of memory"
    answers = [api.kernels_status(KERNEL) for _ in range(4)]
    assert [a.status.name.lower() for a in answers] == ["running", "running", "error", "error"]
    assert [a.failure_message for a in answers] == ["", ""] + ["CUDA out of memory"] * 2

    assert api.kernels_push(str(folder)).version_number == 2  # a push restarts the script
    assert api.kernels_status(KERNEL).status.name == "RUNNING"

    fake_kaggle.kernel_output_files = {"metrics.json": b'{"auc": 0.8}', "run/model.bin": b"\0\1"}
    fake_kaggle.kernel_log = '[{"stream_name": "stdout", "time": 1.0, "data": "done"}]'
    out = tmp_path / "out"
    paths, token = api.kernels_output(KERNEL, str(out))
    assert token == ""
    assert sorted(Path(p).relative_to(out).as_posix() for p in paths) == [
        "chexvision-train.log",
        "metrics.json",
        "run/model.bin",
    ]
    assert (out / "metrics.json").read_bytes() == b'{"auc": 0.8}'
    assert (out / "run" / "model.bin").read_bytes() == b"\0\1"
    assert "done" in (out / "chexvision-train.log").read_text()
    assert fake_kaggle.unhandled == []


def test_kernel_output_pages(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    api = fake_kaggle.client_api()
    fake_kaggle.add_kernel(KERNEL)
    fake_kaggle.kernel_output_files = {f"f{i:02d}.txt": str(i).encode() for i in range(5)}
    paths, _ = api.kernels_output(KERNEL, str(tmp_path), page_size=2)
    assert sorted(Path(p).name for p in paths) == [f"f{i:02d}.txt" for i in range(5)]
    assert len(fake_kaggle.bodies("ListKernelSessionOutput")) == 3


def test_scripted_errors(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    api = fake_kaggle.client_api()
    folder = kernel_folder(tmp_path / "kernel", [])

    fake_kaggle.save_kernel_error = "Notebook is too large"
    response = api.kernels_push(str(folder))
    assert response.error == "Notebook is too large" and response.version_number == 0
    assert KERNEL not in fake_kaggle.kernels
    fake_kaggle.save_kernel_error = None

    fake_kaggle.fail_method = ("SaveKernel", 403, "Permission denied", 1)
    with pytest.raises(requests.HTTPError) as raised:
        api.kernels_push(str(folder))
    assert raised.value.response.status_code == 403 and str(raised.value) == "Permission denied"
    assert api.kernels_push(str(folder)).version_number == 1  # failed only once

    fake_kaggle.fail_method = ("GetKernelSessionStatus", 403, "Permission denied")
    with pytest.raises(ValueError, match="Permission 'kernels.get' was denied"):
        api.kernels_status(KERNEL)  # the client rewrites 401/403 here

    fake_kaggle.fail_method = None
    with pytest.raises(ValueError, match="Cannot access kernel 'fake-owner/never-pushed'"):
        api.kernels_status(f"{OWNER}/never-pushed")  # Kaggle answers 403 for unknown kernels

    fake_kaggle.kernel_statuses = ["finished"]  # not a KernelWorkerStatus: the fake says 500
    with pytest.raises(requests.HTTPError, match="is not one of") as raised:
        api.kernels_status(KERNEL)
    assert raised.value.response.status_code == 500


def test_unknown_route_is_recorded(fake_kaggle: FakeKaggle) -> None:
    url = "http://localhost/api/v1/models.ModelApiService/GetModel"
    answer = requests.post(url, json={"ownerSlug": OWNER}, timeout=10)
    assert answer.status_code == 404 and answer.json()["code"] == 404
    assert fake_kaggle.unhandled == ["models.ModelApiService/GetModel"]
    assert fake_kaggle.auth_schemes == [None]


def test_port_in_use_and_safety_limits(fake_kaggle: FakeKaggle) -> None:
    with pytest.raises(FakeKaggleUnavailable, match="cannot bind 127.0.0.1:80"):
        FakeKaggle().start()
    fake_kaggle.stop()
    assert fake_kaggle.stop_reason == "exit" and not fake_kaggle.running

    with fake_kaggle_or_skip(max_requests=2) as limited:
        for _ in range(3):
            last = requests.get("http://localhost/", timeout=10)
        assert last.status_code == 503
        deadline = time.monotonic() + 5
        while limited.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert limited.stop_reason == "max_requests"
        with pytest.raises(requests.ConnectionError):
            requests.get("http://localhost/", timeout=10)

    with fake_kaggle_or_skip(timeout_s=0.2) as timed:
        deadline = time.monotonic() + 5
        while timed.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert timed.stop_reason == "timeout"


def test_real_cli_in_a_subprocess(fake_kaggle: FakeKaggle, tmp_path: Path) -> None:
    if not KAGGLE_CLI.exists():
        pytest.skip(f"no kaggle CLI next to {sys.executable}")
    env = fake_kaggle.subprocess_env()

    def kaggle(*args: str) -> str:
        done = subprocess.run(
            [str(KAGGLE_CLI), *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    folder = dataset_folder(tmp_path / "ds", b"v1 bytes")
    out = kaggle("datasets", "create", "-p", str(folder), "-q")
    assert "Your private Dataset is being created" in out
    (folder / "weights.bin").write_bytes(b"v2 bytes!")
    out = kaggle("datasets", "version", "-p", str(folder), "-m", "second", "-q")
    assert "Dataset version is being created" in out
    status = json.loads(kaggle("datasets", "status", DATASET, "--format", "json"))
    assert status == {"status": "ready", "current_version_number": 2}
    versions = fake_kaggle.datasets[DATASET]["versions"]
    assert [v["files"]["weights.bin"] for v in versions] == [b"v1 bytes", b"v2 bytes!"]

    fake_kaggle.reject_sources = [MISSING]
    out = kaggle("kernels", "push", "-p", str(kernel_folder(tmp_path / "k", [DATASET, MISSING])))
    assert (
        "The following are not valid dataset sources and could not be added to the kernel: "
        f"['{MISSING}']" in out
    )
    assert "Kernel version 1 successfully pushed" in out
    assert fake_kaggle.saved_kernel(KERNEL).enable_internet is False

    fake_kaggle.kernel_statuses = ["error"]
    fake_kaggle.failure_message = "boom"
    out = kaggle("kernels", "status", KERNEL)
    assert f'{KERNEL} has status "KernelWorkerStatus.ERROR"' in out
    assert 'Failure message: "boom"' in out

    fake_kaggle.kernel_output_files = {"result.txt": b"42"}
    kaggle("kernels", "output", KERNEL, "-p", str(tmp_path / "out"), "-q")
    assert (tmp_path / "out" / "result.txt").read_bytes() == b"42"

    assert set(fake_kaggle.auth_schemes) == {"basic"}
    assert fake_kaggle.key not in repr((fake_kaggle.requests, fake_kaggle.http_log))
    assert fake_kaggle.unhandled == []
