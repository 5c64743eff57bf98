"""A fake Kaggle API on http://localhost (port 80), for tests that drive the real ``kaggle`` client.

With ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` the real client (``kaggle`` 2.x / ``kagglesdk``) POSTs
JSON to ``http://localhost/api/v1/{Service}/{Method}``; there is no way to give it a port, so the
fake must own 127.0.0.1:80. When that port cannot be bound, :class:`FakeKaggleUnavailable` is
raised and :func:`fake_kaggle_or_skip` / :func:`fake_kaggle_fixture` turn it into a skip.

Responses are built with kagglesdk's own types, so whatever the client parses here it parses from
Kaggle too (for the fields the fake fills in). The fake keeps everything it was sent, except
secrets: the Authorization header is reduced to its scheme (and, for basic auth, the user name),
and any value equal to the key or token is replaced by ``"<redacted>"`` before a body is recorded.

Usage::

    fake_kaggle = fake_kaggle_fixture()          # module level: a fixture named fake_kaggle

    def test_push(fake_kaggle, tmp_path):
        fake_kaggle.reject_sources = ["someone/missing"]
        api = fake_kaggle.client_api()           # a KaggleApi aimed at the fake, authenticated
        response = api.kernels_push(str(folder))
        assert response.invalid_dataset_sources == ["someone/missing"]

    # or through the CLI:
    subprocess.run([".venv/bin/kaggle", ...], env=fake.subprocess_env())
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import os
import shutil
import socket
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kagglesdk.blobs.types.blob_api_service import ApiStartBlobUploadResponse
from kagglesdk.datasets.types.dataset_api_service import (
    ApiCreateDatasetResponse,
    ApiDataset,
    ApiDatasetFile,
    ApiDatasetVersion,
    ApiDeleteDatasetResponse,
    ApiGetDatasetStatusResponse,
    ApiListDatasetFilesResponse,
)
from kagglesdk.datasets.types.dataset_enums import DatabundleVersionStatus
from kagglesdk.kaggle_object import KaggleObject
from kagglesdk.kernels.types.kernels_api_service import (
    ApiGetKernelSessionStatusResponse,
    ApiKernelSessionOutputFile,
    ApiListKernelSessionOutputResponse,
    ApiSaveKernelRequest,
    ApiSaveKernelResponse,
)
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus
from kagglesdk.security.types.oauth_service import IntrospectTokenResponse

HOST = "127.0.0.1"
PORT = 80  # KaggleEnv.LOCAL is "http://localhost": no port can be configured
BASE_URL = "http://localhost"
REDACTED = "<redacted>"
UPLOAD_PREFIX = "/fake-upload/"
OUTPUT_PREFIX = "/fake-output/"

# Fields of security/users requests that carry credentials; they are never recorded.
_SECRET_FIELDS = {
    "token",
    "accessToken",
    "refreshToken",
    "code",
    "codeVerifier",
    "clientSecret",
    "key",
    "password",
}
# Environment variables that would make the client use some other credential or host.
_SCRUBBED_ENV = (
    "KAGGLE_API_TOKEN",
    "KAGGLE_API_V1_TOKEN",
    "KAGGLE_KERNEL_RUN_TYPE",
    "KAGGLE_DATA_PROXY_URL",
    "KAGGLE_IAP_TOKEN",
    "KAGGLE_PROXY",
    "KAGGLE_PATH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "VERBOSE",
    "VERBOSE_OUTPUT",
)


class FakeKaggleUnavailable(RuntimeError):
    """127.0.0.1:80 cannot be bound here (not root, or the port is taken); tests should skip."""


class _ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _parse_enum(enum_cls: type, value: Any, what: str) -> Any:
    """Accept an enum member, its name in any case ("running", "RUNNING") or str(member)."""
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        name = value.rsplit(".", 1)[-1].strip().upper()
        if name in enum_cls.__members__:
            return enum_cls[name]
    valid = ", ".join(m.name.lower() for m in enum_cls)
    raise ValueError(f"{what}: {value!r} is not one of {valid}")


def _dataset_status(value: Any, what: str) -> DatabundleVersionStatus:
    return _parse_enum(DatabundleVersionStatus, value, what)


def _kernel_status(value: Any, what: str) -> tuple[KernelWorkerStatus, str | None]:
    if isinstance(value, tuple):
        status, message = value
        return _parse_enum(KernelWorkerStatus, status, what), message
    return _parse_enum(KernelWorkerStatus, value, what), None


def _redact(value: Any, secrets: set[str], secret_fields: bool) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if secret_fields and k in _SECRET_FIELDS
                else _redact(v, secrets, secret_fields)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, secrets, secret_fields) for v in value]
    if isinstance(value, str) and value in secrets:
        return REDACTED
    return value


class FakeKaggle:
    """A fake Kaggle API server on 127.0.0.1:80; a context manager (``with FakeKaggle() as k:``).

    State, readable at any time (also after exit):
      requests        [(method name, body)] for every API call, in order; secrets redacted
      auth_schemes    per request: "basic", "bearer", another scheme in lower case, or None
      auth_usernames  the user names seen in basic auth (the key itself is never kept)
      http_log        [(HTTP verb, path, status)] for everything, uploads and downloads included
      datasets        {ref: {"id", "title", "versions": [version dicts], "files": {name: bytes},
                      "status": str, "current_version_number": int | None, "private": bool}}
                      a version dict: {"version_number", "notes", "status", "files", "request"};
                      "files" at the top is the newest version's, whatever its status
      kernels         {ref: {"id", "versions": [SaveKernel request dicts], "dataset_sources",
                      "status_polls"}}; "dataset_sources" are those the last push kept
      blobs           {token: {"name", "content_length", "data": bytes | None}}
      unhandled       method names or paths the fake does not implement (answered 404)
      stop_reason     None while serving, else "exit", "timeout" or "max_requests"

    Script it before the client call:
      dataset_processing_polls  N: GetDatasetStatus says ``dataset_pending_status`` N times after a
                                create/version, then ``dataset_final_status``; the dataset's
                                currentVersionNumber moves to the new version only when "ready"
      dataset_pending_status    default "blobs_received" (kagglesdk has no "pending" status)
      dataset_final_status      default "ready"; "failed" leaves currentVersionNumber alone
      reject_sources            ["owner/slug"]: SaveKernel lists them in invalidDatasetSources,
                                drops them, and still saves a version (as Kaggle does)
      save_kernel_error         "message": SaveKernel answers {"error": message} and saves nothing
      kernel_statuses           e.g. ["running", "running", "error"]: what GetKernelSessionStatus
                                answers, one per call since the kernel's last push; the last one
                                repeats. Items may be (status, failure message) tuples
      failure_message           sent with every "error" status that has no message of its own
      kernel_output_files       {"name": bytes}: ListKernelSessionOutput lists them, with URLs
                                that this server serves
      kernel_log                str: the session log ListKernelSessionOutput returns
      fail_method               ("SaveKernel", 403, "Permission denied") or a list of them; an
                                optional 4th item limits how many calls fail (None: all)
    """

    def __init__(
        self,
        username: str = "fake-owner",
        key: str | None = None,
        *,
        timeout_s: float = 300.0,
        max_requests: int = 2000,
    ) -> None:
        self.username = username
        self.key = key or "fake-key-" + uuid.uuid4().hex  # a dummy: never a real credential
        self.timeout_s = timeout_s
        self.max_requests = max_requests

        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.auth_schemes: list[str | None] = []
        self.auth_usernames: set[str] = set()
        self.http_log: list[tuple[str, str, int]] = []
        self.datasets: dict[str, dict[str, Any]] = {}
        self.kernels: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, dict[str, Any]] = {}
        self.unhandled: list[str] = []
        self.stop_reason: str | None = None

        self.dataset_processing_polls = 0
        self.dataset_pending_status: str = "blobs_received"
        self.dataset_final_status: str = "ready"
        self.reject_sources: list[str] = []
        self.save_kernel_error: str | None = None
        self.kernel_statuses: list[Any] = ["complete"]
        self.failure_message = ""
        self.kernel_output_files: dict[str, bytes] = {}
        self.kernel_log = ""
        self.fail_method: Any = None

        self._lock = threading.RLock()
        self._count = 0
        self._next_id = 1000
        self._fail_counts: dict[int, int] = {}
        self._server: ThreadingHTTPServer | None = None
        self._stopping = False
        self._closed = threading.Event()
        self._closed.set()
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._tmp: Path | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeKaggle:
        """Bind 127.0.0.1:80 and serve in a daemon thread; raise FakeKaggleUnavailable if not."""
        if self._server is not None:
            return self
        _check_localhost_is_ours()
        try:
            server = _Server((HOST, PORT), _Handler)
        except OSError as error:  # PermissionError (not root), EADDRINUSE, ...
            raise FakeKaggleUnavailable(
                f"cannot bind {HOST}:{PORT} for the fake Kaggle API ({error}); the kaggle client "
                "only talks to http://localhost (port 80) with KAGGLE_API_ENVIRONMENT=LOCALHOST"
            ) from error
        server.fake = self
        self._server = server
        self._stopping = False
        self._closed.clear()
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-kaggle-"))
        for sub in ("config", "home", "tmp"):
            (self._tmp / sub).mkdir()
        config = self.config_dir / "kaggle.json"
        config.write_text(json.dumps({"username": self.username, "key": self.key}))
        config.chmod(0o600)  # the client warns on stdout about a readable key file
        self.stop_reason = None
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.timeout_s, self._stop, args=("timeout",))
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent; waits until the port is free) and remove the temporary
        folders. The recorded state stays readable."""
        self._stop("exit")
        self._closed.wait(10)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _stop(self, reason: str) -> None:
        with self._lock:
            server = self._server
            if server is None or self._stopping:
                return
            self._stopping = True
            self.stop_reason = reason
            timer, self._timer = self._timer, None
        if timer is not None and threading.current_thread() is not timer:
            timer.cancel()
        server.shutdown()  # never called from serve_forever's thread: handlers have their own
        server.server_close()
        with self._lock:
            self._server = None
            self._closed.set()

    def __enter__(self) -> FakeKaggle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True from start() until the listening socket is closed."""
        return self._server is not None

    # ---- environment ---------------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        """A temporary KAGGLE_CONFIG_DIR holding a kaggle.json with the fake credentials."""
        if self._tmp is None:
            raise RuntimeError("the fake Kaggle server is not started")
        return self._tmp / "config"

    def env(self) -> dict[str, str]:
        """The variables a client process needs to talk to this fake (and nothing else).

        HOME and TMPDIR point at private temporary folders, so that no ~/.kaggle/access_token or
        credentials.json of the real user is used and upload-resume state does not leak between
        runs. Merge into the environment with :meth:`subprocess_env` (which also removes
        KAGGLE_API_TOKEN and proxies) or :meth:`apply_env` (pytest monkeypatch).
        """
        assert self._tmp is not None, "start the fake Kaggle server first"
        no_proxy = "localhost,127.0.0.1"
        return {
            "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
            "KAGGLE_USERNAME": self.username,
            "KAGGLE_KEY": self.key,
            "KAGGLE_CONFIG_DIR": str(self.config_dir),
            "HOME": str(self._tmp / "home"),
            "TMPDIR": str(self._tmp / "tmp"),
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) without other credentials or proxies, plus env()."""
        merged = dict(os.environ if base is None else base)
        for name in _SCRUBBED_ENV:
            merged.pop(name, None)
        merged.update(self.env())
        return merged

    def apply_env(self, monkeypatch: Any) -> None:
        """Set env() in this process through a pytest monkeypatch (undone after the test)."""
        for name in _SCRUBBED_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)

    def client_api(self) -> Any:
        """A real ``KaggleApi``, authenticated, that can only reach this fake.

        ``KaggleApi`` decides at *import* time whether it talks to localhost (class attribute
        ``args``) and where its config lives (``config_dir``), so an instance made after an
        earlier import would still aim at api.kaggle.com. This sets both on the instance and
        checks the endpoint before returning. Call apply_env() (the fixture does) first.
        """
        from kaggle.api.kaggle_api_extended import KaggleApi

        if os.environ.get("KAGGLE_API_ENVIRONMENT") != "LOCALHOST":
            raise RuntimeError("call apply_env(monkeypatch) before client_api()")
        api = KaggleApi()
        api.args = ["--local"]
        api.config_dir = str(self.config_dir)
        api.config = str(self.config_dir / "kaggle.json")
        api.authenticate()
        with api.build_kaggle_client() as client:
            endpoint = client.http_client()._endpoint
        if endpoint != BASE_URL:
            raise RuntimeError(f"KaggleApi would talk to {endpoint}, not the fake at {BASE_URL}")
        return api

    # ---- helpers for tests ---------------------------------------------------------------

    def methods(self) -> list[str]:
        """The API method names called so far, in order."""
        with self._lock:
            return [name for name, _ in self.requests]

    def bodies(self, method: str) -> list[dict[str, Any]]:
        """The recorded (redacted) bodies of every call to ``method``."""
        with self._lock:
            return [copy.deepcopy(body) for name, body in self.requests if name == method]

    def saved_kernel(self, ref: str, version: int = -1) -> ApiSaveKernelRequest:
        """A saved SaveKernel request as kagglesdk's type (``.dataset_data_sources``, ...)."""
        with self._lock:
            return ApiSaveKernelRequest.from_dict(self.kernels[ref]["versions"][version])

    def add_kernel(self, ref: str) -> None:
        """Make a kernel known without pushing it (status and output calls 404 otherwise)."""
        with self._lock:
            self._kernel(ref)

    def add_dataset(self, ref: str, files: dict[str, bytes] | None = None) -> None:
        """Make a ready dataset with one version exist, as if created earlier."""
        with self._lock:
            dataset = self._new_dataset(ref, title=ref.split("/")[-1], private=True)
            self._add_version(dataset, files or {}, None, {}, polls=0)

    # ---- request handling (called by _Handler, under the lock) -----------------------------

    def _count_request(self) -> bool:
        """Count a request; False (and stop soon) once past max_requests."""
        self._count += 1
        if self._count > self.max_requests:
            threading.Thread(target=self._stop, args=("max_requests",), daemon=True).start()
            return False
        return True

    def _scripted_failure(self, method: str) -> _ApiError | None:
        rules = self.fail_method
        if not rules:
            return None
        if isinstance(rules, tuple):
            rules = [rules]
        for index, rule in enumerate(rules):
            name, code, message = rule[0], int(rule[1]), str(rule[2])
            times = rule[3] if len(rule) > 3 else None
            if name != method:
                continue
            used = self._fail_counts.get(index, 0)
            if times is not None and used >= times:
                continue
            self._fail_counts[index] = used + 1
            return _ApiError(code, message)
        return None

    def _call(self, service: str, method: str, body: dict[str, Any]) -> KaggleObject:
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            self.unhandled.append(f"{service}/{method}")
            raise _ApiError(404, f"fake Kaggle does not implement {service}/{method}")
        return handler(body)

    # datasets

    def _dataset(self, owner: str | None, slug: str | None) -> dict[str, Any]:
        ref = f"{owner}/{slug}"
        if ref not in self.datasets:
            raise _ApiError(404, f"Dataset {ref} not found")
        return self.datasets[ref]

    def _new_dataset(self, ref: str, title: str, private: bool) -> dict[str, Any]:
        self._next_id += 1
        dataset = {
            "id": self._next_id,
            "title": title,
            "private": private,
            "versions": [],
            "files": {},
            "status": "ready",
            "current_version_number": None,
            "pending_polls": 0,
        }
        self.datasets[ref] = dataset
        return dataset

    def _resolve_files(self, files: list[dict[str, Any]]) -> dict[str, bytes] | str:
        resolved: dict[str, bytes] = {}
        for item in files or []:
            blob = self.blobs.get(item.get("token", ""))
            if blob is None:
                return f"Unknown blob token {item.get('token')!r}"
            if blob["data"] is None:
                return f"File {blob['name']} was never uploaded"
            resolved[blob["name"]] = blob["data"]
        return resolved

    def _add_version(
        self,
        dataset: dict[str, Any],
        files: dict[str, bytes],
        notes: str | None,
        request: dict[str, Any],
        polls: int,
    ) -> None:
        pending = _dataset_status(self.dataset_pending_status, "dataset_pending_status")
        _dataset_status(self.dataset_final_status, "dataset_final_status")  # fail early
        version = {
            "version_number": len(dataset["versions"]) + 1,
            "notes": notes,
            "status": pending.name.lower(),
            "files": files,
            "request": request,
        }
        dataset["versions"].append(version)
        dataset["files"] = files
        dataset["pending_polls"] = polls
        dataset["status"] = pending.name.lower()
        if polls <= 0:
            self._finish_processing(dataset)

    def _finish_processing(self, dataset: dict[str, Any]) -> None:
        final = _dataset_status(self.dataset_final_status, "dataset_final_status").name.lower()
        for version in dataset["versions"]:
            if version["status"] not in ("ready", "failed"):
                version["status"] = final
                if final == "ready":
                    dataset["current_version_number"] = version["version_number"]
        dataset["status"] = final

    def _create_response(self, ref: str, error: str | None = None) -> ApiCreateDatasetResponse:
        response = ApiCreateDatasetResponse()
        response.ref = ref
        response.url = f"https://www.kaggle.com/datasets/{ref}"
        response.status = "error" if error else "ok"
        response.error = error
        return response

    def _api_GetDatasetStatus(self, body: dict[str, Any]) -> KaggleObject:
        dataset = self._dataset(body.get("ownerSlug"), body.get("datasetSlug"))
        if dataset["pending_polls"] > 0:
            dataset["pending_polls"] -= 1
        elif dataset["status"] not in ("ready", "failed"):
            self._finish_processing(dataset)
        response = ApiGetDatasetStatusResponse()
        response.status = _dataset_status(dataset["status"], "dataset status")
        return response

    def _api_GetDataset(self, body: dict[str, Any]) -> KaggleObject:
        owner, slug = body.get("ownerSlug"), body.get("datasetSlug")
        dataset = self._dataset(owner, slug)
        response = ApiDataset()
        response.id = dataset["id"]
        response.ref = f"{owner}/{slug}"
        response.title = dataset["title"]
        response.url = f"https://www.kaggle.com/datasets/{owner}/{slug}"
        response.owner_ref = owner
        response.owner_name = owner
        response.creator_name = owner
        response.is_private = dataset["private"]
        response.last_updated = _now()
        response.current_version_number = dataset["current_version_number"]
        response.total_bytes = sum(len(data) for data in dataset["files"].values())
        versions = []
        for record in reversed(dataset["versions"]):
            version = ApiDatasetVersion()
            version.version_number = record["version_number"]
            version.version_notes = record["notes"]
            version.status = record["status"]
            version.creator_name = owner
            versions.append(version)
        response.versions = versions
        files = dataset["files"]
        response.files = [self._dataset_file(owner, slug, n, files[n]) for n in sorted(files)]
        return response

    def _dataset_file(self, owner: str, slug: str, name: str, data: bytes) -> ApiDatasetFile:
        item = ApiDatasetFile()
        item.ref = name
        item.name = name
        item.dataset_ref = f"{owner}/{slug}"
        item.owner_ref = owner
        item.total_bytes = len(data)
        item.creation_date = _now()
        return item

    def _api_ListDatasetFiles(self, body: dict[str, Any]) -> KaggleObject:
        owner, slug = body.get("ownerSlug"), body.get("datasetSlug")
        dataset = self._dataset(owner, slug)
        files = dataset["files"]
        number = body.get("datasetVersionNumber")
        if number:
            matching = [v for v in dataset["versions"] if v["version_number"] == number]
            if not matching:
                raise _ApiError(404, f"Dataset {owner}/{slug} has no version {number}")
            files = matching[0]["files"]
        response = ApiListDatasetFilesResponse()
        response.dataset_files = [
            self._dataset_file(owner, slug, name, files[name]) for name in sorted(files)
        ]
        return response

    def _api_CreateDataset(self, body: dict[str, Any]) -> KaggleObject:
        owner = body.get("ownerSlug") or self.username
        ref = f"{owner}/{body.get('slug')}"
        if ref in self.datasets:
            return self._create_response(
                ref, f'The requested slug "{body.get("slug")}" is already in use.'
            )
        files = self._resolve_files(body.get("files", []))
        if isinstance(files, str):
            return self._create_response(ref, files)
        dataset = self._new_dataset(ref, body.get("title", ""), bool(body.get("isPrivate")))
        self._add_version(dataset, files, None, body, polls=self.dataset_processing_polls)
        return self._create_response(ref)

    def _new_version(self, ref: str, dataset: dict[str, Any], body: dict[str, Any]) -> KaggleObject:
        files = self._resolve_files(body.get("body", {}).get("files", []))
        if isinstance(files, str):
            return self._create_response(ref, files)
        notes = body.get("body", {}).get("versionNotes")
        self._add_version(dataset, files, notes, body, polls=self.dataset_processing_polls)
        return self._create_response(ref)

    def _api_CreateDatasetVersion(self, body: dict[str, Any]) -> KaggleObject:
        owner, slug = body.get("ownerSlug"), body.get("datasetSlug")
        return self._new_version(f"{owner}/{slug}", self._dataset(owner, slug), body)

    def _api_CreateDatasetVersionById(self, body: dict[str, Any]) -> KaggleObject:
        for ref, dataset in self.datasets.items():
            if dataset["id"] == body.get("id"):
                return self._new_version(ref, dataset, body)
        raise _ApiError(404, f"Dataset {body.get('id')} not found")

    def _api_DeleteDataset(self, body: dict[str, Any]) -> KaggleObject:
        owner, slug = body.get("ownerSlug"), body.get("datasetSlug")
        self._dataset(owner, slug)
        del self.datasets[f"{owner}/{slug}"]
        return ApiDeleteDatasetResponse()

    # blobs

    def _api_StartBlobUpload(self, body: dict[str, Any]) -> KaggleObject:
        token = "blob-" + uuid.uuid4().hex
        self.blobs[token] = {
            "name": body.get("name", ""),
            "type": body.get("type"),
            "content_length": int(body.get("contentLength", 0)),
            "data": None,
        }
        response = ApiStartBlobUploadResponse()
        response.token = token
        response.create_url = f"{BASE_URL}{UPLOAD_PREFIX}{token}"
        return response

    # kernels

    def _kernel(self, ref: str) -> dict[str, Any]:
        if ref not in self.kernels:
            self._next_id += 1
            self.kernels[ref] = {
                "id": self._next_id,
                "versions": [],
                "dataset_sources": [],
                "status_polls": 0,
            }
        return self.kernels[ref]

    def _known_kernel(self, owner: str | None, slug: str | None) -> tuple[str, dict[str, Any]]:
        ref = f"{owner}/{slug}"
        if ref not in self.kernels:  # Kaggle answers 403, not 404, for a kernel it cannot find
            raise _ApiError(403, "Permission 'kernels.get' was denied")
        return ref, self.kernels[ref]

    def _api_SaveKernel(self, body: dict[str, Any]) -> KaggleObject:
        response = ApiSaveKernelResponse()
        slug = body.get("slug")
        if not slug and body.get("id"):
            slug = next((r for r, k in self.kernels.items() if k["id"] == body["id"]), None)
            if slug is None:
                raise _ApiError(404, f"Kernel {body['id']} not found")
        if not slug:
            response.error = "A kernel slug or id is required"
            return response
        ref = slug if "/" in slug else f"{self.username}/{slug}"
        if self.save_kernel_error:
            response.error = self.save_kernel_error
            return response
        sources = body.get("datasetDataSources", [])
        invalid = [source for source in sources if source in self.reject_sources]
        kernel = self._kernel(ref)
        kernel["versions"].append(copy.deepcopy(body))
        kernel["dataset_sources"] = [source for source in sources if source not in invalid]
        kernel["status_polls"] = 0
        response.ref = ref
        response.url = f"https://www.kaggle.com/code/{ref}"
        response.version_number = len(kernel["versions"])
        response.kernel_id = kernel["id"]
        response.invalid_dataset_sources = invalid
        return response

    def _api_GetKernelSessionStatus(self, body: dict[str, Any]) -> KaggleObject:
        _, kernel = self._known_kernel(body.get("userName"), body.get("kernelSlug"))
        script = list(self.kernel_statuses) or ["complete"]
        entry = script[min(kernel["status_polls"], len(script) - 1)]
        kernel["status_polls"] += 1
        status, message = _kernel_status(entry, "kernel_statuses")
        if message is None and status is KernelWorkerStatus.ERROR:
            message = self.failure_message or None
        response = ApiGetKernelSessionStatusResponse()
        response.status = status
        response.failure_message = message
        return response

    def _api_ListKernelSessionOutput(self, body: dict[str, Any]) -> KaggleObject:
        owner, slug = body.get("userName"), body.get("kernelSlug")
        self._known_kernel(owner, slug)
        names = sorted(self.kernel_output_files)
        start = int(body.get("pageToken") or 0)
        size = int(body.get("pageSize") or 20)
        response = ApiListKernelSessionOutputResponse()
        files = []
        for name in names[start : start + size]:
            item = ApiKernelSessionOutputFile()
            item.file_name = name
            quoted = "/".join(urllib.parse.quote(p, safe="") for p in (owner, slug, name))
            item.url = f"{BASE_URL}{OUTPUT_PREFIX}{quoted}"
            files.append(item)
        response.files = files
        if start + size < len(names):
            response.next_page_token = str(start + size)
        if start == 0 and self.kernel_log:
            response.log = self.kernel_log
        return response

    # auth (only used with KAGGLE_API_TOKEN-style bearer tokens)

    def _api_IntrospectToken(self, body: dict[str, Any]) -> KaggleObject:
        response = IntrospectTokenResponse()
        response.active = True
        response.username = self.username
        return response

    # ---- raw HTTP: uploads and output downloads -------------------------------------------

    def _put_upload(self, token: str, data: bytes, content_range: str | None) -> int:
        blob = self.blobs.get(token)
        if blob is None:
            return 404  # the client then starts a fresh upload
        if content_range and content_range.startswith("bytes */"):  # "how far did I get?"
            return 200 if blob["data"] is not None else 308
        blob["data"] = data
        return 200

    def _output_file(self, path: str) -> bytes | None:
        parts = [urllib.parse.unquote(p) for p in path.split("/", 2)]
        if len(parts) != 3 or f"{parts[0]}/{parts[1]}" not in self.kernels:
            return None
        return self.kernel_output_files.get(parts[2])


