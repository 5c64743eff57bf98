"""What a pushable Kaggle build folder is, and the check of one: every problem, named.

Kept apart from the build so `chexvision kaggle validate OUT` can check a folder built earlier (or
edited by hand) without building anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

PLACEHOLDER_OWNER = "your-kaggle-username"
NIH_DATASET = "nih-chest-xrays/data"
WHEEL_SLUG = "chexvision-wheel"
# T4 x2. Not NvidiaTeslaP100: Kaggle's current torch build no longer ships kernels for the P100's
# compute capability (sm_60), so a P100 session fails at the first CUDA call.
MACHINE_SHAPE = "NvidiaTeslaT4"
INSTALL_TAG = "kaggle-install"

REQUIRED = {
    "id": str,
    "title": str,
    "code_file": str,
    "language": str,
    "kernel_type": str,
    "is_private": bool,
    "enable_gpu": bool,
    "enable_internet": bool,
    "machine_shape": str,
    "dataset_sources": list,
    "competition_sources": list,
    "kernel_sources": list,
}


def kernel_slug(title: str) -> str:
    """The slug Kaggle derives from a title (python-slugify, as the Kaggle client compares)."""
    try:
        from slugify import slugify

        return slugify(title)
    except ImportError:
        return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def tags_of(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _check_fields(meta: dict, where: Path, problems: list[str]) -> bool:
    bad = False
    for key, kind in REQUIRED.items():
        if key not in meta:
            problems.append(f"{where}: missing required field '{key}'")
            bad = True
        elif not isinstance(meta[key], kind):
            problems.append(f"{where}: '{key}' must be a JSON {kind.__name__}, got {meta[key]!r}")
            bad = True
    return not bad


def _check_sources(meta: dict, where: Path, owner: str, problems: list[str]) -> None:
    for key in ("dataset_sources", "competition_sources", "kernel_sources", "model_sources"):
        for item in meta.get(key, []):
            if not isinstance(item, str):
                problems.append(f"{where}: {key} entries must be strings, got {item!r}")
            elif key in ("dataset_sources", "kernel_sources") and not re.fullmatch(
                r"[^/\s]+/[^/\s]+(/\d+)?", item
            ):
                problems.append(f"{where}: {key} entry {item!r} must look like 'owner/slug'")
    for needed in (NIH_DATASET, f"{owner}/{WHEEL_SLUG}"):
        if needed not in meta["dataset_sources"]:
            problems.append(f"{where}: dataset_sources must include {needed!r}")


def check_kernel_metadata(
    meta: dict, where: Path, allow_placeholder: bool, problems: list[str]
) -> str | None:
    """The owner when the fields can be read (problems are appended either way)."""
    if not _check_fields(meta, where, problems):
        return None  # the checks below read these fields
    parts = meta["id"].split("/")
    if len(parts) != 2 or not all(parts):
        problems.append(f"{where}: id must be 'owner/kernel-slug', got {meta['id']!r}")
        return None
    owner, slug = parts
    if owner == PLACEHOLDER_OWNER and not allow_placeholder:
        problems.append(
            f"{where}: id still has the placeholder owner '{PLACEHOLDER_OWNER}'; pass --owner USER"
        )
    if len(slug) < 5:
        problems.append(f"{where}: the kernel slug {slug!r} must have at least 5 characters")
    if len(meta["title"]) < 5:
        problems.append(f"{where}: title must have at least 5 characters")
    if kernel_slug(meta["title"]) != slug.lower():
        problems.append(
            f"{where}: title {meta['title']!r} slugs to {kernel_slug(meta['title'])!r}, not the "
            f"id's slug {slug!r}; Kaggle derives the slug from the title, so they must agree"
        )
    expected = {"language": "python", "kernel_type": "notebook", "enable_gpu": True}
    for key, value in expected.items():
        if meta[key] != value:
            problems.append(f"{where}: {key} must be {value!r}, got {meta[key]!r}")
    if meta.get("enable_tpu", False) is not False:
        problems.append(f"{where}: enable_tpu must be false or absent")
    if meta["machine_shape"] != MACHINE_SHAPE:
        problems.append(
            f"{where}: machine_shape must be {MACHINE_SHAPE!r} (GPU T4 x2), got "
            f"{meta['machine_shape']!r}; a P100 cannot run Kaggle's current torch"
        )
    _check_sources(meta, where, owner, problems)
    code_file = meta["code_file"]
    if Path(code_file).is_absolute() or not code_file.endswith(".ipynb"):
        problems.append(
            f"{where}: code_file must be a relative path to an .ipynb file, got {code_file!r}"
        )
    return owner


def check_notebook(notebook: Path, expected_params: list[str], problems: list[str]) -> None:
    import nbformat

    try:
        nb = nbformat.read(notebook, as_version=4)
        nbformat.validate(nb)
    except Exception as error:  # nbformat raises several kinds for a broken file
        problems.append(f"{notebook}: not a valid notebook ({error})")
        return
    cells = nb["cells"]
    with_outputs = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    if with_outputs:
        problems.append(f"{notebook}: cells {with_outputs} carry outputs or execution counts")
    install = [i for i, c in enumerate(cells) if INSTALL_TAG in tags_of(c)]
    parameters = [i for i, c in enumerate(cells) if "parameters" in tags_of(c)]
    if len(parameters) != 1:
        problems.append(
            f"{notebook}: expected one cell tagged 'parameters', found {len(parameters)}"
        )
        return
    if len(install) != 1:
        problems.append(
            f"{notebook}: expected one cell tagged {INSTALL_TAG!r}, found {len(install)}"
        )
    else:
        source = "".join(cells[install[0]]["source"])
        if "--no-index" not in source:
            problems.append(
                f"{notebook}: the {INSTALL_TAG!r} cell must pip install with --no-index (the "
                "kernel has no internet)"
            )
        if install[0] > parameters[0]:
            problems.append(
                f"{notebook}: the {INSTALL_TAG!r} cell must come before the parameters cell"
            )
    _check_injected(nb, parameters[0], notebook, expected_params, problems)


def _check_injected(
    nb: dict, parameters_cell: int, notebook: Path, expected: list[str], problems: list[str]
) -> None:
    cells = nb["cells"]
    injected_params = nb.get("metadata", {}).get("papermill", {}).get("parameters", {})
    for name in expected:
        if name not in injected_params:
            problems.append(f"{notebook}: parameter {name!r} was not injected by papermill")
    if not injected_params:
        return
    after = parameters_cell + 1
    if after >= len(cells) or "injected-parameters" not in tags_of(cells[after]):
        problems.append(
            f"{notebook}: no 'injected-parameters' cell right after the parameters cell"
        )
        return
    injected = "".join(cells[after]["source"])
    for name in injected_params:
        if not re.search(rf"^{re.escape(name)} = ", injected, re.MULTILINE):
            problems.append(f"{notebook}: the injected-parameters cell does not set {name!r}")


def check_wheel_dataset(folder: Path, owner: str, problems: list[str]) -> None:
    where = folder / "dataset-metadata.json"
    try:
        meta = json.loads(where.read_text())
    except (OSError, ValueError) as error:
        problems.append(f"{where}: cannot read ({error})")
        return
    if meta.get("id") != f"{owner}/{WHEEL_SLUG}":
        problems.append(f"{where}: id must be '{owner}/{WHEEL_SLUG}', got {meta.get('id')!r}")
    if not 6 <= len(str(meta.get("title", ""))) <= 50:
        problems.append(f"{where}: title must have 6 to 50 characters")
    if len(meta.get("licenses", [])) != 1:
        problems.append(f"{where}: licenses must have exactly one entry")
    wheels = sorted(p.name for p in folder.glob("chexvision-*.whl"))
    if len(wheels) != 1:
        problems.append(f"{folder}: expected exactly one chexvision-*.whl, found {wheels}")


def validate_build(
    out: Path, expected_params: list[str] = (), allow_placeholder: bool = False
) -> list[str]:
    """Every problem of build folder `out` (kernel/, wheel-dataset/); empty when pushable."""
    where = Path(out) / "kernel" / "kernel-metadata.json"
    try:
        meta = json.loads(where.read_text())
    except (OSError, ValueError) as error:
        return [f"{where}: cannot read ({error}); is {out} a folder built by `kaggle push`?"]
    if not isinstance(meta, dict):
        return [f"{where}: must hold a JSON object"]
    problems: list[str] = []
    owner = check_kernel_metadata(meta, where, allow_placeholder, problems)
    if owner is None:
        return problems
    notebook = where.parent / meta["code_file"]
    if not notebook.is_file():
        problems.append(f"{where}: code_file {meta['code_file']!r} not found in {where.parent}")
    else:
        check_notebook(notebook, list(expected_params), problems)
    check_wheel_dataset(Path(out) / "wheel-dataset", owner, problems)
    return problems
