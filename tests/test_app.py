"""The demo page, driven over HTTP by gradio_client, and the Hugging Face Space folder writer.

The page is served on a free loopback port with a tiny randomly initialised model saved to a
temp folder; its numbers must equal `predict_images` (what `chexvision predict` prints) for the
same file.
"""

from __future__ import annotations

import argparse
import io
import py_compile
import runpy
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REALDATA
from PIL import Image

from chexvision_lib.cli import serve
from chexvision_lib.cli.main import build_parser
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, NO_FINDING, OUTPUTS
from chexvision_lib.core.predictions import prob_column
from chexvision_lib.data.image_io import load_grey
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_images
from chexvision_lib.models.registry import build_model
from chexvision_lib.serving import space
from chexvision_lib.serving.app import (
    API_NAME,
    GRADIO_VERSION,
    findings_table,
    is_flagged,
    probability_chart,
    stored_thresholds,
    synthetic_examples,
)

IMAGE_SIZE = 64
# One threshold left out (Pneumonia) to show the page copes with outputs that have none.
THRESHOLDS = [None if name == "Pneumonia" else 0.3 + 0.02 * i for i, name in enumerate(OUTPUTS)]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
STATUS, SUMMARY, MODEL_INPUT, CAM, CHART, TABLE, RECORD = range(7)  # the page's outputs