def _check_localhost_is_ours() -> None:
    """Refuse to start when "localhost" resolves to an address where something else listens."""
    try:
        infos = socket.getaddrinfo("localhost", PORT, type=socket.SOCK_STREAM)
    except OSError as error:
        raise FakeKaggleUnavailable(f"cannot resolve localhost: {error}") from error
    for family, kind, proto, _, address in infos:
        if address[0] == HOST:
            continue
        try:
            with contextlib.closing(socket.socket(family, kind, proto)) as probe:
                probe.settimeout(0.2)
                taken = probe.connect_ex(address) == 0
        except OSError:  # e.g. no IPv6 here: nobody can be listening there either
            continue
        if taken:
            raise FakeKaggleUnavailable(
                f"localhost resolves to {address[0]} where port {PORT} is already served; "
                "the kaggle client could reach that server instead of the fake"
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeKaggle


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: simple and robust
    error_content_type = "application/json"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # http_log keeps what matters; headers (credentials) are never logged

    # -- plumbing

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.server.fake.http_log.append((self.command, self.path.split("?")[0], status))

    def _send_error_json(self, code: int, message: str) -> None:
        self._send(code, json.dumps({"code": code, "message": message}).encode())

    def _auth(self) -> tuple[str | None, str | None, set[str]]:
        """(scheme, basic user name, secrets to redact); the secrets are not kept."""
        header = self.headers.get("Authorization")
        if not header:
            return None, None, set()
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                user, _, secret = base64.b64decode(value).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return scheme, None, set()
            return scheme, user, {secret} if secret else set()
        return scheme, None, {value} if value else set()

    # -- verbs

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self._read_body()
        parts = self.path.split("?")[0].strip("/").split("/")
        with fake._lock:
            if not fake._count_request():
                self._send_error_json(503, "fake Kaggle: request limit reached, stopping")
                return
            if len(parts) != 4 or parts[:2] != ["api", "v1"]:
                fake.unhandled.append(f"POST {self.path}")
                self._send_error_json(404, f"fake Kaggle: no route for POST {self.path}")
                return
            service, method = parts[2], parts[3]
            scheme, user, secrets = self._auth()
            secrets.add(fake.key)
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                body = {"<unparsed>": REDACTED}
            if not isinstance(body, dict):
                body = {"<body>": body}
            secret_fields = service.split(".")[0] in ("security", "users")
            fake.requests.append((method, _redact(body, secrets, secret_fields)))
            fake.auth_schemes.append(scheme)
            if user:
                fake.auth_usernames.add(user)
            del secrets
            try:
                failure = fake._scripted_failure(method)
                if failure is not None:
                    raise failure
                response = fake._call(service, method, body)
            except _ApiError as error:
                self._send_error_json(error.code, error.message)
                return
            except Exception as error:  # a bug in the fake, or a bad script value
                self._send_error_json(500, f"fake Kaggle failed: {type(error).__name__}: {error}")
                return
            self._send(200, json.dumps(type(response).to_dict(response)).encode())

    def do_PUT(self) -> None:
        fake = self.server.fake
        data = self._read_body()
        path = self.path.split("?")[0]
        with fake._lock:
            if not fake._count_request():
                self._send_error_json(503, "fake Kaggle: request limit reached, stopping")
                return
            if not path.startswith(UPLOAD_PREFIX):
                fake.unhandled.append(f"PUT {path}")
                self._send_error_json(404, f"fake Kaggle: no route for PUT {path}")
                return
            token = path[len(UPLOAD_PREFIX) :]
            status = fake._put_upload(token, data, self.headers.get("Content-Range"))
            self._send(status, b"{}")

    def do_GET(self) -> None:
        fake = self.server.fake
        path = self.path.split("?")[0]
        with fake._lock:
            if not fake._count_request():
                self._send_error_json(503, "fake Kaggle: request limit reached, stopping")
                return
            if path.startswith(OUTPUT_PREFIX):
                data = fake._output_file(path[len(OUTPUT_PREFIX) :])
                if data is not None:
                    self._send(200, data, "application/octet-stream")
                    return
                self._send_error_json(404, f"fake Kaggle: no output file at {path}")
                return
            if path == "/":
                self._send(200, b"fake Kaggle", "text/plain")
                return
            fake.unhandled.append(f"GET {path}")
            self._send_error_json(404, f"fake Kaggle: no route for GET {path}")

    do_HEAD = do_GET


# ---- pytest helpers ---------------------------------------------------------------------------


def fake_kaggle_or_skip(**kwargs: Any) -> FakeKaggle:
    """A started FakeKaggle, or pytest.skip when 127.0.0.1:80 cannot be bound. Stop it yourself
    (``with fake_kaggle_or_skip() as fake:`` works: entering a started fake is a no-op)."""
    import pytest

    fake = FakeKaggle(**kwargs)
    try:
        return fake.start()
    except FakeKaggleUnavailable as error:
        pytest.skip(str(error))
    raise AssertionError("unreachable")


def fake_kaggle_fixture(name: str = "fake_kaggle", **kwargs: Any) -> Any:
    """A pytest fixture (assign it at module level) yielding a started FakeKaggle whose env()
    is already applied to this process with monkeypatch; skips when port 80 is unavailable."""
    import pytest

    @pytest.fixture(name=name)
    def _fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKaggle]:
        with fake_kaggle_or_skip(**kwargs) as fake:
            fake.apply_env(monkeypatch)
            yield fake

    return _fixture
