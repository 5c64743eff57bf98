"""The one-time image cache: decode every radiograph once into a uint8 (N, S, S) array on disk.

Decoding a 1024 px PNG costs a CPU core ~8-13 ms; doing it every epoch starves a GPU. `prepare`
does it once, in parallel, and training reads the array (memmap, or whole in device memory).

Layout of a cache folder:
    index.csv     the index table, one row per image; row i is images.u8[i]
    images.u8     raw uint8 array, shape (N, S, S), C order
    done.u8       one byte per image: 1 once its pixels are written and flushed
    failed.csv    images that could not be decoded (only when asked to skip bad images)
    cache.json    written LAST, atomically: size, count, settings, source. Its presence is what
                  makes the folder a complete cache; a killed prepare never leaves one.
A killed prepare resumes: images whose done byte is set are not decoded again.

Disk: before writing, prepare checks that the disk holding the folder can take the cache (N x S x S
bytes plus the index files, less what an interrupted prepare already allocated) and refuses with
the numbers when it cannot (`ignore_disk_budget=True` / `--ignore-disk-budget` skips the check).
With the check on, images.u8 is then allocated in full up front (fallocate on Linux), so the disk
cannot fill under the workers later. Without it the file stays sparse; a worker that writes into a
full disk dies of SIGBUS, and prepare stops with an error naming it within a second or so (the same
for any worker death: the out-of-memory killer's SIGKILL, ...). Workers exit with their parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from chexvision_lib.core.atomic_files import write_json_atomic
from chexvision_lib.core.labels import OUTPUTS
from chexvision_lib.core.machine import available_cores
from chexvision_lib.data.image_io import ImageDecodeError, load_grey
from chexvision_lib.data.splits import check_patient_disjoint

CACHE_FORMAT = 1
CHUNK = 32  # images per worker task: big enough to amortise IPC, small enough to resume finely


class IncompleteCacheError(FileNotFoundError):
    """A folder is not a complete cache (prepare was interrupted, or never ran)."""


class DiskBudgetError(ValueError):
    """The disk holding a cache folder cannot take the cache; the message gives the numbers."""


class DecodeWorkerDied(ChildProcessError):
    """A decode worker died (a signal such as SIGBUS or SIGKILL); what was written is kept."""


@dataclass(frozen=True)
class CacheSettings:
    size: int
    clahe: bool = False
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be at least 32 px, got {self.size}")


def _apply_clahe(grey: np.ndarray) -> np.ndarray:
    import cv2  # optional dependency, only needed when CLAHE is asked for

    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)


# --- disk budget --------------------------------------------------------------------------------
def human_bytes(count: float) -> str:
    """Decimal units, 3 significant digits: 7347896320 -> '7.35 GB', 29391585280 -> '29.4 GB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 999.5 or unit == "TB":
            break
        count /= 1000
    return f"{int(count)} B" if unit == "B" else f"{count:.3g} {unit}"


def _existing_ancestor(path: Path) -> Path:
    """`path` or the nearest folder above it that exists (what disk_usage can be asked about)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _allocated_bytes(path: Path) -> int:
    """Bytes of disk a file holds now (a sparse file: only its written blocks); 0 if absent."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return 0
    blocks = getattr(status, "st_blocks", None)  # absent on Windows
    return status.st_size if blocks is None else min(blocks * 512, status.st_size)


def _check_disk_budget(
    out: Path, *, n: int, size: int, index_bytes: int, reusable: int, what: str
) -> None:
    """Refuse (DiskBudgetError) when the disk holding `out` cannot take what is still to write."""
    total = n * size * size + n + index_bytes  # images.u8 + done.u8 + index files
    needed = max(0, total - reusable)
    free = shutil.disk_usage(_existing_ancestor(out)).free
    if needed <= free:
        return
    already = (
        f" ({human_bytes(reusable)} of the {human_bytes(total)} is already on disk from an "
        "interrupted prepare)"
        if reusable
        else ""
    )
    raise DiskBudgetError(
        f"not enough disk space for the cache in {out}: {what} needs {human_bytes(needed)}, "
        f"{human_bytes(free)} free{already}. Free some space, choose another --out or a smaller "
        "--size, or pass --ignore-disk-budget (prepare(..., ignore_disk_budget=True)) if you know "
        "the space will be there"
    )


def _fallocate_function() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    for name in ("fallocate64", "fallocate"):
        function = getattr(libc, name, None)
        if function is not None:
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            function.restype = ctypes.c_int
            return function
    return None