# ----------------------------------------------------------------------------------------------
# Fixtures: a tiny model folder, images of several kinds, and the page served on loopback.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=IMAGE_SIZE)
    model.thresholds = THRESHOLDS
    folder = tmp_path_factory.mktemp("app") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples-cache")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> list[Path]:
    """A synthetic example (8-bit grey PNG), an RGB JPEG, a 16-bit PNG and, when the shared
    folder is here, real NIH files (grey and RGBA): each decoding path of `load_grey`."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = folder / "colour photo.jpg"
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(rgb, quality=90)
    sixteen_bit = folder / "sixteen_bit.png"
    Image.fromarray(rng.integers(0, 4096, (90, 120), dtype=np.uint16)).save(sixteen_bit)
    chosen = [synthetic_examples(examples_dir)[1].path, rgb, sixteen_bit]
    real = REALDATA / "nih" / "images"
    chosen += [p for p in (real / "00000001_000.png", real / "00000347_000.png") if p.is_file()]
    return chosen


@pytest.fixture(scope="module")
def client(model_dir: Path, examples_dir: Path) -> Iterator[Any]:
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    from chexvision_lib.serving.app import launch

    app = launch(
        model_dir,
        host="127.0.0.1",
        port=_free_loopback_port(),
        prevent_thread_lock=True,
        examples_dir=examples_dir,
    )
    try:
        yield gradio_client.Client(app.local_url, verbose=False)
    finally:
        app.close()


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def analyse(client: Any, path: Path, cam_output: str = ABNORMAL) -> tuple[Any, ...]:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), cam_output, api_name=f"/{API_NAME}")


# ----------------------------------------------------------------------------------------------
# The page over HTTP
# ----------------------------------------------------------------------------------------------
def test_page_gives_the_numbers_of_chexvision_predict(
    client: Any, model_dir: Path, images: list[Path]
) -> None:
    model = load_model(model_dir)
    expected = predict_images(model, images)
    for row, path in zip(expected.itertuples(index=False), images, strict=True):
        outputs = analyse(client, path)
        record = outputs[RECORD]
        for name in OUTPUTS:
            column = prob_column(name)
            assert record[column] == pytest.approx(getattr(row, column), abs=1e-6), (path, name)
        assert record["abnormal"] == bool(row.abnormal)
        assert record["abnormal_threshold"] == pytest.approx(THRESHOLDS[-1])
        assert record["disclaimer"] == DISCLAIMER
        assert path.name in outputs[STATUS]
        # The headline shows the abnormal probability and the stored threshold.
        assert f"{record[prob_column(ABNORMAL)]:.3f}" in outputs[SUMMARY]
        assert f"{THRESHOLDS[-1]:.3f}" in outputs[SUMMARY]
        table = outputs[TABLE]["data"]
        assert sorted(r[0] for r in table) == sorted(FINDINGS)
        shown = [float(r[1]) for r in table]
        assert shown == sorted(shown, reverse=True)


def test_page_shows_model_input_gradcam_and_chart_as_images(
    client: Any, images: list[Path]
) -> None:
    outputs = analyse(client, images[0], cam_output="Effusion")
    assert "Grad-CAM shows **Effusion**" in outputs[STATUS]
    with Image.open(outputs[MODEL_INPUT]) as seen:
        # Exactly the pixels `load_grey` gives (PNG output is lossless).
        np.testing.assert_array_equal(
            np.asarray(seen.convert("L")), load_grey(images[0], IMAGE_SIZE)
        )
    with Image.open(outputs[CAM]) as cam:
        assert cam.size == (IMAGE_SIZE, IMAGE_SIZE)
        pixels = np.asarray(cam.convert("RGB"))
        assert pixels.std(axis=2).max() > 0  # coloured, not the grey image alone
    with Image.open(outputs[CHART]) as chart:
        assert chart.width > 300 and chart.height > 200


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG signature, IHDR for an 8-bit grey image of that size, and IEND: no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "notes.png": (lambda: b"Patient notes, not an image\n" * 20, "not a readable image"),
    "one_pixel.png": (lambda: _png_bytes(1, 1), "1x1"),
    "huge.png": (lambda: _png_header_claiming(13_000, 13_000), "13000x13000"),
    "truncated.png": (lambda: _png_bytes(64, 64)[:80], "not a readable image"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_gets_a_message_and_the_server_keeps_serving(
    client: Any, images: list[Path], tmp_path: Path, name: str
) -> None:
    make_bytes, reason = BAD_FILES[name]
    bad = tmp_path / name
    bad.write_bytes(make_bytes())
    outputs = analyse(client, bad)
    assert "Could not use this file" in outputs[STATUS]
    assert name in outputs[STATUS] and reason in outputs[STATUS]
    assert "Traceback" not in outputs[STATUS] and "BytesIO" not in outputs[STATUS]
    assert outputs[CAM] is None and outputs[RECORD] == {} and outputs[TABLE]["data"] == []
    # The next good request is answered as usual.
    assert 0.0 <= analyse(client, images[0])[RECORD][prob_column(ABNORMAL)] <= 1.0


# ----------------------------------------------------------------------------------------------
# What the page shows, without a server
# ----------------------------------------------------------------------------------------------
def test_findings_table_and_chart_sort_and_mark_thresholds() -> None:
    probabilities = np.linspace(0.05, 0.95, len(OUTPUTS))
    thresholds = dict(zip(OUTPUTS, THRESHOLDS, strict=True))
    table = findings_table(probabilities, thresholds)
    assert list(table["Finding"]) == list(reversed(FINDINGS))
    pneumonia = table.set_index("Finding").loc["Pneumonia"]
    assert pneumonia["Threshold"] == "—" and pneumonia["At or above threshold"] == "—"
    assert probability_chart(probabilities, thresholds).shape[2] == 3
    # A binary-head model has no findings: empty table, no chart.
    binary = np.full(len(OUTPUTS), np.nan)
    binary[-1] = 0.7
    assert findings_table(binary, thresholds).empty
    assert probability_chart(binary, thresholds) is None


def test_thresholds_follow_predict_rules() -> None:
    model = build_model("seresnet_small", image_size=IMAGE_SIZE)
    assert set(stored_thresholds(model).values()) == {None}
    assert is_flagged(0.5, None) and not is_flagged(0.49, None)  # predict_images' 0.5 fallback
    assert is_flagged(0.3, 0.3) and not is_flagged(0.29, 0.3)


def test_examples_are_drawn_once_with_their_labels(examples_dir: Path) -> None:
    examples = synthetic_examples(examples_dir)
    again = synthetic_examples(examples_dir)
    assert examples == again and len(examples) == 4
    assert NO_FINDING in examples[0].label
    for example in examples:
        assert example.label.startswith("Synthetic film")
        assert load_grey(example.path).shape == (256, 256)


# ----------------------------------------------------------------------------------------------
# Command line and Space folder
# ----------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    return build_parser()


def test_cli_registers_app_and_space() -> None:
    args = _parser().parse_args(["app", "runs/demo/run", "--port", "7861"])
    assert (args.func, args.host, args.port, args.revision) == (
        serve.run_app,
        "127.0.0.1",
        7861,
        None,
    )
    args = _parser().parse_args(
        ["space", "model", "out", "--repo-id", "me/chexvision", "--revision", COMMIT]
    )
    assert args.func is serve.run_space and args.package is None
    with pytest.raises(SystemExit):  # no --revision: refused by the parser
        _parser().parse_args(["space", "model", "out", "--repo-id", "me/chexvision"])


def test_space_folder_pins_model_and_gradio(model_dir: Path, tmp_path: Path) -> None:
    out = space.write_space_folder(
        model_dir, tmp_path / "space", repo_id="me/chexvision-demo", revision=COMMIT
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(space.SPACE_FILES)
    readme = (out / "README.md").read_text()
    front_matter = readme.split("---\n")[1]
    for line in (
        "sdk: gradio",
        f"sdk_version: {GRADIO_VERSION}",
        "app_file: app.py",
        "pinned: false",
        "license: mit",
        "models:\n  - me/chexvision-demo",
    ):
        assert line in front_matter
    assert DISCLAIMER in readme and COMMIT in readme
    app_py = (out / "app.py").read_text()
    sha256 = space.file_sha256(model_dir / "model.safetensors")
    assert f'MODEL_REVISION = "{COMMIT}"' in app_py and sha256 in app_py
    assert "build_app(" in app_py
    py_compile.compile(str(out / "app.py"), doraise=True)
    requirements = (out / "requirements.txt").read_text().splitlines()
    active = [line for line in requirements if line and not line.startswith("#")]
    assert active == [f"gradio=={GRADIO_VERSION}"]  # the chexvision line is left to the user

    pinned = space.write_space_folder(
        model_dir,
        tmp_path / "pinned",
        repo_id="me/chexvision-demo",
        revision=COMMIT,
        package="chexvision==0.1.0",
    )
    requirements = (pinned / "requirements.txt").read_text()
    assert "\nchexvision==0.1.0\n" in requirements
    assert "Before pushing" not in (pinned / "README.md").read_text()


@pytest.mark.parametrize("revision", [None, "", "main", "v1.0", COMMIT[:12], COMMIT.upper()])
def test_space_refuses_a_revision_that_is_not_a_commit(
    model_dir: Path, tmp_path: Path, revision: str | None
) -> None:
    with pytest.raises(ValueError, match="revision"):
        space.write_space_folder(model_dir, tmp_path / "s", repo_id="me/m", revision=revision)
    assert not (tmp_path / "s").exists()


def test_space_refuses_unpinned_package_and_used_folder(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not pinned"):
        space.write_space_folder(
            model_dir, tmp_path / "s", repo_id="me/m", revision=COMMIT, package="chexvision"
        )
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        space.write_space_folder(model_dir, used, repo_id="me/m", revision=COMMIT)


def test_pinned_model_loads_only_the_tested_weights(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    import chexvision_lib.models.loading

    downloads: list[tuple[str, str, str]] = []

    def fake_download(repo_id: str, filename: str, revision: str) -> str:
        downloads.append((repo_id, filename, revision))
        return str(model_dir / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(
        chexvision_lib.models.loading, "load_model", lambda *a, **k: load_model(model_dir)
    )
    sha256 = space.file_sha256(model_dir / "model.safetensors")
    model = space.load_pinned_model("me/m", COMMIT, sha256)
    assert model.thresholds == pytest.approx(THRESHOLDS)
    assert downloads == [("me/m", "model.safetensors", COMMIT)]
    with pytest.raises(ValueError, match="sha256"):
        space.load_pinned_model("me/m", COMMIT, "0" * 64)


def test_space_app_py_builds_the_page_from_the_pinned_model(
    model_dir: Path, examples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gradio = pytest.importorskip("gradio")
    import huggingface_hub

    import chexvision_lib.models.loading

    out = space.write_space_folder(model_dir, tmp_path / "space", repo_id="me/m", revision=COMMIT)
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo_id, filename, revision: model_dir / filename
    )
    monkeypatch.setattr(
        chexvision_lib.models.loading, "load_model", lambda *a, **k: load_model(model_dir)
    )
    monkeypatch.setenv("CHEXVISION_CACHE", str(examples_dir))
    namespace = runpy.run_path(str(out / "app.py"), run_name="space_app")  # not __main__: no serve
    assert isinstance(namespace["demo"], gradio.Blocks)
    assert namespace["model"].thresholds == pytest.approx(THRESHOLDS)
