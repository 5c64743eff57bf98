"""`prepare` and the disk: the budget it checks before writing, and what a dying worker does.

The issue: a 512 px cache of ChestX-ray14 (29.4 GB) does not fit /kaggle/working (20 GB); prepare
used to start anyway on a sparse file, a worker died of SIGBUS when the disk filled, and the
multiprocessing.Pool waited for its batch forever. Now prepare refuses up front with the numbers,
a worker death stops it within a second or so with the signal named, a rerun resumes, and the
workers do not outlive a killed parent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from chexvision_lib.cli import data as data_cli
from chexvision_lib.data.cache import (
    DiskBudgetError,
    human_bytes,
    open_cache,
    prepare_cache,
)
from chexvision_lib.data.nih_index import build_nih_index
from chexvision_lib.data.prepare import prepare

SIZE = 64
Usage = namedtuple("Usage", "total used free")


def _report_free(monkeypatch: pytest.MonkeyPatch, free: float) -> None:
    """Make every disk report `free` bytes free: prepare sees what shutil.disk_usage says."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(2 * free, free, free))


# Run as a script, it prepares a cache; imported as __mp_main__ by every spawned decode worker, it
# first wraps the worker's decode function, which then misbehaves as CHEX_HOOK asks:
#   "SIGBUS" / "SIGKILL": the first worker to reach image CHEX_HOOK_AT waits until the other has
#                         cached a chunk (so the kill lands mid-way), then sends itself that signal
#   "slow":               every image takes 1 s, so a chunk takes 30 s (a worker that stopped
#                         only at the end of its chunk would outlive a killed parent that long);
#                         each worker leaves CHEX_HOOK_FLAG.<pid> as it starts
#   "":                   nothing (a plain prepare, e.g. onto a disk too small for it)
HOOK = """
import os, resource, signal, sys, time

import numpy as np

import chexvision_lib.data.cache as cache

_decode = cache._decode_one
_seen = 0


def _misbehaving_decode(row, size):
    global _seen
    _seen += 1
    mode = os.environ.get("CHEX_HOOK", "")
    if mode == "slow":
        open(f"{os.environ['CHEX_HOOK_FLAG']}.{os.getpid()}", "w").close()
        time.sleep(1.0)
    elif mode and _seen == int(os.environ["CHEX_HOOK_AT"]):
        flag = os.environ["CHEX_HOOK_FLAG"]
        try:
            os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass  # the other worker: one death is the test
        else:
            done = os.path.join(sys.argv[2], "done.u8")
            deadline = time.time() + 20
            while np.fromfile(done, np.uint8).sum() == 0 and time.time() < deadline:
                time.sleep(0.01)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from SIGBUS
            os.utime(flag)  # the moment of death, for the parent's timing
            os.kill(os.getpid(), getattr(signal, mode))
            time.sleep(30)
    return _decode(row, size)


cache._decode_one = _misbehaving_decode

if __name__ == "__main__":
    import json

    from chexvision_lib.data.prepare import prepare

    size = int(sys.argv[3])
    ignore = sys.argv[4:] == ["--ignore-disk-budget"]
    try:
        prepare(sys.argv[1], sys.argv[2], size=size, workers=2, progress=False,
                ignore_disk_budget=ignore)
    except Exception as error:
        report = {"type": type(error).__name__, "message": str(error), "at": time.time()}
        print("RESULT " + json.dumps(report), flush=True)
        sys.exit(3)
    print("RESULT " + json.dumps({"type": None, "at": time.time()}), flush=True)
"""


def _hooked(tmp_path: Path, root: Path, out: Path, size: int, mode: str, *extra: str, **kw):
    script = tmp_path / "hooked_prepare.py"
    script.write_text(HOOK)
    env = {
        **os.environ,
        "CHEX_HOOK": mode,
        "CHEX_HOOK_AT": "40",
        "CHEX_HOOK_FLAG": str(tmp_path / "died"),
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, str(script), str(root), str(out), str(size), *extra]
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True, **kw)


def _result(process: subprocess.Popen, timeout: float) -> dict:
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"prepare hung: still running after {timeout} s")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (exit status {process.returncode}): {stdout}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def _same_cache(folder: Path, reference: Path) -> None:
    table, images, info = open_cache(folder)
    ref_table, ref_images, ref_info = open_cache(reference)
    assert np.array_equal(images, ref_images)
    assert (folder / "index.csv").read_text() == (reference / "index.csv").read_text()
    assert info == ref_info
    assert table.equals(ref_table)