def _reserve(path: Path, nbytes: int) -> bool:
    """Allocate the disk blocks of the file's first `nbytes` now, keeping what is written there.

    fallocate(2) without glibc's write-every-block emulation: instant on ext4, xfs, tmpfs, overlay.
    False where the OS or file system cannot (the file stays sparse); OSError(ENOSPC) when the disk
    cannot hold it (blocks allocated before the failure may stay: they count on a rerun).
    """
    fallocate = _fallocate_function()
    if fallocate is None:
        return False
    descriptor = os.open(path, os.O_RDWR)
    try:
        while fallocate(descriptor, 0, 0, nbytes) != 0:  # type: ignore[operator]
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(code, os.strerror(code), str(path))
            return False  # EOPNOTSUPP, ENOSYS, ...: sparse; a full disk is then caught mid-run
    finally:
        os.close(descriptor)
    return True


# --- worker side --------------------------------------------------------------------------------
_worker_state: dict[str, object] = {}


def _init_worker(images_path: str, shape: tuple[int, int, int], settings: CacheSettings) -> None:
    # Each worker maps the output array once and writes its images straight into it.
    _worker_state["images"] = np.memmap(images_path, dtype=np.uint8, mode="r+", shape=shape)
    _worker_state["settings"] = settings


def _decode_one(row: dict[str, object], size: int) -> np.ndarray:
    if row.get("parquet_row") is not None and not pd.isna(row.get("parquet_row")):
        from chexvision_lib.data.hub_parquet import read_parquet_image

        data = read_parquet_image(str(row["path"]), int(row["parquet_row"]))
        return load_grey(data, size, name=f"{row['path']}#row{int(row['parquet_row'])}")
    return load_grey(str(row["path"]), size)


def _decode_chunk(task: tuple[list[int], list[dict[str, object]]]) -> tuple[list[int], list[str]]:
    positions, rows = task
    images = _worker_state["images"]
    settings: CacheSettings = _worker_state["settings"]  # type: ignore[assignment]
    errors: list[str] = []
    for position, row in zip(positions, rows, strict=True):
        try:
            grey = _decode_one(row, settings.size)
        except ImageDecodeError as error:
            if not settings.skip_bad:
                raise
            errors.append(str(error))
            grey = np.zeros((settings.size, settings.size), np.uint8)
        else:
            errors.append("")
        if settings.clahe:
            grey = _apply_clahe(grey)
        images[position] = grey  # type: ignore[index]
    images.flush()  # type: ignore[union-attr]
    return positions, errors


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent: int) -> None:
    """End this worker when the process that started it dies, even by SIGKILL.

    Linux: the kernel sends SIGKILL (prctl PR_SET_PDEATHSIG). Elsewhere a daemon thread polls the
    parent's pid. (Either way an idle worker also stops at the end of its pipe.)
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _sendable(error: BaseException) -> BaseException:
    """`error` if it survives pickling, else a RuntimeError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _worker_main(
    connection: Connection,
    parent: int,
    images_path: str,
    shape: tuple[int, int, int],
    settings: CacheSettings,
) -> None:
    """One decode process: chunks in over its own pipe, (positions, errors) or an error back."""
    _exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _init_worker(images_path, shape, settings)
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed the pipe
        if task is None:
            return
        try:
            reply: tuple[object, ...] = ("ok", *_decode_chunk(task))
        except BaseException as error:
            reply = ("error", _sendable(error), traceback.format_exc())
        try:
            connection.send(reply)
        except OSError:
            return


