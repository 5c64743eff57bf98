"""Pushing a model folder to the Hugging Face Hub: one commit whose files are exactly the
folder's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.hub_access import check_branch_name, resolve_token
from chexvision_lib.models.registry import WEIGHTS_FILE
from chexvision_lib.publishing.model_card import PUBLICATION_KEY
from chexvision_lib.publishing.model_folder import ProvenanceError

# Repository files a push leaves alone (the Hub creates .gitattributes with the repo).
KEEP_IN_REPO = (".gitattributes",)


@dataclass(frozen=True)
class UploadFile:
    path_in_repo: str
    local_path: Path
    size: int
    sha256: str


def upload_plan(model_dir: str | Path) -> list[UploadFile]:
    """Exactly the files a push uploads: every file of the folder, with size and SHA-256."""
    folder = Path(model_dir)
    return [
        UploadFile(
            path.relative_to(folder).as_posix(), path, path.stat().st_size, file_sha256(path)
        )
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    ]


def check_model_folder(model_dir: Path) -> dict:
    """A folder built by build_model_folder whose weights are still the ones its card describes."""
    config_path = model_dir / "config.json"
    if not config_path.is_file() or not (model_dir / "README.md").is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a model folder (needs config.json and README.md); build one with "
            "`chexvision card RUN_DIR --out MODEL_DIR`"
        )
    config = json.loads(config_path.read_text())
    recorded = config.get(PUBLICATION_KEY, {}).get("weights_sha256")
    if recorded is None:
        raise ValueError(f"{config_path} has no {PUBLICATION_KEY}.weights_sha256: rebuild it")
    if file_sha256(model_dir / WEIGHTS_FILE) != recorded:
        raise ProvenanceError(
            f"{model_dir}/{WEIGHTS_FILE} is not the file the card was built for; rebuild the "
            "folder with `chexvision card`"
        )
    return config


def refuse_token_in_files(plan: list[UploadFile], token: str) -> None:
    """Last line of defence: never upload a file that contains the token (the message does not
    repeat it)."""
    needle = token.encode()
    for item in plan:
        if needle in item.local_path.read_bytes():
            raise ValueError(
                f"refusing to upload: {item.path_in_repo} contains your Hugging Face token; "
                "remove it from the file (and revoke the token if the file was shared)"
            )


def format_plan(plan: list[UploadFile], repo_id: str, revision: str | None) -> str:
    total = sum(item.size for item in plan)
    lines = [
        f"dry run: one commit to {repo_id} (branch {revision or 'main'}) would upload "
        f"{len(plan)} files, {total:,} bytes; files in that branch not listed here would be "
        "deleted (except .gitattributes):",
    ]
    width = max(len(item.path_in_repo) for item in plan)
    for item in plan:
        lines.append(f"  {item.path_in_repo:<{width}}  {item.size:>12,}  sha256 {item.sha256}")
    return "\n".join(lines)


def _commit_operations(
    plan: list[UploadFile], existing: list[str]
) -> list[CommitOperationAdd | CommitOperationDelete]:
    """Add every planned file; delete repo files the folder no longer has, so the pushed revision
    is exactly the folder (a stale metrics file would contradict the new card)."""
    planned = {item.path_in_repo for item in plan}
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo=item.path_in_repo, path_or_fileobj=str(item.local_path))
        for item in plan
    ]
    operations += [
        CommitOperationDelete(path_in_repo=path)
        for path in sorted(existing)
        if path not in planned and path not in KEEP_IN_REPO
    ]
    return operations


def push_model_folder(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    api: HfApi | None = None,
) -> str:
    """Upload a model folder to the Hub as one commit; return the commit URL.

    Creates the repository (and the branch `revision`) when absent. dry_run=True prints and
    returns the exact upload list (paths, sizes, SHA-256) without a token or the network.
    """
    folder = Path(model_dir)
    weights_sha256 = check_model_folder(folder)[PUBLICATION_KEY]["weights_sha256"]
    check_branch_name(revision)
    plan = upload_plan(folder)
    if dry_run:
        listing = format_plan(plan, repo_id, revision)
        print(listing)
        return listing
    token = resolve_token()
    refuse_token_in_files(plan, token)
    api = api or HfApi()
    api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
    existing = api.list_repo_files(repo_id, revision=revision, token=token, repo_type="model")
    operations = _commit_operations(plan, existing)
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=f"CheXVision model folder (weights sha256 {weights_sha256[:12]})",
        token=token,
        repo_type="model",
        revision=revision,
    )
    url = str(info.commit_url)
    print(f"pushed {len(plan)} files to {repo_id} ({revision or 'main'}): {url}")
    return url
