import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, realdata, write_tiny_nih
from PIL import Image

from chexvision_lib.data.batches import BatchLoader, CachedSplit
from chexvision_lib.data.cache import CHUNK, IncompleteCacheError, open_cache, prepare_cache
from chexvision_lib.data.hub_parquet import build_hub_index
from chexvision_lib.data.image_io import ImageDecodeError, load_grey
from chexvision_lib.data.nih_index import build_nih_index
from chexvision_lib.data.prepare import prepare


def test_prepare_writes_every_image_once(tiny_nih: Path, tmp_path: Path):
    folder = prepare(tiny_nih, tmp_path / "cache", size=32, workers=2, progress=False)
    table, images, info = open_cache(folder)
    assert images.shape == (8, 32, 32) and info["n_failed"] == 0
    for row, path in enumerate(table["path"]):
        assert np.array_equal(images[row], load_grey(path, 32))
    assert info["source"]["sha256"]["train_val_list"]
    # A second call on a complete cache returns at once; other settings are refused.
    assert prepare(tiny_nih, folder, size=32, progress=False) == folder
    with pytest.raises(ValueError, match="other settings"):
        prepare(tiny_nih, folder, size=48, progress=False)


def test_unreadable_image_errors_or_is_counted(tiny_nih: Path, tmp_path: Path):
    bad = tiny_nih / "images_001" / "images" / "00000003_000.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    with pytest.raises(ImageDecodeError, match="00000003_000.png"):
        prepare(tiny_nih, tmp_path / "a", size=32, workers=1, progress=False)
    folder = prepare(tiny_nih, tmp_path / "b", size=32, workers=1, skip_bad=True, progress=False)
    table, _, info = open_cache(folder)
    assert info["n_failed"] == 1
    assert not table.set_index("image_id").loc["00000003_000.png", "ok"]
    assert "00000003_000.png" in (folder / "failed.csv").read_text()
    assert "00000003_000.png" not in set(CachedSplit(folder, "train").table["image_id"])


