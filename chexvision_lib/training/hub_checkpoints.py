"""Uploads during training: the model folder, history.csv and the resume checkpoint, to a Hub branch
every N epochs, so a Kaggle session that hits its time limit loses nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from chexvision_lib.core.hub_access import check_branch_name, resolve_token

logger = logging.getLogger(__name__)

EPOCH_UPLOAD_FILES = ("history.csv", "checkpoints/last.pt")


def epoch_upload_files(run: Path) -> list[tuple[str, Path]]:
    """(path in repo, local path): the model folder, history.csv and the resume checkpoint."""
    files = [(f"model/{p.name}", p) for p in sorted((run / "model").glob("*")) if p.is_file()]
    files += [(name, run / name) for name in EPOCH_UPLOAD_FILES]
    missing = [str(path) for _, path in files if not path.is_file()]
    if missing or not (run / "model").is_dir():
        raise FileNotFoundError(
            f"epoch upload: {missing or [str(run / 'model')]} not found; call the uploader after "
            "the epoch's checkpoint is saved"
        )
    return files


def make_epoch_uploader(
    repo_id: str,
    every_epochs: int,
    branch: str = "checkpoints",
    api: HfApi | None = None,
    *,
    private: bool = True,
) -> Callable[..., None]:
    """A callable `(run_dir, epoch, *, final=False) -> None` for the training loop.

    Every `every_epochs` completed epochs (epoch counts from 1), and whenever final=True, it
    commits RUN/model/*, RUN/history.csv and RUN/checkpoints/last.pt to `branch` of `repo_id`
    (created private by default: unreviewed checkpoints). The token is resolved now, so a missing
    one stops the run before training, not hours into it. A failed upload is logged and training
    goes on (the next upload carries everything); it never raises mid-run.
    """
    if every_epochs < 1:
        raise ValueError(f"every_epochs must be at least 1, got {every_epochs}")
    check_branch_name(branch)
    token = resolve_token()
    hub = api or HfApi()
    prepared = False

    def upload(run_dir: str | Path, epoch: int, *, final: bool = False) -> None:
        nonlocal prepared
        if not final and epoch % every_epochs != 0:
            return
        files = epoch_upload_files(Path(run_dir))
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files
        ]
        try:
            if not prepared:
                hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
                hub.create_branch(repo_id, branch=branch, token=token, exist_ok=True)
                prepared = True
            hub.create_commit(
                repo_id,
                operations,
                commit_message=f"{'final' if final else 'epoch'} {epoch}: model/, history.csv, "
                "checkpoints/last.pt",
                token=token,
                revision=branch,
            )
        except Exception as error:  # network, quota, permissions: training must not die of it
            logger.warning(
                "upload of epoch %d to %s (branch %s) failed: %s: %s; training continues and the "
                "next upload carries this epoch's files",
                epoch,
                repo_id,
                branch,
                type(error).__name__,
                error,
            )

    return upload
