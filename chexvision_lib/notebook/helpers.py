"""What the notebooks need beyond the pipeline: find the data, check parameters, launch training.

The notebooks only import, call and plot; the little logic they need lives here.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from chexvision_lib.data.nih_index import DATA_ENTRY_PATTERN
from chexvision_lib.data.synthetic import write_synthetic_nih
from chexvision_lib.notebook.kaggle_session import kaggle_input
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit
from chexvision_lib.training.recipes import config_with_recipe

DEFAULT_CACHE_SIZE = 256  # without a recipe or an image_size


def _has_nih_metadata(root: Path, max_depth: int = 5) -> bool:
    for directory, dirs, files in os.walk(root):
        if any(DATA_ENTRY_PATTERN.match(name) for name in files):
            return True
        if len(Path(directory).relative_to(root).parts) >= max_depth:
            dirs.clear()
        dirs[:] = [d for d in dirs if not d.startswith("images_")]  # skip 112k image files
    return False


def find_data_root(
    data_root: str, work_dir: str | Path, synthetic_patients: int = 240, synthetic_size: int = 256
) -> Path:
    """Resolve the notebook's `data_root` parameter.

    - a path: used as is (an error lists what was checked if it does not exist);
    - "auto": the NIH dataset under /kaggle/input if attached, else the synthetic set;
    - "synthetic": the built-in synthetic set, written once under work_dir.
    """
    looked = []
    if data_root not in ("auto", "synthetic"):
        path = Path(data_root)
        if path.exists():
            return path
        raise FileNotFoundError(
            f"data_root {data_root!r} does not exist; looked at "
            f"{path.resolve()}. Pass a folder, 'auto' or 'synthetic'."
        )
    if data_root == "auto":
        mounted = kaggle_input()
        looked.append(str(mounted))
        if mounted.is_dir() and _has_nih_metadata(mounted):
            return mounted
    synthetic = Path(work_dir) / "synthetic_nih"
    if not (synthetic / "synthetic_nih.json").exists():
        print(
            f"no NIH data found in {looked or '(not searched)'}: writing the synthetic set "
            f"to {synthetic}"
        )
        write_synthetic_nih(synthetic, n_patients=synthetic_patients, image_size=synthetic_size)
    return synthetic


def training_config(
    recipe: str | None, cache: str | Path, out: str | Path, **parameters: object
) -> TrainConfig:
    """The notebook's TrainConfig: the recipe's values, overridden by every parameter that is not
    None (pretrained="scratch" asks for no pretrained weights where the recipe has some)."""
    values: dict[str, object] = {"recipe": recipe} if recipe else {}
    for name, value in parameters.items():
        if value is not None:
            values[name] = None if (name == "pretrained" and value == "scratch") else value
    return config_with_recipe({**values, "cache": str(cache), "out": str(out)})


def cache_size(recipe: str | None, image_size: int | None) -> int:
    """The side the cache is prepared at: the model input the notebook will train at."""
    chosen = training_config(recipe, "-", "-", image_size=image_size).image_size
    return chosen or DEFAULT_CACHE_SIZE


def check_parameters() -> None:
    """Reject papermill parameters the notebook does not declare (papermill only warns).

    Reads this kernel's input history: papermill's injected cell (source starting with
    "# Parameters") runs right after the notebook's own `parameters` cell; any name assigned in
    the injected cell but not in the parameters cell is an error. Run by hand (no injection),
    there is nothing to check.
    """
    try:
        history = get_ipython().user_ns["In"]  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        return
    for position, source in enumerate(history):
        if source.startswith("# Parameters\n") and position > 0:
            injected, declared = _assigned(source), _assigned(history[position - 1])
            unknown = sorted(injected - declared)
            if unknown:
                raise ValueError(
                    f"unknown notebook parameter(s) {unknown}; this notebook "
                    f"accepts: {sorted(declared)}"
                )


def _assigned(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def launch_training(config: TrainConfig, gpus: int | None = None) -> Path:
    """Train in this process, or under torchrun with one process per GPU when there are several.

    A fork-based launcher breaks once CUDA is initialised (as it is in a notebook), so several GPUs
    mean a fresh `torchrun` subprocess reading the config from a JSON file. An existing run with a
    checkpoint is resumed either way.
    """
    gpus = torch.cuda.device_count() if gpus is None else gpus
    run = Path(config.out)
    resume = (run / "checkpoints" / "last.pt").exists()
    if gpus <= 1:
        return fit(config, resume=resume)
    run.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "chexvision_lib.cli",
        "train",
    ]
    if resume:
        command += ["--resume", str(run)]
    else:
        config_file = run / "launch_config.json"
        config_file.write_text(json.dumps(config.__dict__, indent=2))
        command += ["--config", str(config_file)]
    print(" ".join(command))
    subprocess.run(command, check=True)
    return run


def show(figure: Figure) -> None:
    """Display a figure inline as a PNG, whatever matplotlib backend the kernel runs."""
    from IPython.display import Image, display

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    display(Image(data=buffer.getvalue()))
