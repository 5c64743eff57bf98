"""Decompression bombs cost no memory: a 1 MB PNG of 32000 x 32000 zeros, and a JPEG whose frame
header claims 65000 x 65000, are refused from their headers in `prepare`, `chexvision predict` and
the app's upload path, and each raises the process's peak RSS by less than 100 MB.

Each measurement runs in a fresh process: the pipeline is first warmed on an ordinary 1024 px film
(imports, model, thread pools, allocator arenas), then the peak RSS is reset to the resident size
(/proc/self/clear_refs) and read (VmHWM) after the bomb; prepare's decoding happens in a worker
process, whose peak is compared with that of a worker that prepared the same folder without the
bomb. Before the header check, the PNG raised the peak by ~1.95 GB in each of them (OpenCV decoded
the whole 1 GB image, then the size was checked). Run with `-s` to see the figures.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_ROWS, write_tiny_nih
from PIL import Image

from chexvision_lib.models.registry import build_model

SIDE = 32_000
JPEG_SIDE = 65_000
LIMIT_MB = 100

# Runs in a fresh interpreter: MODE, then JSON arguments. Prints one JSON line per bomb.
CHILD = r"""
import contextlib, io, json, resource, sys
from pathlib import Path

mode, options = sys.argv[1], json.loads(sys.argv[2])


def children_peak_mb():
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB


def status_mb(field):
    # VmHWM is this address space's own peak. ru_maxrss is not: exec keeps the peak of the
    # process that forked it (here pytest's, with torch loaded), which could hide a bomb.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure(name, call):
    try:  # reset VmHWM to the current RSS (Linux >= 4.0), so the baseline is what is resident now
        Path("/proc/self/clear_refs").write_text("5")
        before = status_mb("VmRSS")
    except OSError:
        before = status_mb("VmHWM")
    children = children_peak_mb()
    message = call()
    print(json.dumps({
        "mode": mode, "bomb": name, "before_mb": before, "after_mb": status_mb("VmHWM"),
        "children_before_mb": children, "children_after_mb": children_peak_mb(),
        "message": message,
    }))


def error_of(call):
    try:
        call()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


normal, bombs = options["normal"], options["bombs"]
if mode == "load_grey":
    from chexvision_lib.data.image_io import load_grey

    load_grey(normal, 256)
    for bomb in bombs:
        measure(bomb, lambda: error_of(lambda: load_grey(bomb, 256)))
elif mode == "prepare":
    from chexvision_lib.data.prepare import prepare

    work = Path(options["work"])
    prepare(options["clean"], work / "clean", size=64, workers=1, progress=False)

    def bombed():
        folder = prepare(
            options["bombed"], work / "bombed", size=64, workers=1, skip_bad=True, progress=False
        )
        return (folder / "failed.csv").read_text()

    measure(bombs[0], bombed)
elif mode == "predict":
    from chexvision_lib.cli.main import main

    model, work = options["model"], Path(options["work"])
    main(["predict", model, normal, "--out", str(work / "warm.csv"), "--device", "cpu"])

    def predict(bomb):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            out = str(work / "bomb.csv")
            status = main(["predict", model, bomb, normal, "--out", out, "--device", "cpu"])
        return f"exit {status}: {stderr.getvalue()}"

    for bomb in bombs:
        measure(bomb, lambda: predict(bomb))
elif mode == "app":
    from chexvision_lib.models.loading import load_model
    from chexvision_lib.serving.app import ImageScorer

    scorer = ImageScorer(load_model(options["model"]))
    scorer.analyse(Path(normal).read_bytes(), "normal.png", "Abnormal")
    for bomb in bombs:
        data = Path(bomb).read_bytes()  # what the page's handler reads from Gradio's upload
        measure(bomb, lambda: error_of(lambda: scorer.analyse(data, Path(bomb).name, "Abnormal")))
