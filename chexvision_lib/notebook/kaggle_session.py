"""Kernels that chain on Kaggle: find what an earlier kernel left, and make it usable here.

A Kaggle session sees attached datasets and earlier kernels' outputs read-only under
/kaggle/input/<slug>/ and writes only under /kaggle/working (its current directory). So:
- `find_run` locates a run folder in an attached kernel's output ("auto"), or takes a path;
- `writable_run` copies a read-only run into the working directory (model, history, checkpoint:
  megabytes), so evaluating or publishing it writes next to it, as off Kaggle;
- `link_cache` makes the cache the run recorded reachable under the same (relative) path, from an
  attached output, so a resumed run's config is exactly the one it started with.
The Kaggle root is /kaggle unless CHEXVISION_KAGGLE_ROOT says otherwise (the rehearsal tests use a
folder laid out like it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from chexvision_lib.evaluation.evaluate import run_cache

KAGGLE_ROOT_ENV = "CHEXVISION_KAGGLE_ROOT"
SEARCH_DEPTH = 6


def kaggle_root() -> Path:
    return Path(os.environ.get(KAGGLE_ROOT_ENV, "/kaggle"))


def kaggle_input() -> Path:
    return kaggle_root() / "input"


def is_run_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file()


def _run_folders_under(root: Path) -> list[Path]:
    found = []
    for directory, dirs, _ in os.walk(root):
        path = Path(directory)
        if is_run_folder(path):
            found.append(path)
            dirs.clear()
        elif len(path.relative_to(root).parts) >= SEARCH_DEPTH or path.name.startswith("cache"):
            dirs.clear()  # never walk into a cache or an image folder
        else:
            dirs[:] = [d for d in dirs if not d.startswith("images")]
    return sorted(found)


def find_run(run_dir: str, name: str | None = None, local: Path | None = None) -> Path:
    """`run_dir` as a path, or "auto": the run folder in an attached kernel's output (one whose
    folder is `name`, when several are attached), else `local` when it is a run folder."""
    off_kaggle = not kaggle_input().is_dir()
    if run_dir == "auto" and off_kaggle and local is not None and is_run_folder(local):
        return local
    if run_dir != "auto":
        path = Path(run_dir)
        if not is_run_folder(path):
            raise FileNotFoundError(
                f"run_dir {run_dir!r} is not a run folder (needs config.json and model/)"
            )
        return path
    runs = _run_folders_under(kaggle_input()) if kaggle_input().is_dir() else []
    if name is not None:
        runs = [r for r in runs if r.name == name] or runs
    if len(runs) != 1:
        where = kaggle_input()
        listing = ", ".join(map(str, runs)) or "none"
        raise FileNotFoundError(
            f"run_dir='auto' needs exactly one run folder under {where} (found: {listing}); "
            "attach the train kernel's output (Add data > Your Work) or pass run_dir"
        )
    return runs[0]


def writable_run(run: Path, work_dir: str | Path) -> Path:
    """The run itself when this session may write to it; else a copy under work_dir (kept and
    reused: a rerun of the notebook continues from the copy)."""
    run = Path(run)
    if os.access(run, os.W_OK) and not _under(run, kaggle_input()):
        return run
    copy = Path(work_dir) / run.name
    if not is_run_folder(copy):
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.tmp"))
        print(f"copied the read-only run {run} to {copy}")
    return copy


def recorded_cache(run: Path) -> tuple[str, Path | None]:
    """(the cache path the run's config records, where it is on this machine or None)."""
    config = json.loads((run / "config.json").read_text())
    try:
        return str(config["cache"]["path"]), run_cache(run, config)
    except FileNotFoundError:
        return str(config["cache"]["path"]), None


def link_cache(source_run: Path, work_dir: str | Path = ".") -> Path | None:
    """Make the cache `source_run` recorded reachable at its recorded (relative) path from the
    working directory, by a symlink into the attached output it lives in. Returns that path, or
    None when the cache is nowhere (then prepare it again: same data, same settings, same
    bytes)."""
    recorded, found = recorded_cache(source_run)
    target = Path(recorded) if Path(recorded).is_absolute() else Path(work_dir) / recorded
    if (target / "cache.json").is_file():
        return target
    if found is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(found.resolve(), target_is_directory=True)
    print(f"cache {recorded} -> {found}")
    return target


def resume_from_output(resume_from: str, out: str | Path, work_dir: str | Path = ".") -> bool:
    """Continue a run an earlier session (e.g. one stopped by Kaggle's 12 h limit) left in its
    output: copy its run folder to `out` and link its cache. False when there is nothing to do."""
    if not resume_from:
        return False
    source = find_run(resume_from, name=Path(out).name)
    if not (source / "checkpoints" / "last.pt").is_file():
        raise FileNotFoundError(f"resume_from {source}: no checkpoints/last.pt to resume from")
    out = Path(out)
    if not (out / "checkpoints" / "last.pt").is_file():
        shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.tmp"))
        print(f"resuming {source} in {out}")
    if link_cache(source, work_dir) is None:
        print("the run's cache is not attached: it is prepared again (same data, same bytes)")
    return True


def _under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def open_run(run_dir: str, work_dir: str | Path) -> Path:
    """The run an evaluate or publish notebook works on, writable, with its cache reachable:
    `run_dir` ("auto": an attached train kernel's output, else WORK_DIR/train) copied into
    work_dir when it is read-only."""
    source = find_run(run_dir, local=Path(work_dir) / "train")
    run = writable_run(source, work_dir)
    if link_cache(source) is None:
        print(f"the cache of {source} is not here: evaluation needs it prepared again")
    return run