# --- main side: the pool ------------------------------------------------------------------------
class _RemoteTraceback(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class _WorkerLost(Exception):
    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        super().__init__(pid, exitcode)
        self.pid, self.exitcode = pid, exitcode


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    connection: Connection
    in_flight: deque


class _DecodePool:
    """Spawned decode processes, each fed over its own pipe, so nothing waits on a dead one.

    multiprocessing.Pool waits forever for the batch of a worker killed by a signal (its SIGBUS on
    a full disk froze prepare at 100% CPU). Here the main loop waits on every worker's pipe and
    process sentinel together: a death is seen the moment it happens and raised as _WorkerLost.
    There are no shared queues or locks for a dying worker to leave held.
    """

    AHEAD = 2  # chunks sent to a worker before its first reply: it never waits for the next one

    def __init__(self, count: int, init: tuple[str, tuple[int, int, int], CacheSettings]) -> None:
        # 'spawn' avoids forking a process that may hold CUDA or OpenMP threads (notebooks).
        context = mp.get_context("spawn")
        self.workers: list[_Worker] = []
        try:
            for k in range(count):
                mine, theirs = context.Pipe(duplex=True)
                process = context.Process(
                    target=_worker_main,
                    args=(theirs, os.getpid(), *init),
                    name=f"chexvision-prepare-{k}",
                    daemon=True,
                )
                process.start()
                theirs.close()
                self.workers.append(_Worker(process, mine, deque()))
        except BaseException:
            self.terminate()
            raise

    def imap_unordered(
        self, tasks: Iterable[tuple[list[int], list[dict[str, object]]]]
    ) -> Iterator[tuple[list[int], list[str]]]:
        pending = deque(tasks)

        def lost(worker: _Worker) -> _WorkerLost:
            worker.process.join(5)  # its pipe closed as it died: let the exit code settle
            return _WorkerLost(worker.process.pid, worker.process.exitcode)

        def feed(worker: _Worker) -> None:
            while pending and len(worker.in_flight) < self.AHEAD:
                task = pending.popleft()
                try:
                    worker.connection.send(task)
                except OSError:
                    raise lost(worker) from None
                worker.in_flight.append(task)

        for worker in self.workers:
            feed(worker)
        by_handle: dict[object, _Worker] = {}
        for worker in self.workers:
            by_handle[worker.connection] = worker
            by_handle[worker.process.sentinel] = worker
        while any(worker.in_flight for worker in self.workers):
            for handle in wait(list(by_handle), timeout=1.0):
                worker = by_handle[handle]
                # Replies first, even from a worker that has just died: they are finished chunks.
                while worker.connection.poll():
                    try:
                        reply = worker.connection.recv()
                    except (EOFError, OSError):
                        raise lost(worker) from None
                    worker.in_flight.popleft()
                    if reply[0] == "error":
                        _, error, text = reply
                        error.__cause__ = _RemoteTraceback(f"\n(in a decode worker)\n{text}")
                        raise error
                    yield reply[1], reply[2]
                    feed(worker)
                if handle is worker.process.sentinel:
                    raise lost(worker)

    def close(self) -> None:
        """Tell idle workers to stop, then make sure they have."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.connection.send(None)
        deadline = time.monotonic() + 5
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        self.terminate()

    def terminate(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self.workers:
            worker.process.join(2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        self.workers = []


def _death_message(lost: _WorkerLost, out: Path, done: int, n: int) -> str:
    code = lost.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}"
    else:
        name = ""
        how = "vanished" if code is None else f"exited with status {code}"
    if name == "SIGBUS":
        free = human_bytes(shutil.disk_usage(_existing_ancestor(out)).free)
        hint = (
            f": writing into {out / 'images.u8'} failed, the disk may be full ({free} free now). "
            "Free some space, then"
        )
    elif name == "SIGKILL":
        hint = (
            ": most often the out-of-memory killer (see `dmesg`; fewer --workers need less "
            "memory). Then"
        )
    else:
        hint = ". Then"
    return (
        f"prepare: a decode worker (pid {lost.pid}) {how}{hint} rerun the same command: it "
        f"resumes, {done} of {n} images are cached and kept"
    )


# --- main side ----------------------------------------------------------------------------------
def _allocate(
    out: Path, n: int, size: int, index_text: str, plan: dict, *, resuming: bool, budget: bool
) -> np.ndarray:
    """Check the disk, write the index and reserve images.u8 and done.u8; returns the positions
    still to decode."""
    index_path, images_path, done_path = out / "index.csv", out / "images.u8", out / "done.u8"
    settings_path = out / "prepare.json"
    if budget:
        # index.csv now and again with its `ok` column, prepare.json, cache.json, some slack.
        index_bytes = len(index_text.encode()) + 6 * n + len(json.dumps(plan, indent=2)) + 2**16
        # Resuming, what images.u8 and done.u8 already hold is reused; otherwise they are stale
        # and deleted below, which frees the same amount.
        reusable = _allocated_bytes(images_path) + _allocated_bytes(done_path)
        what = f"a {size} px cache of {n:,} images"
        _check_disk_budget(
            out, n=n, size=size, index_bytes=index_bytes, reusable=reusable, what=what
        )

    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        for stale in (images_path, done_path):
            stale.unlink(missing_ok=True)
        write_json_atomic(settings_path, plan)
    index_path.write_text(index_text, newline="")  # to_csv has put the line endings in
    created = not images_path.exists()
    if created:
        with open(images_path, "wb") as handle:
            handle.truncate(n * size * size)  # sparse: workers fill it in place
    if budget:
        try:
            _reserve(images_path, n * size * size)
        except OSError as error:
            if created:
                images_path.unlink(missing_ok=True)
            free = human_bytes(shutil.disk_usage(_existing_ancestor(out)).free)
            raise DiskBudgetError(
                f"not enough disk space for the cache in {out}: reserving "
                f"{human_bytes(n * size * size)} for images.u8 failed ({error.strerror}; "
                f"{free} free). Free some space or choose another --out"
            ) from error
    if not done_path.exists():
        with open(done_path, "wb") as handle:
            handle.write(bytes(n))  # real zeros, not a hole: marking an image done cannot fail
    done = np.fromfile(done_path, dtype=np.uint8, count=n)
    todo = np.flatnonzero(done == 0)

    return todo


def _decode_all(
    table: pd.DataFrame,
    out: Path,
    todo: np.ndarray,
    shape: tuple[int, int, int],
    settings: CacheSettings,
    *,
    workers: int | None,
    progress: bool,
) -> list[tuple[str, str]]:
    """Decode the `todo` positions in worker processes; returns every failure so far."""
    n, size = shape[0], shape[1]
    images_path, done_path = out / "images.u8", out / "done.u8"
    records = table.to_dict("records")
    tasks = [
        (chunk.tolist(), [records[i] for i in chunk])
        for chunk in np.array_split(todo, max(1, -(-len(todo) // CHUNK)))
        if len(chunk)
    ]
    failures: list[tuple[str, str]] = []
    failed_path = out / "failed.csv"
    if failed_path.exists():
        failures = list(pd.read_csv(failed_path).itertuples(index=False, name=None))
    workers = max(1, min(workers or min(available_cores(), 16), len(tasks)))
    finished = n - len(todo)
    bar = tqdm(
        total=n, initial=finished, desc=f"prepare {size}px", unit="img", disable=not progress
    )
    try:
        if tasks:
            pool = _DecodePool(workers, (str(images_path), shape, settings))
            try:
                with open(done_path, "r+b", buffering=0) as marks:
                    for positions, errors in pool.imap_unordered(tasks):
                        for position, error in zip(positions, errors, strict=True):
                            if error:
                                failures.append((records[position]["image_id"], error))
                        if failures:
                            pd.DataFrame(failures, columns=["image_id", "error"]).to_csv(
                                failed_path, index=False
                            )
                        _mark_done(marks, positions)
                        finished += len(positions)
                        bar.update(len(positions))
                pool.close()
            except _WorkerLost as lost:
                raise DecodeWorkerDied(_death_message(lost, out, finished, n)) from None
            finally:
                pool.terminate()
    finally:
        bar.close()

    return failures


def index_fingerprint(table: pd.DataFrame) -> str:
    """SHA-256 of what an index says about its images: ids, patients, splits and the 15 labels.
    Two caches of the same files prepared with another seed, view filter or reader option
    (an uncertainty policy, a label rule) differ here even where the source files' hashes agree."""
    columns = [c for c in ("image_id", "patient", "split", *OUTPUTS) if c in table.columns]
    text = table.loc[:, columns].astype(str).to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_fingerprint(folder: str | Path) -> str:
    """The index fingerprint of a complete cache (cache.json's, or computed from index.csv for
    caches written before it was recorded)."""
    info = json.loads((Path(folder) / "cache.json").read_text())
    if info.get("index_sha256"):
        return str(info["index_sha256"])
    table = pd.read_csv(Path(folder) / "index.csv", dtype={"patient": str, "image_id": str})
    return index_fingerprint(table.drop(columns=["ok"], errors="ignore"))


def _without_skip_bad(plan: dict) -> dict:
    """The plan as the decoded pixels depend on it: skipping bad files changes which images are
    kept, never the pixels of the others, so a rerun with --skip-bad reuses them."""
    settings = {k: v for k, v in plan["settings"].items() if k != "skip_bad"}
    return {**plan, "settings": settings}


def prepare_cache(
    table: pd.DataFrame,
    out: str | Path,
    *,
    size: int,
    clahe: bool = False,
    skip_bad: bool = False,
    workers: int | None = None,
    source: dict[str, object] | None = None,
    progress: bool = True,
    ignore_disk_budget: bool = False,
) -> Path:
    """Decode every image of `table` once into a cache folder (see the module docstring).

    Re-running on the same folder resumes an interrupted prepare; on a complete cache with the
    same settings it returns at once. Different settings on an existing folder are an error.
    Before writing it refuses (DiskBudgetError) when the disk cannot hold the cache, unless
    `ignore_disk_budget`; a decode worker that dies stops it with DecodeWorkerDied.
    """
    settings = CacheSettings(size=size, clahe=clahe, skip_bad=skip_bad)
    out = Path(out)
    n = len(table)
    if n == 0:
        raise ValueError("the index table is empty: nothing to cache")
    check_patient_disjoint(table, "prepare")
    table = table.reset_index(drop=True)
    shape = (n, size, size)
    index_path, settings_path = out / "index.csv", out / "prepare.json"
    fingerprint = index_fingerprint(table)
    plan = {
        "format": CACHE_FORMAT,
        "settings": asdict(settings),
        "n": n,
        "images": table["image_id"].tolist(),
        "index_sha256": fingerprint,
    }

    if (out / "cache.json").exists():
        info = json.loads((out / "cache.json").read_text())
        if info["settings"] != asdict(settings) or info["n"] != n:
            raise ValueError(
                f"{out} already holds a cache with other settings ({info['settings']}); "
                "choose another --out folder"
            )
        if cache_fingerprint(out) != fingerprint:
            raise ValueError(
                f"{out} already holds a cache of these images with other labels, patients or "
                "splits (another seed, --views or reader option?); choose another --out folder"
            )
        return out
    resuming = settings_path.exists()
    if resuming:
        previous = json.loads(settings_path.read_text())
        if _without_skip_bad(previous) != _without_skip_bad(plan):
            raise ValueError(
                f"{out} holds an interrupted prepare of a different table or settings; "
                "delete the folder or choose another --out"
            )
        if previous != plan:  # a prepare that stopped on a bad file, rerun with --skip-bad
            write_json_atomic(settings_path, plan)

    index_text = table.to_csv(index=False)
    todo = _allocate(
        out, n, size, index_text, plan, resuming=resuming, budget=not ignore_disk_budget
    )

    failures = _decode_all(table, out, todo, shape, settings, workers=workers, progress=progress)

    ok = ~table["image_id"].isin({image for image, _ in failures})
    table.assign(ok=ok).to_csv(index_path, index=False)
    write_json_atomic(
        out / "cache.json",
        {
            "format": CACHE_FORMAT,
            "settings": asdict(settings),
            "n": n,
            "n_failed": len(failures),
            "shape": list(shape),
            "index_sha256": fingerprint,
            "source": source or {},
        },
    )
    return out


def _mark_done(marks: BinaryIO, positions: list[int]) -> None:
    """Set the done bytes of `positions` in the open done.u8 and make them durable.

    Plain writes, not a memmap: a write error here is an OSError, never a SIGBUS. The worker has
    flushed the pixels before replying, so a done byte never gets to disk before its image.
    """
    start = previous = positions[0]
    for position in [*positions[1:], None]:
        if position is not None and position == previous + 1:
            previous = position
            continue
        marks.seek(start)
        marks.write(b"\x01" * (previous - start + 1))  # one write per run of positions
        if position is not None:
            start = previous = position
    os.fsync(marks.fileno())


def open_cache(folder: str | Path) -> tuple[pd.DataFrame, np.memmap, dict[str, object]]:
    """Open a complete cache read-only: (index table, (N, S, S) uint8 memmap, cache.json)."""
    folder = Path(folder)
    info_path = folder / "cache.json"
    if not info_path.exists():
        state = "an interrupted prepare" if (folder / "prepare.json").exists() else "no cache"
        raise IncompleteCacheError(
            f"{folder} is not a complete cache ({state}); run `chexvision prepare` "
            "(it resumes an interrupted one)"
        )
    info = json.loads(info_path.read_text())
    table = pd.read_csv(folder / "index.csv", dtype={"patient": str, "image_id": str})
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=tuple(info["shape"]))
    if len(table) != images.shape[0]:
        raise IncompleteCacheError(
            f"{folder}: index.csv has {len(table)} rows, images.u8 holds {images.shape[0]}"
        )
    check_patient_disjoint(table, str(folder))
    return table, images, info
