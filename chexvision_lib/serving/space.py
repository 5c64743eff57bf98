"""`chexvision space`: a Hugging Face Space folder that serves one published model, pinned.

    write_space_folder(MODEL_DIR, OUT, repo_id=..., revision=...)  -> OUT with app.py,
        requirements.txt and README.md (Space front matter + the research-only statement)
    load_pinned_model(repo_id, revision, weights_sha256)           what the Space's app.py calls

The Space downloads the model by repo id at one commit (never a branch: a branch moves, and the
page would silently serve other weights), checks that its model.safetensors is byte for byte the
file in MODEL_DIR (sha256 recorded here, where the model was tested), and serves `app.build_app`.
Nothing here touches the network; pushing the folder is left to the user (README.md says how).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from chexvision_lib import __version__
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.models.registry import WEIGHTS_FILE, ChestClassifier
from chexvision_lib.serving.settings import DEFAULT_TITLE, GRADIO_VERSION

SPACE_FILES: tuple[str, ...] = ("app.py", "requirements.txt", "README.md")
COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# Front matter values the Hub accepts (colorFrom/colorTo are from a fixed list).
SPACE_EMOJI = "🩻"
SPACE_COLOUR_FROM = "blue"
SPACE_COLOUR_TO = "gray"
SPACE_LICENSE = "mit"  # the package's and the model folders' licence
SHORT_DESCRIPTION = "Chest X-ray classifier demo; research use only"  # Hub limit: 60 characters


def check_revision(revision: str | None) -> str:
    """A full 40-character commit hash, or ValueError saying why pinning needs one."""
    if not revision:
        raise ValueError(
            "--revision is required: the Space must serve one fixed commit of the model repo "
            "(the commit hash that `chexvision push` printed, or HfApi().model_info(repo_id).sha)"
        )
    if not COMMIT_HASH.fullmatch(revision):
        raise ValueError(
            f"--revision {revision!r} is not a commit hash; a branch or tag can move, so a Space "
            "pinned to it could serve other weights. Pass the full 40-character commit hash."
        )
    return revision


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.fullmatch(repo_id or ""):
        raise ValueError(f"--repo-id must look like owner/name, got {repo_id!r}")
    return repo_id


def check_package_requirement(requirement: str) -> str:
    """A pinned pip requirement for chexvision: `chexvision==X.Y.Z` or a wheel URL."""
    line = requirement.strip()
    pinned = "==" in line or (line.startswith("https://") and line.endswith(".whl"))
    if not pinned or "\n" in line:
        raise ValueError(
            f"--package {requirement!r} is not pinned; pass chexvision=={__version__} (a PyPI "
            "release) or the https:// URL of a chexvision wheel"
        )
    return line


def _model_folder(model_dir: str | Path) -> Path:
    """MODEL_DIR itself, or a run folder's model/ (as `load_model` accepts)."""
    folder = Path(model_dir)
    if (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{model_dir}: no {WEIGHTS_FILE}; MODEL_DIR must be the local model folder that was "
            "pushed to the Hub (from `chexvision card`) or its run folder"
        )
    return folder


def write_space_folder(
    model_dir: str | Path,
    out: str | Path,
    *,
    repo_id: str,
    revision: str | None,
    package: str | None = None,
    title: str = DEFAULT_TITLE,
) -> Path:
    """Write app.py, requirements.txt and README.md of a Space serving `repo_id` at `revision`.

    `model_dir`: the local copy of the pushed model folder: it is loaded once (it must work with
    the page) and its weights' sha256 is recorded for the Space to check. `package`: the pinned
    chexvision requirement line; None writes a commented placeholder that the user must set (the
    Space's app.py stops with a message saying so until then). `out` must be absent or empty.
    """
    from chexvision_lib.models.loading import load_model

    repo_id = check_repo_id(repo_id)
    revision = check_revision(revision)
    package_line = check_package_requirement(package) if package is not None else None
    folder = _model_folder(model_dir)
    model = load_model(folder)  # raises ValueError naming the folder if it does not load
    weights_sha256 = file_sha256(folder / WEIGHTS_FILE)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new OUT")
    out.mkdir(parents=True, exist_ok=True)
    (out / "app.py").write_text(space_app_py(repo_id, revision, weights_sha256))
    (out / "requirements.txt").write_text(space_requirements(package_line))
    (out / "README.md").write_text(
        space_readme(repo_id, revision, weights_sha256, model, title, package_line is not None)
    )
    return out