@pytest.fixture(scope="module")
def reference(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted cache of the synthetic set (146 images) at SIZE px."""
    out = tmp_path_factory.mktemp("reference") / "cache"
    return prepare(synth_root, out, size=SIZE, workers=2, progress=False)


def test_human_bytes():
    assert human_bytes(112_120 * 256 * 256) == "7.35 GB"
    assert human_bytes(112_120 * 512 * 512) == "29.4 GB"
    assert human_bytes(18.2e9) == "18.2 GB"
    assert (human_bytes(0), human_bytes(999), human_bytes(4_194_304)) == ("0 B", "999 B", "4.19 MB")


def test_refuses_a_cache_the_disk_cannot_hold(synth_root, tmp_path, monkeypatch, capsys):
    # ChestX-ray14's 112,120 rows (the synthetic index, tiled) at 512 px on a 20 GB Kaggle disk.
    small = build_nih_index(synth_root).table
    copies = -(-112_120 // len(small))
    nih = pd.concat(
        [
            small.assign(image_id=small["image_id"] + f".{k}", patient=small["patient"] + f".{k}")
            for k in range(copies)
        ],
        ignore_index=True,
    ).iloc[:112_120]
    _report_free(monkeypatch, 18.2e9)
    out = tmp_path / "kaggle" / "working" / "cache512"
    with pytest.raises(DiskBudgetError) as refusal:
        prepare_cache(nih, out, size=512, progress=False)
    message = str(refusal.value)
    print(f"\nrefusal: {message}")
    assert "a 512 px cache of 112,120 images needs 29.4 GB, 18.2 GB free" in message
    assert str(out) in message and "--ignore-disk-budget" in message
    assert "ignore_disk_budget=True" in message
    assert not out.exists() and not out.parent.exists(), "nothing is written before the check"
    assert isinstance(refusal.value, ValueError)
    # 256 px fits.
    _report_free(monkeypatch, 7.3e9)
    with pytest.raises(DiskBudgetError, match=r"256 px cache of 112,120 images needs 7.3\d GB"):
        prepare_cache(nih, out, size=256, progress=False)


def test_override_writes_the_cache_anyway(synth_root, reference, tmp_path, monkeypatch, capsys):
    _report_free(monkeypatch, 1000)
    with pytest.raises(DiskBudgetError, match=r"146 images needs 6\d\d kB, 1 kB free"):
        prepare(synth_root, tmp_path / "refused", size=SIZE, progress=False)
    folder = prepare(
        synth_root,
        tmp_path / "forced",
        size=SIZE,
        workers=2,
        progress=False,
        ignore_disk_budget=True,
    )
    _same_cache(folder, reference)
    # The command line: refused without the flag, written with it.
    parser = argparse.ArgumentParser()
    data_cli.add_commands(parser.add_subparsers())
    argv = ["prepare", str(synth_root), "--size", str(SIZE), "--workers", "2"]
    args = parser.parse_args([*argv, "--out", str(tmp_path / "cli-refused")])
    assert args.ignore_disk_budget is False
    with pytest.raises(DiskBudgetError, match="--ignore-disk-budget"):
        args.func(args)
    args = parser.parse_args([*argv, "--out", str(tmp_path / "cli"), "--ignore-disk-budget"])
    args.func(args)
    assert "cache ready" in capsys.readouterr().out
    _same_cache(tmp_path / "cli", reference)


def test_resume_counts_what_is_already_allocated(synth_root, reference, tmp_path, monkeypatch):
    """A rerun after a failure needs only what the interrupted prepare has not yet allocated."""
    folder = prepare(synth_root, tmp_path / "cache", size=SIZE, progress=False)
    (folder / "cache.json").unlink()  # as if interrupted at the very end: all allocated
    (folder / "done.u8").write_bytes(bytes(146))
    _report_free(monkeypatch, 2e5)
    prepare(synth_root, folder, size=SIZE, workers=2, progress=False)
    _same_cache(folder, reference)


@pytest.mark.parametrize("killer", ["SIGBUS", "SIGKILL"])
def test_dead_worker_stops_prepare_and_a_rerun_resumes(killer, synth_root, reference, tmp_path):
    out = tmp_path / "cache"
    started = time.time()
    result = _result(_hooked(tmp_path, synth_root, out, SIZE, killer, start_new_session=True), 60)
    died = (tmp_path / "died").stat().st_mtime
    print(
        f"\n{killer}: error {result['at'] - died:.2f} s after the worker died "
        f"({time.time() - started:.1f} s in all): {result.get('message')}"
    )
    assert result["type"] == "DecodeWorkerDied"
    assert f"was killed by {killer}" in result["message"]
    assert "rerun the same command" in result["message"]
    hint = "the disk may be full" if killer == "SIGBUS" else "out-of-memory killer"
    assert hint in result["message"]
    assert result["at"] - died < 5
    done = int(np.fromfile(out / "done.u8", np.uint8).sum())
    assert 0 < done < 146 and f"{done} of 146 images are cached" in result["message"]
    prepare(synth_root, out, size=SIZE, workers=2, progress=False)
    _same_cache(out, reference)


def _descendants(pid: int) -> set[int]:
    try:
        import psutil
    except ImportError:  # /proc: walk the parent links
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        found, frontier = set(), {pid}
        while frontier:
            frontier = {child for child, parent in parents.items() if parent in frontier}
            found |= frontier
        return found
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; it waits only for its reaper


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_exit_when_their_parent_is_killed(synth_root, tmp_path):
    process = _hooked(tmp_path, synth_root, tmp_path / "cache", SIZE, "slow")
    workers: set[int] = set()
    try:
        deadline = time.time() + 30
        decoding: set[Path] = set()
        while len(decoding) < 2 and time.time() < deadline:
            decoding = set(tmp_path.glob("died.*"))
            time.sleep(0.05)
        assert len(decoding) == 2, "both decode workers should be decoding"
        workers = _descendants(process.pid)  # the two workers and multiprocessing's tracker
        assert {int(path.suffix[1:]) for path in decoding} <= workers
        assert process.poll() is None, "the kill should land mid-way"
        process.kill()  # SIGKILL: no cleanup code of the parent runs
        process.wait()
        killed = time.time()
        while any(_running(pid) for pid in workers) and time.time() < killed + 5:
            time.sleep(0.05)
        left = [pid for pid in workers if _running(pid)]
        print(f"\n{len(workers)} child processes gone {time.time() - killed:.2f} s after the kill")
        assert not left, f"orphaned workers still running: {left}"
    finally:
        for pid in (_descendants(process.pid) | workers) if process.poll() is None else workers:
            if _running(pid):  # only what this test started: a leftover worker
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MB tmpfs (root only; skipped where it cannot be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_fails_fast_and_resumes_once_freed(
    synth_root, tmp_path, small_disk, monkeypatch
):
    # 146 images at 256 px are 9.57 MB: the 4 MB disk is refused up front...
    with pytest.raises(DiskBudgetError, match=r"needs 9.\d+ MB, 4.\d+ MB free"):
        prepare(synth_root, small_disk / "cache", size=256, progress=False)
    # ...and were its free space misreported, reserving images.u8 fails before any decoding.
    with monkeypatch.context() as patch:
        _report_free(patch, 1e12)
        with pytest.raises(DiskBudgetError, match=r"reserving 9.57 MB for images.u8 failed"):
            prepare(synth_root, small_disk / "cache", size=256, progress=False)
    assert not (small_disk / "cache" / "images.u8").exists()
    # Forced, the workers run into the full disk (SIGBUS in the memmap): an error, no hang.
    started = time.time()
    process = _hooked(
        tmp_path,
        synth_root,
        small_disk / "cache",
        256,
        "",
        "--ignore-disk-budget",
        start_new_session=True,
    )
    result = _result(process, 60)
    print(f"\nfull disk: error after {result['at'] - started:.1f} s: {result.get('message')}")
    assert result["type"] == "DecodeWorkerDied"
    assert "SIGBUS" in result["message"] and "the disk may be full" in result["message"]
    # Space freed (the tmpfs grown to 16 MB), the same command resumes to the complete cache.
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    folder = prepare(synth_root, small_disk / "cache", size=256, workers=2, progress=False)
    reference = prepare(synth_root, tmp_path / "reference", size=256, workers=2, progress=False)
    _same_cache(folder, reference)