"""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, side: int = SIDE) -> Path:
    """A valid 8-bit grey PNG of side x side zeros: ~1 MB on disk, side**2 bytes decoded."""
    deflate = zlib.compressobj(9)
    rows = bytes(side + 1) * 100  # filter byte 0 + a row of zeros, 100 rows at a time
    parts = [deflate.compress(rows) for _ in range(side // 100)]
    parts.append(deflate.compress(bytes(side + 1) * (side % 100)) + deflate.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )
    return path


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 64 x 64 JPEG whose SOF0 frame header is rewritten to claim width x height."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    at = 2
    while data[at + 1] != 0xC0:  # walk the marker segments to the frame header
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    normal = folder / "normal.png"
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    Image.fromarray(noise).save(normal)
    jpeg = folder / "claims_huge.jpg"
    jpeg.write_bytes(jpeg_claiming(JPEG_SIDE, JPEG_SIDE))
    model = folder / "model"
    torch.manual_seed(0)
    build_model("seresnet_small", image_size=64).save_pretrained(model)
    return {
        "png": write_png_bomb(folder / "bomb.png"),
        "jpeg": jpeg,
        "normal": normal,
        "model": model,
        "work": folder,
    }


def run_child(mode: str, options: dict) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, json.dumps(options)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for r in results:
        print(
            f"\n{mode} {Path(r['bomb']).name}: peak RSS {r['before_mb']:.0f} -> "
            f"{r['after_mb']:.0f} MB (+{r['after_mb'] - r['before_mb']:.0f} MB); children "
            f"{r['children_before_mb']:.0f} -> {r['children_after_mb']:.0f} MB"
        )
    return results


def assert_flat_and_named(result: dict, side: int) -> None:
    assert result["after_mb"] - result["before_mb"] < LIMIT_MB, result
    assert result["children_after_mb"] - result["children_before_mb"] < LIMIT_MB, result
    message = result["message"]
    assert f"{side}x{side}" in message and "144,000,000 pixels" in message, message
    assert "refused before decoding" in message, message


def test_load_grey_refuses_bombs_from_the_header(files):
    options = {"normal": str(files["normal"]), "bombs": [str(files["png"]), str(files["jpeg"])]}
    png, jpeg = run_child("load_grey", options)
    assert_flat_and_named(png, SIDE)
    assert_flat_and_named(jpeg, JPEG_SIDE)
    assert "bomb.png" in png["message"] and "claims_huge.jpg" in jpeg["message"]


def test_prepare_refuses_a_bomb_without_decoding_it(files, tmp_path: Path):
    clean = write_tiny_nih(tmp_path / "clean", TINY_ROWS, test_patients={5, 6})
    bombed = write_tiny_nih(tmp_path / "bombed", TINY_ROWS, test_patients={5, 6})
    target = bombed / "images_001" / "images" / TINY_ROWS[2][0]
    target.write_bytes(files["png"].read_bytes())
    options = {
        "normal": str(files["normal"]),
        "bombs": [str(target)],
        "clean": str(clean),
        "bombed": str(bombed),
        "work": str(tmp_path),
    }
    (result,) = run_child("prepare", options)
    assert_flat_and_named(result, SIDE)  # failed.csv names the file, its size and the limit
    assert TINY_ROWS[2][0] in result["message"]


def test_cli_predict_refuses_bombs_and_scores_the_rest(files):
    options = {
        "normal": str(files["normal"]),
        "bombs": [str(files["png"]), str(files["jpeg"])],
        "model": str(files["model"]),
        "work": str(files["work"]),
    }
    for result in run_child("predict", options):
        side = SIDE if result["bomb"].endswith(".png") else JPEG_SIDE
        assert_flat_and_named(result, side)
        assert result["message"].startswith("exit 2: chexvision predict: error: 1 of 2 files")
        assert "1 too large" in result["message"]


def test_app_upload_path_refuses_bombs(files):
    options = {
        "normal": str(files["normal"]),
        "bombs": [str(files["png"]), str(files["jpeg"])],
        "model": str(files["model"]),
    }
    png, jpeg = run_child("app", options)
    assert_flat_and_named(png, SIDE)
    assert_flat_and_named(jpeg, JPEG_SIDE)
    assert png["message"].startswith("ImageDecodeError: bomb.png: image is 32000x32000")