def space_app_py(repo_id: str, revision: str, weights_sha256: str) -> str:
    return f'''"""Hugging Face Space: the CheXVision demo page for one model, pinned to one commit.

Model: {repo_id}

Written by `chexvision space` (CheXVision {__version__}).
{DISCLAIMER}
"""

try:
    from chexvision_lib.serving import build_app, launch_options, load_pinned_model
except ImportError as error:  # requirements.txt still has the placeholder chexvision line
    raise SystemExit(
        f"CheXVision is not installed ({{error}}): set the chexvision line in requirements.txt, "
        "as README.md explains."
    ) from None

MODEL_REPO_ID = "{repo_id}"
# A commit of the model repository, not a branch: the Space keeps serving exactly these weights.
MODEL_REVISION = "{revision}"
# sha256 of model.safetensors in the model folder this Space was written from (where it was
# tested); the Space refuses to start if the file at MODEL_REVISION differs.
MODEL_WEIGHTS_SHA256 = "{weights_sha256}"

model = load_pinned_model(MODEL_REPO_ID, MODEL_REVISION, MODEL_WEIGHTS_SHA256)
demo = build_app(model, source=f"{{MODEL_REPO_ID}} @ {{MODEL_REVISION[:12]}}")

if __name__ == "__main__":
    demo.launch(**launch_options())
'''


def space_requirements(package_line: str | None) -> str:
    if package_line is None:
        package_block = (
            "# chexvision: SET THIS before pushing the Space. Pin it: a PyPI release\n"
            f"# (chexvision=={__version__}) or the https:// URL of a wheel you uploaded\n"
            "# (built with `python -m build --wheel`). An unpinned `chexvision` could install\n"
            "# another release, or another project's package of that name. Until it is set,\n"
            "# app.py stops with a message.\n"
            f"# chexvision=={__version__}\n"
        )
    else:
        package_block = f"# chexvision, pinned when this folder was written:\n{package_line}\n"
    return (
        f"# Hugging Face Space requirements, written by `chexvision space` ({__version__}).\n"
        "# gradio: the release the page was tested with (also sdk_version in README.md).\n"
        f"gradio=={GRADIO_VERSION}\n"
        f"{package_block}"
    )


def space_readme(
    repo_id: str,
    revision: str,
    weights_sha256: str,
    model: ChestClassifier,
    title: str,
    package_set: bool,
) -> str:
    size = model.preprocessing["image_size"]
    front_matter = "\n".join(
        [
            "---",
            f"title: {json.dumps(title, ensure_ascii=False)}",  # quoted: YAML
            f"emoji: {SPACE_EMOJI}",
            f"colorFrom: {SPACE_COLOUR_FROM}",
            f"colorTo: {SPACE_COLOUR_TO}",
            "sdk: gradio",
            f"sdk_version: {GRADIO_VERSION}",
            "app_file: app.py",
            "pinned: false",
            f"license: {SPACE_LICENSE}",
            f"short_description: {SHORT_DESCRIPTION}",
            "models:",
            f"  - {repo_id}",
            "---",
        ]
    )
    todo = (
        ""
        if package_set
        else (
            "\n**Before pushing:** set the `chexvision` line in `requirements.txt` (a pinned\n"
            "PyPI release or the URL of a wheel). It is a placeholder because this package is\n"
            "not installable from a fixed public source yet; an unpinned name could install\n"
            "something else.\n"
        )
    )
    return f"""{front_matter}

# {title}: `{repo_id}`

> **{DISCLAIMER}**
>
> This page shows what a model trained on NIH ChestX-ray14 outputs for one image. Its
> predictions can be wrong, and the dataset's labels were mined from reports and are themselves
> noisy. Do not upload images that identify a person.

Upload a chest radiograph (PNG or JPEG) or pick a synthetic example. The page shows the
probability that the film is abnormal (any of the 14 findings) against the model's stored
threshold, the 14 finding probabilities with their thresholds, the pixels the model saw and a
Grad-CAM overlay for the output you choose. Images are decoded and resized exactly as
`chexvision predict` does, so both give the same numbers.

- Model: [`{repo_id}`](https://huggingface.co/{repo_id}/tree/{revision}),
  commit `{revision}`: `{model.arch}`, {model.head} head, {size}x{size} px grey input.
- Weights: `model.safetensors`, sha256 `{weights_sha256}`.
  The Space checks this when it starts and refuses other weights.
{todo}
## Pushing this folder

```python
from huggingface_hub import HfApi

api = HfApi()  # token from `hf auth login` or HF_TOKEN
api.create_repo("<owner>/<space-name>", repo_type="space", space_sdk="gradio", exist_ok=True)
api.upload_folder(folder_path=".", repo_id="<owner>/<space-name>", repo_type="space")
```

Written by `chexvision space` (CheXVision {__version__}).
"""


def load_pinned_model(repo_id: str, revision: str, weights_sha256: str) -> ChestClassifier:
    """Load `repo_id` at commit `revision` on the CPU; refuse weights other than the tested ones."""
    from huggingface_hub import hf_hub_download

    from chexvision_lib.models.loading import load_model

    weights = hf_hub_download(repo_id, WEIGHTS_FILE, revision=check_revision(revision))
    found = file_sha256(weights)
    if found != weights_sha256:
        raise ValueError(
            f"{repo_id}@{revision}: {WEIGHTS_FILE} has sha256 {found}, but this Space was written "
            f"for {weights_sha256}; rerun `chexvision space` with the folder that was pushed"
        )
    return load_model(repo_id, device="cpu", revision=revision)
