"""The folders a Kaggle push uploads, built and checked offline (no Kaggle client needed).

    build_kernel(...) -> OUT/wheel-dataset/  our wheel + dataset-metadata.json (chexvision-wheel)
                         OUT/source/         the notebook with the install cell, outputs stripped
                         OUT/kernel/         the papermill-rendered notebook + kernel-metadata.json
    validate_build(OUT) -> the problems of a build folder (empty when it can be pushed)

The kernel runs with internet off on "NvidiaTeslaT4" (GPU T4 x2): a P100 cannot run Kaggle's
current torch build. The install cell checks the SHA-256 of the wheel it finds, so a kernel that
attached an older version of the wheel dataset stops instead of running old code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.publishing.kaggle_validate import (
    INSTALL_TAG,
    PLACEHOLDER_OWNER,
    WHEEL_SLUG,
    tags_of,
    validate_build,
)

OUT_MARKER = ".chexvision-kaggle-build"  # only folders holding it are ever emptied
# train -> evaluate -> publish: each kernel mounts the output of the one before it.
UPSTREAM_KERNEL = {
    "chexvision-evaluate": "chexvision-train",
    "chexvision-publish": "chexvision-evaluate",
}
# What the package needs that Kaggle's image does not have (pure-Python wheels, pinned): they
# travel in the wheel dataset and the install cell installs them with --no-deps.
BUNDLED_FOR_KAGGLE = ("grad-cam==1.5.7", "ttach==0.0.3")
# Parameters are stored in plain text in the pushed notebook: never a credential.
SECRET_WORDS = ("token", "key", "password", "passwd", "secret", "credential")

INSTALL_CELL = """\
# Added by `chexvision kaggle push`: install CheXVision from the attached dataset {wheel_ref}
# (internet off), and only the wheel that push uploaded (sha256 {wheel_sha256}).
# Outside Kaggle (no /kaggle/input) this cell does nothing.
import glob
import hashlib
import os
import subprocess
import sys

KAGGLE_INPUT = os.environ.get("CHEXVISION_KAGGLE_ROOT", "/kaggle") + "/input"
if os.path.isdir(KAGGLE_INPUT):
    wheels = []
    for depth in range(5):  # /kaggle/input/<slug>/ or, on some images, deeper
        pattern = KAGGLE_INPUT + "/" + "*/" * depth + "chexvision-*.whl"
        wheels = wheels or sorted(glob.glob(pattern))
    if not wheels:
        raise FileNotFoundError(f"no chexvision-*.whl under {{KAGGLE_INPUT}}: attach {wheel_ref}")
    with open(wheels[-1], "rb") as handle:
        found = hashlib.sha256(handle.read()).hexdigest()
    if found != "{wheel_sha256}":
        raise RuntimeError(
            f"{{wheels[-1]}} has sha256 {{found}}, not the wheel this kernel was pushed with "
            "({wheel_sha256}): the dataset still serves an older version; push again"
        )
    folder = os.path.dirname(wheels[-1])
    # The dependencies Kaggle's image lacks travel in the same dataset: installed first, alone.
    bundled = [w for w in sorted(glob.glob(folder + "/*.whl")) if w != wheels[-1]]
    if bundled:
        subprocess.check_call(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
             "--force-reinstall", *bundled]
        )
    # --no-index: every other dependency must already be installed (Kaggle's image has them); a
    # missing one stops here, named by pip, not at some later import.
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", folder,
         wheels[-1]]
    )
