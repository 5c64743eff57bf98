"""Talking to Kaggle through the `kaggle` package's Python API: upload the wheel, push the kernel,
follow it, fetch its output. Every failure Kaggle reports is a `KaggleError` carrying Kaggle's
own message; statuses are read from the structured fields, never from printed text.

Credentials are the client's own business (~/.kaggle/kaggle.json, KAGGLE_USERNAME/KAGGLE_KEY,
KAGGLE_API_TOKEN or `kaggle auth login`): nothing here reads, prints or writes a key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chexvision_lib.publishing.kaggle_kernel import KernelBuild

FINISHED_OK = "complete"
FAILED = ("error", "cancel_requested", "cancel_acknowledged")
# A status query that fails (network, a Kaggle hiccup) is retried; this many in a row is not one.
STATUS_FAILURES_ALLOWED = 3


class KaggleError(ValueError):
    """Kaggle refused or failed something; the message is Kaggle's."""


def kaggle_api() -> Any:
    """An authenticated `KaggleApi` (imported here: the client is optional and slow to import)."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as error:
        raise KaggleError(
            f"the kaggle package is not installed ({error}): pip install kaggle"
        ) from None
    api = KaggleApi()
    try:
        api.authenticate()
    except (OSError, ValueError, SystemExit) as error:  # the client exits on missing creds
        raise KaggleError(
            f"Kaggle credentials not found or refused ({error}); give the kaggle client a token "
            "its own way: ~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY or KAGGLE_API_TOKEN"
        ) from None
    return api


def _call(what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One client call; an HTTP error becomes a KaggleError naming the call and Kaggle's text."""
    try:
        return function(*args, **kwargs)
    except KaggleError:
        raise
    except Exception as error:  # requests.HTTPError, ValueError from the client's own checks
        response = getattr(error, "response", None)
        status = f" (HTTP {response.status_code})" if response is not None else ""
        raise KaggleError(f"{what} failed{status}: {error}") from None


def dataset_state(api: Any, ref: str) -> tuple[str, int | None] | None:
    """(status, current version number) of a dataset, or None when it does not exist."""
    from requests import HTTPError

    try:
        payload = json.loads(api.dataset_status(ref, format="json"))
    except HTTPError as error:
        if error.response is not None and error.response.status_code == 404:
            return None
        raise KaggleError(f"reading the status of dataset {ref} failed: {error}") from None
    return str(payload["status"]).lower(), payload.get("current_version_number")


def publish_wheel(
    api: Any, build: KernelBuild, *, interval: float, timeout: float, say: Callable[[str], None]
) -> int:
    """Upload the wheel as a new version of OWNER/chexvision-wheel (created private the first
    time) and wait until Kaggle serves exactly that version; returns its number."""
    ref, folder = build.wheel_ref, str(build.wheel_dir)
    before = dataset_state(api, ref)
    if before is None:
        say(f"dataset {ref} does not exist yet: creating it (private)")
        response = _call(f"creating dataset {ref}", api.dataset_create_new, folder, quiet=True)
        expected = 1
    else:
        say(f"dataset {ref}: uploading version {(before[1] or 0) + 1}")
        response = _call(
            f"versioning dataset {ref}",
            api.dataset_create_version,
            folder,
            f"chexvision wheel sha256 {build.wheel_sha256[:12]}",
            quiet=True,
        )
        expected = (before[1] or 0) + 1
    if getattr(response, "error", None):
        raise KaggleError(f"Kaggle refused the upload of {ref}: {response.error}")
    wait_until(
        lambda: _wheel_is_live(api, ref, expected),
        f"dataset {ref} version {expected} is not live",
        interval=interval,
        timeout=timeout,
        say=say,
    )
    say(f"dataset {ref} version {expected} is ready")
    return expected


def _wheel_is_live(api: Any, ref: str, expected: int) -> bool:
    state = dataset_state(api, ref)  # right after an upload the dataset may not be visible yet
    if state is None:
        return False
    status, version = state
    if status in ("failed", "deleted"):
        raise KaggleError(f"dataset {ref} failed to process (status {status})")
    return status == "ready" and version is not None and version >= expected


def wait_until(
    done: Callable[[], bool],
    what: str,
    *,
    interval: float,
    timeout: float,
    say: Callable[[str], None],
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            raise KaggleError(f"{what} after {timeout:.0f} s")
        say(f"{what} yet; next check in {interval:.0f} s")
        time.sleep(interval)


def push_kernel(api: Any, build: KernelBuild, say: Callable[[str], None]) -> int:
    """SaveKernel; any source Kaggle could not attach is a failure (the kernel would run without
    its wheel or its data). Returns the kernel version number."""
    response = _call(f"pushing kernel {build.kernel_ref}", api.kernels_push, str(build.kernel_dir))
    if response is None:
        raise KaggleError(f"pushing kernel {build.kernel_ref} failed: no response from Kaggle")
    if response.error:
        raise KaggleError(f"Kaggle refused kernel {build.kernel_ref}: {response.error}")
    rejected = {
        "dataset": list(response.invalid_dataset_sources or []),
        "kernel": list(response.invalid_kernel_sources or []),
        "competition": list(response.invalid_competition_sources or []),
    }
    problems = [f"{kind} sources {names}" for kind, names in rejected.items() if names]
    if problems:
        raise KaggleError(
            f"Kaggle pushed {build.kernel_ref} version {response.version_number} but could not "
            f"attach {'; '.join(problems)}: the kernel would run without them. Check that they "
            "exist and that this account can read them, then push again."
        )
    say(f"pushed {build.kernel_ref} version {response.version_number}: {response.url}")
    return int(response.version_number or 0)


def kernel_status(api: Any, kernel_ref: str) -> tuple[str, str]:
    """(status, failure message) from the structured fields: e.g. ("running", "")."""
    response = _call(f"reading the status of {kernel_ref}", api.kernels_status, kernel_ref)
    status = response.status
    name = getattr(status, "name", str(status)).lower()
    return name.removeprefix("kernelworkerstatus."), response.failure_message or ""


def wait_for_kernel(
    api: Any, kernel_ref: str, *, interval: float, timeout: float, say: Callable[[str], None]
) -> str:
    """Poll until the kernel completes (returns "complete") or fails (raises with its message)."""
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        # Sleep first: right after a push the status can still describe the previous version.
        time.sleep(interval)
        try:
            status, message = kernel_status(api, kernel_ref)
            failures = 0
        except KaggleError as error:
            failures += 1
            if failures >= STATUS_FAILURES_ALLOWED:
                raise
            say(f"{error}; retrying")
            status, message = "unknown", ""
        say(f"{kernel_ref}: {status}")
        if status == FINISHED_OK:
            return status
        if status in FAILED:
            raise KaggleError(
                f"kernel {kernel_ref} ended with status {status}"
                + (f": {message}" if message else "")
            )
        if time.monotonic() >= deadline:
            raise KaggleError(
                f"kernel {kernel_ref} still {status} after {timeout:.0f} s; check later with "
                f"`chexvision kaggle status {kernel_ref}`"
            )


def download_output(api: Any, kernel_ref: str, folder: Path) -> list[str]:
    """The kernel's output files and its log, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files, _ = _call(
        f"downloading the output of {kernel_ref}",
        api.kernels_output,
        kernel_ref,
        str(folder),
        force=True,
        quiet=True,
    )
    return list(files)
