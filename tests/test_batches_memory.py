"""`--cache-on-device` puts the training split in device memory without a second host copy.

The peak is measured in a fresh subprocess over a synthetic cache of a few hundred MB. The cache's
own pages are mapped first (they are the file's page cache, shared and reclaimable, and every
reader of the memmap has them); the peak resident memory is then reset, so what the measurement
sees is the private memory that building the resident loader adds. On device "cpu" the "device
copy" is itself host memory, so one copy of the split is the floor; before chunked copying the
build held two (the gathered array and numpy's temporary for the fancy index).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from chexvision_lib.core.labels import OUTPUTS
from chexvision_lib.data import batches
from chexvision_lib.data.batches import BatchLoader, CachedSplit, copy_to_device

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak memory"
)

SIZE = 256
IMAGES = 4_000  # 262 MB of pixels at 256 px
VAL_EVERY = 10  # every 10th row is val: the train split's rows are not one contiguous block


def write_cache(folder: Path, n: int, size: int) -> Path:
    """A cache in open_cache's format (index.csv, images.u8, cache.json), written with numpy."""
    folder.mkdir(parents=True)
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="w+", shape=(n, size, size))
    ramp = np.arange(size * size, dtype=np.uint32).reshape(size, size)
    for row in range(n):  # every row different, so a misplaced row shows
        images[row] = ((ramp + row * 7) % 251).astype(np.uint8)
    images.flush()
    del images
    rows = np.arange(n)
    table = pd.DataFrame(
        {
            "image_id": [f"{row:08d}_000.png" for row in rows],
            "patient": [f"{row:05d}" for row in rows],
            "age": 50,
            "sex": "M",
            "view": "PA",
            "split": np.where(rows % VAL_EVERY == 0, "val", "train"),
            "ok": True,
        }
    )
    for k, name in enumerate(OUTPUTS):
        table[name] = (rows + k) % 3 == 0
    table.to_csv(folder / "index.csv", index=False)
    (folder / "cache.json").write_text(json.dumps({"shape": [n, size, size], "size": size}))
    return folder


MEASURE = r"""
import json, sys
import numpy as np, torch

def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields

cache, module_file = sys.argv[1], sys.argv[2]
if module_file == "-":
    from chexvision_lib.data import batches
else:  # another version of batches.py, e.g. the one before chunked copying
    import importlib.util
    spec = importlib.util.spec_from_file_location("other_batches", module_file)
    batches = sys.modules["other_batches"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batches)
torch.set_num_threads(1)
data = batches.CachedSplit(cache, "train")
for start in range(0, data.images.shape[0], 256):  # map every page of the cache file
    int(data.images[start : start + 256].max())
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset VmHWM to the current resident size
before = status()
loader = batches.BatchLoader(data, 32, torch.device("cpu"), shuffle=True, on_device=True)
after = status()
split_bytes = len(data) * data.size**2
print(json.dumps({
    "split_bytes": split_bytes,
    "peak_extra": after["VmHWM"] - before["VmRSS"],
    "resident_bytes": loader.resident.numel(),
    "before": before,
    "after": after,
}))
"""


def measure(cache: Path, module_file: str = "-") -> dict:
    """Figures of building an on_device loader in a fresh interpreter (peak RSS, in bytes)."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(cache), module_file],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(label: str, figures: dict) -> str:
    mb = 2**20
    return (
        f"{label}: split {figures['split_bytes'] / mb:.0f} MB, peak extra "
        f"{figures['peak_extra'] / mb:.0f} MB "
        f"({figures['peak_extra'] / figures['split_bytes']:.2f} copies)"
    )


@pytest.fixture(scope="module")
def big_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cache(tmp_path_factory.mktemp("memory") / "cache", IMAGES, SIZE)


def test_resident_split_costs_one_copy_of_host_memory(big_cache: Path) -> None:
    figures = measure(big_cache)
    print(describe("chunked copy", figures))
    assert figures["resident_bytes"] == figures["split_bytes"] > 200 * 2**20
    # The cache file's pages stayed mapped, so the baseline did not shrink under the measure.
    assert figures["after"]["RssFile"] >= figures["before"]["RssFile"] - 16 * 2**20
    # One copy (the resident tensor itself, on device "cpu") plus at most one chunk.
    assert figures["peak_extra"] <= 1.3 * figures["split_bytes"]
    assert figures["peak_extra"] >= 0.9 * figures["split_bytes"]  # the copy was measured at all


def test_resident_batches_equal_streamed_batches_across_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = write_cache(tmp_path / "cache", 53, 32)
    # 5 rows a chunk: 10 full chunks and a partial one over the 47 train rows.
    monkeypatch.setattr(batches, "RESIDENT_CHUNK_BYTES", 5 * 32 * 32 + 7)
    data = CachedSplit(cache, "train")
    assert len(data) == 47
    resident = copy_to_device(data, torch.device("cpu"))
    assert torch.equal(resident, torch.from_numpy(data.read(np.arange(len(data)))))
    # Through the staging buffer, as off the CPU (pinned there for CUDA): the same tensor.
    assert torch.equal(copy_to_device(data, torch.device("cpu"), staged=True), resident)
    assert torch.equal(resident[3], torch.from_numpy(np.array(data.images[data.rows[3]])))

    device = torch.device("cpu")
    streamed = BatchLoader(data, 8, device, shuffle=True, seed=4, drop_last=True)
    on_device = BatchLoader(data, 8, device, shuffle=True, seed=4, drop_last=True, on_device=True)
    pairs = list(zip(streamed, on_device, strict=True))
    assert len(pairs) == 47 // 8
    for (pixels_a, labels_a, index_a), (pixels_b, labels_b, index_b) in pairs:
        assert torch.equal(pixels_a, pixels_b)
        assert torch.equal(labels_a, labels_b)
        assert torch.equal(index_a, index_b)


def test_read_into_matches_read_in_any_order(tmp_path: Path) -> None:
    data = CachedSplit(write_cache(tmp_path / "cache", 30, 16), "train")
    positions = np.array([5, 0, 9, 9, 2, 20])  # unsorted, with a repeat
    out = np.zeros((len(positions), 16, 16), dtype=np.uint8)
    assert data.read_into(positions, out) is out
    expected = np.stack([np.asarray(data.images[data.rows[p]]) for p in positions])
    assert np.array_equal(out, expected)
    assert np.array_equal(data.read(np.arange(6)), data.images[data.rows[:6]])