def _big_nih(root: Path, n: int) -> Path:
    rows = [
        (f"{k + 1:08d}_000.png", "No Finding" if k % 2 else "Mass", k + 1, "PA") for k in range(n)
    ]
    write_tiny_nih(root, rows, test_patients=set(range(1, n // 4)), size=8)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1024, 1024), dtype=np.uint8)
    for k, (name, *_rest) in enumerate(rows):  # real-size PNGs so decoding takes a while
        Image.fromarray(np.roll(base, k, axis=1)).save(
            root / "images_001" / "images" / name, compress_level=1
        )
    return root


# When the kill lands, by the number of images marked done (of 240, chunks of CHUNK).
KILL_POINTS = {
    "first-chunk": lambda done: done == 0,
    "middle": lambda done: 10 < done < 200,
    "last-chunk": lambda done: 240 - CHUNK <= done < 240,
}


@pytest.fixture(scope="module")
def big_nih_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("kill")
    root = _big_nih(tmp / "nih", 240)
    return root, prepare(root, tmp / "reference", size=64, workers=1, progress=False)


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_killed_prepare_resumes_to_an_identical_cache(
    tmp_path: Path, point: str, big_nih_and_reference: tuple[Path, Path]
):
    n = 240
    root, reference = big_nih_and_reference
    target = tmp_path / "killed"
    code = (
        f"from chexvision_lib.data.prepare import prepare; "
        f"prepare({str(root)!r}, {str(target)!r}, size=64, workers=1, progress=False)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        done = target / "done.u8"
        if done.exists() and KILL_POINTS[point](int(np.fromfile(done, np.uint8).sum())):
            break
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = int(np.fromfile(target / "done.u8", np.uint8).sum())
    if finished == n:
        pytest.skip(f"the kill came after the last chunk ({point}); nothing to resume")
    assert KILL_POINTS[point](finished) or point != "first-chunk", finished
    with pytest.raises(IncompleteCacheError, match="interrupted prepare"):
        open_cache(target)
    prepare(root, target, size=64, workers=2, progress=False)
    assert (target / "images.u8").read_bytes() == (reference / "images.u8").read_bytes()
    assert (target / "index.csv").read_text() == (reference / "index.csv").read_text()


def test_real_pngs_cache_correctly(tmp_path: Path):
    index = build_nih_index(realdata("nih"), skip_bad=True)
    folder = prepare_cache(index.table, tmp_path / "real", size=256, workers=2, progress=False)
    table, images, _ = open_cache(folder)
    assert images.shape == (103, 256, 256)
    for row in (0, 50, 102):
        assert np.array_equal(images[row], load_grey(table["path"][row], 256))
    assert images.reshape(103, -1).std(axis=1).min() > 10  # real radiographs, not blanks


def test_hub_parquet_variant_joins_to_nih_metadata(tiny_nih: Path, tmp_path: Path):
    shards = tmp_path / "hub" / "data"
    shards.mkdir(parents=True)
    names = sorted(p.name for p in (tiny_nih / "images_001" / "images").glob("*.png"))
    payload = {n: (tiny_nih / "images_001" / "images" / n).read_bytes() for n in names}
    # shard 1: the `datasets` Image struct; shard 2: plain bytes, two row groups
    first = pa.table(
        {
            "image": [{"bytes": payload[n], "path": n} for n in names[:3]],
            "labels": [[0]] * 3,
            "filename": names[:3],
        }
    )
    pq.write_table(first, shards / "train-00000.parquet")
    second = pa.table(
        {
            "image": [payload[n] for n in names[3:]],
            "labels": [[1]] * 5,
            "filename": [f"images/{n}" for n in names[3:]],
        }
    )
    pq.write_table(second, shards / "train-00001.parquet", row_group_size=2)

    index = build_hub_index(tmp_path / "hub", tiny_nih)
    assert len(index.table) == 8 and index.source["kind"] == "hub_parquet"
    from_hub = prepare_cache(index.table, tmp_path / "c1", size=32, workers=2, progress=False)
    from_png = prepare(tiny_nih, tmp_path / "c2", size=32, workers=2, progress=False)
    hub_table, hub_images, _ = open_cache(from_hub)
    png_table, png_images, _ = open_cache(from_png)
    order = hub_table["image_id"].map({n: i for i, n in enumerate(png_table["image_id"])})
    assert np.array_equal(hub_images[:], png_images[order.to_numpy()])
    assert hub_table["split"].tolist() == png_table["split"].iloc[order].tolist()

    pq.write_table(pa.table({"filename": names}), shards / "broken.parquet")
    with pytest.raises(ValueError, match=r"broken.parquet: missing column.*image"):
        build_hub_index(tmp_path / "hub", tiny_nih)


def test_batch_loader_covers_split_and_shards_ranks(tiny_nih: Path, tmp_path: Path):
    import torch

    folder = prepare(tiny_nih, tmp_path / "cache", size=32, val_fraction=0.0, progress=False)
    data = CachedSplit(folder, "train")
    loader = BatchLoader(data, 2, torch.device("cpu"), shuffle=True, seed=1)
    seen = [i for _, _, index in loader for i in index.tolist()]
    assert sorted(seen) == list(range(len(data)))
    pixels, labels, index = next(iter(loader))
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 1, 32, 32)
    assert torch.equal(pixels[0, 0], torch.from_numpy(np.array(data.images[data.rows[index[0]]])))
    assert torch.equal(labels, torch.from_numpy(data.labels[index.numpy()]))
    # two ranks: disjoint halves of the padded order, every image at least once
    ranks = [
        BatchLoader(data, 2, torch.device("cpu"), shuffle=True, seed=1, rank=r, world_size=2)
        for r in (0, 1)
    ]
    shares = [[i for _, _, ix in r for i in ix.tolist()] for r in ranks]
    assert len(shares[0]) == len(shares[1]) and set(shares[0]) | set(shares[1]) == set(seen)
    # same (seed, epoch) -> same order; another epoch -> another order
    loader.set_epoch(0)
    first = [ix.tolist() for _, _, ix in loader]
    loader.set_epoch(1)
    assert first != [ix.tolist() for _, _, ix in loader]
    loader.set_epoch(0)
    assert first == [ix.tolist() for _, _, ix in loader]
    resident = BatchLoader(data, 2, torch.device("cpu"), shuffle=True, seed=1, on_device=True)
    assert [ix.tolist() for _, _, ix in resident] == first
    assert isinstance(pd.DataFrame(data.table), pd.DataFrame)