"""


@dataclass(frozen=True)
class KernelBuild:
    out: Path
    owner: str
    slug: str
    notebook: Path  # the rendered notebook in OUT/kernel/
    wheel: Path  # the wheel in OUT/wheel-dataset/
    wheel_sha256: str

    @property
    def kernel_ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def wheel_ref(self) -> str:
        return f"{self.owner}/{WHEEL_SLUG}"

    @property
    def kernel_dir(self) -> Path:
        return self.out / "kernel"

    @property
    def wheel_dir(self) -> Path:
        return self.out / "wheel-dataset"


def resolve_notebook(name: str, notebooks: Path) -> Path:
    """A notebook in `notebooks/` by name (01_train, 02_evaluate.ipynb) or a path to an .ipynb."""
    if "/" in name or name.endswith(".ipynb") and Path(name).is_file():
        path = Path(name).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"notebook file not found: {name}")
    else:
        path = notebooks / f"{name.removesuffix('.ipynb')}.ipynb"
        if not path.is_file():
            available = sorted(p.stem for p in notebooks.glob("*.ipynb"))
            raise ValueError(
                f"--notebook: unknown notebook {name!r}; available in {notebooks}: "
                f"{', '.join(available) or '(none)'} (or pass a path to an .ipynb file)"
            )
    if path.suffix != ".ipynb":
        raise ValueError(f"--notebook: must be an .ipynb file, got {path}")
    return path


def names_for(notebook: Path) -> tuple[str, str]:
    """01_train -> (chexvision-train, "CheXVision train"): Kaggle derives the slug from the
    title, so the two are made together."""
    task = re.sub(r"^[0-9]+[_-]", "", notebook.stem).lower().replace("_", "-").replace(" ", "-")
    task = re.sub(r"[^a-z0-9-]", "", task)
    if not task:
        raise ValueError(f"cannot derive a kernel name from {notebook}")
    return f"chexvision-{task}", "CheXVision " + task.replace("-", " ")


def resolve_owner(owner: str | None, template: Path, dry_run: bool) -> str:
    """--owner, else the owner edited into kernel-metadata.json, else $KAGGLE_USERNAME."""
    template_owner = str(json.loads(template.read_text()).get("id", "")).split("/")[0]
    candidates = (owner, template_owner if template_owner != PLACEHOLDER_OWNER else None)
    chosen = next((c for c in candidates if c), os.environ.get("KAGGLE_USERNAME") or None)
    if chosen and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", chosen):
        raise ValueError(
            f"--owner must be a Kaggle username (letters, digits, -, _), got {chosen!r}"
        )
    if chosen:
        return chosen
    if not dry_run:
        raise ValueError(
            f"no Kaggle owner: pass --owner USER or edit {PLACEHOLDER_OWNER!r} in {template}"
        )
    print(f"warning: owner is the placeholder {PLACEHOLDER_OWNER!r}; pass --owner USER to push")
    return PLACEHOLDER_OWNER


def parse_parameters(specs: list[str]) -> dict[str, str]:
    """-p NAME=VALUE, checked before anything is built: a typo or a credential never reaches a
    notebook file. Values are never echoed."""
    parameters: dict[str, str] = {}
    for spec in specs:
        name, equals, value = spec.partition("=")
        if not equals:
            raise ValueError(f"-p {spec!r}: expected -p NAME=VALUE, e.g. -p epochs=3")
        if not name.isidentifier():
            raise ValueError(f"-p: parameter name {name!r} is not a Python identifier")
        if any(word in name.lower() for word in SECRET_WORDS):
            raise ValueError(
                f"-p: refusing parameter {name!r}: names containing token, key, password or "
                "secret look like credentials, and parameters are stored in plain text in the "
                "pushed notebook. Use Kaggle Secrets (Add-ons > Secrets) instead."
            )
        if name in parameters:
            raise ValueError(f"-p: parameter {name!r} is given twice")
        parameters[name] = value
    return parameters


def prepare_out(out: Path) -> Path:
    """Empty only the subfolders a build owns, and only in a folder a build made itself, so a
    mistyped --out never deletes somebody's files."""
    if out.is_dir() and not (out / OUT_MARKER).exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is a non-empty folder that no build created; choose another")
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_MARKER).touch()
    for name in ("wheel-dataset", "source", "kernel"):
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir()
    return out.resolve()


def build_wheel(repo: Path, dest: Path) -> Path:
    """Our wheel, built without network from a clean copy of the sources (setuptools reuses
    ./build/lib, where a module deleted from the tree would survive)."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch)
        shutil.copy(repo / "pyproject.toml", source)
        shutil.copy(repo / "README.md", source)
        shutil.copytree(
            repo / "chexvision_lib",
            source / "chexvision_lib",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dest),
            str(source),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ValueError(f"building the wheel failed: {done.stderr.strip()[-2000:]}")
    return only_wheel(dest)


def bundle_dependencies(dest: Path) -> list[Path]:
    """Wheels of the dependencies Kaggle's image lacks, for an internet-off kernel: built once
    from the package index (at push time) and kept in a local cache for the next push."""
    cache = Path(os.environ.get("CHEXVISION_WHEEL_CACHE", Path.home() / ".cache/chexvision"))
    cache = cache / "kaggle-wheels"
    missing = [r for r in BUNDLED_FOR_KAGGLE if not _cached_wheel(cache, r)]
    if missing:
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(cache),
            *missing,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ValueError(
                f"building the wheels of {', '.join(missing)} for the Kaggle dataset failed (it "
                f"needs the package index once; later pushes use {cache}): "
                f"{done.stderr.strip()[-1000:]}"
            )
    return [Path(shutil.copy(_cached_wheel(cache, r), dest)) for r in BUNDLED_FOR_KAGGLE]


def _cached_wheel(cache: Path, requirement: str) -> Path | None:
    name, _, version = requirement.partition("==")
    found = sorted(cache.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def only_wheel(folder: Path) -> Path:
    wheels = sorted(folder.glob("chexvision-*.whl"))
    if len(wheels) != 1:
        raise ValueError(f"expected exactly one chexvision-*.whl in {folder}, found {wheels}")
    return wheels[0]


def write_dataset_metadata(folder: Path, owner: str) -> None:
    meta = {
        "title": "CheXVision wheel",
        "id": f"{owner}/{WHEEL_SLUG}",
        "licenses": [{"name": "other"}],
        "description": "The chexvision Python wheel (MIT licence), installed offline by the "
        "CheXVision Kaggle kernels. Uploaded by `chexvision kaggle push`.",
    }
    (folder / "dataset-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def stage_notebook(source: Path, staged: Path, wheel_ref: str, wheel_sha256: str) -> None:
    """The notebook with no outputs and the install cell before its first code cell."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    if nb.nbformat_minor < 5:  # the install cell has an id; cell ids arrived in nbformat 4.5
        from nbformat.v4.nbbase import random_cell_id

        nb.nbformat_minor = 5
        for cell in nb.cells:
            cell.setdefault("id", random_cell_id())
    n_parameters = sum("parameters" in tags_of(c) for c in nb.cells)
    if n_parameters != 1:
        raise ValueError(
            f"{source}: needs exactly one cell tagged 'parameters' (papermill injects the -p "
            f"values after it), found {n_parameters}"
        )
    nb.cells = [c for c in nb.cells if INSTALL_TAG not in tags_of(c)]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    install = nbformat.v4.new_code_cell(
        INSTALL_CELL.format(wheel_ref=wheel_ref, wheel_sha256=wheel_sha256).rstrip("\n"),
        metadata={"tags": [INSTALL_TAG]},
    )
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    nb.cells.insert(first_code, install)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata.setdefault("language_info", {})["name"] = "python"
    nbformat.write(nb, staged)


def render_notebook(staged: Path, rendered: Path, parameters: dict[str, str]) -> None:
    """papermill --prepare-only: the -p values injected after the parameters cell, not run."""
    import papermill

    known = papermill.inspect_notebook(str(staged))
    unknown = [name for name in parameters if name not in known]
    if unknown:  # papermill only warns about these
        raise ValueError(
            f"-p: {staged.name} has no parameter {', '.join(map(repr, unknown))}; its "
            f"'parameters' cell defines: {', '.join(known) or '(nothing)'}"
        )
    papermill.execute_notebook(
        str(staged),
        str(rendered),
        parameters={name: typed_value(value) for name, value in parameters.items()},
        prepare_only=True,
        kernel_name="python3",
        language="python",
        log_output=False,
        progress_bar=False,
    )


def typed_value(text: str) -> object:
    """As papermill's CLI reads -p: ints, floats, True/False/None typed; anything else a string."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def write_kernel_metadata(
    template: Path,
    kernel_dir: Path,
    owner: str,
    slug: str,
    title: str,
    code_file: str,
    internet: bool,
) -> None:
    meta = json.loads(template.read_text())
    wheel_ref = f"{owner}/{WHEEL_SLUG}"
    sources = [s for s in meta.get("dataset_sources", []) if s.split("/")[1:2] != [WHEEL_SLUG]]
    meta.update(
        id=f"{owner}/{slug}",
        title=title,
        code_file=code_file,
        dataset_sources=[*sources, wheel_ref],
    )
    if internet:
        meta["enable_internet"] = True
    upstream = UPSTREAM_KERNEL.get(slug)
    if upstream:  # a chained kernel reads the run folder its upstream kernel left
        kernel_sources = list(meta.get("kernel_sources", []))
        ref = f"{owner}/{upstream}"
        meta["kernel_sources"] = kernel_sources + ([ref] if ref not in kernel_sources else [])
    (kernel_dir / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def build_kernel(
    notebook: Path,
    owner: str,
    out: Path,
    parameters: dict[str, str],
    *,
    template: Path,
    repo: Path,
    wheel: Path | None = None,
    internet: bool = False,
) -> KernelBuild:
    """Every folder a push uploads, validated; nothing leaves this machine."""
    slug, title = names_for(notebook)
    if wheel is not None and not (wheel.is_file() and wheel.name.startswith("chexvision-")):
        raise ValueError(f"--wheel must be an existing chexvision-*.whl file, got {wheel}")
    kept = Path(tempfile.mkdtemp()) / wheel.name if wheel is not None else None
    if kept is not None:
        shutil.copy(wheel, kept)  # an --out/wheel-dataset wheel is deleted by prepare_out
    out = prepare_out(out)
    wheel_dir = out / "wheel-dataset"
    built = Path(shutil.copy(kept, wheel_dir)) if kept else build_wheel(repo, wheel_dir)
    bundle_dependencies(wheel_dir)
    write_dataset_metadata(wheel_dir, owner)
    sha256 = file_sha256(built)
    staged = out / "source" / notebook.name
    stage_notebook(notebook, staged, f"{owner}/{WHEEL_SLUG}", sha256)
    rendered = out / "kernel" / f"{slug}.ipynb"
    render_notebook(staged, rendered, parameters)
    write_kernel_metadata(template, out / "kernel", owner, slug, title, rendered.name, internet)
    problems = validate_build(out, list(parameters), allow_placeholder=owner == PLACEHOLDER_OWNER)
    if problems:
        raise ValueError("the build failed validation:\n  - " + "\n  - ".join(problems))
    return KernelBuild(out, owner, slug, rendered, built, sha256)
