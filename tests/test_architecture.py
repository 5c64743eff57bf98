"""The package's shape: imports point down the layers, no cycles, every module ships in the wheel,
and the command line starts without torch."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "chexvision_lib"

# The layer order, lowest first. A module may import from its own layer or any layer below it,
# never from one above. Evaluation sits below training because training validates with its
# metrics; evaluation itself scores a saved model and never needs the training loop.
LAYERS = (
    "core",  # labels, config checking, atomic files, hashing, predictions schema, Hub token
    "runtime",  # devices, autocast, torch.distributed glue
    "data",  # indexes, splits, decoding, cache, batches, synthetic set
    "models",  # architectures, loading, inference
    "evaluation",  # metrics, evaluate, compare, label sets
    "training",  # the loop, its state, checkpoints
    "explain",  # Grad-CAM, localisation
    "reporting",  # figures, the report
    "publishing",  # model folder, model card, Hub push
    "serving",  # the app, the Space folder
    "studies",  # grids, folds, external validation, the demo
    "notebook",  # what the notebooks call
    "cli",  # every parser
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root (the public API)


def imported_modules(module: str, path: Path) -> set[tuple[str, tuple[str, ...]]]:
    """(target module, names) for every import of a package module, top level or in a function."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: None if is_package else -1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = tuple(alias.name for alias in node.names)
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            targets = [(s, ()) for s in submodules] or [(base, names)]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("chexvision_lib")
        ):
            targets = [(node.args[0].value, ())]  # importlib.import_module("chexvision_lib.x")
        else:
            continue
        for target, names in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("chexvision_lib") and target != module:
                found.add((target, names))
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names in imported_modules(module, path):
            if target != "chexvision_lib" and module.startswith(target + "."):
                continue  # a subpackage's own __init__ runs first anyway: not an edge
            if target == "chexvision_lib" and names == ("__version__",):
                continue  # the version string: the root imports nothing at load time
            graph[module].add(target)
    return graph


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(LAYERS), subpackages ^ set(LAYERS)
    assert not [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"], (
        "modules belong in a layer's folder"
    )


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in import_graph().items():
        source = layer_of(module)
        for target in targets:
            destination = layer_of(target)
            if source is None:
                continue  # the public API may name anything (lazily)
            if destination is None or LAYERS.index(destination) > LAYERS.index(source):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycles():
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_graph_sees_root_and_string_imports(tmp_path, monkeypatch):
    """The guard itself: an upward import through the public API or importlib is an edge."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib\n"
        "def f():\n"
        "    from chexvision_lib import fit\n"
        "    importlib.import_module('chexvision_lib.cli.main')\n"
    )
    found = {target for target, _ in imported_modules("chexvision_lib.core.probe", probe)}
    assert {"chexvision_lib", "chexvision_lib.cli.main"} <= found


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_no_function_is_longer_than_120_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 120:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert not long, long


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )


HEAVY = ("torch", "pandas", "numpy", "matplotlib", "gradio", "huggingface_hub")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["compare", "--help"]])
def test_help_imports_nothing_heavy(argv):
    code = (
        "import sys\nfrom chexvision_lib.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert run_python(code).stdout.strip().splitlines()[-1] == "[]"


def test_public_api_is_lazy_and_complete():
    code = (
        "import sys, chexvision_lib\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "print(all(getattr(chexvision_lib, name) is not None for name in dir(chexvision_lib)))"
    )
    heavy, resolved = run_python(code).stdout.strip().splitlines()
    assert heavy == "[]"
    assert resolved == "True"


def test_every_train_flag_has_help():
    from chexvision_lib.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    missing = [
        f"{name} {' '.join(action.option_strings) or action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not action.help and action.dest != "help"
    ]
    assert not missing, missing


def test_wheel_holds_every_module(tmp_path):
    # Built from a copy: setuptools leaves a build/ folder beside the sources it builds.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".*", "runs", "build", "dist", "*.egg-info")
    )
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    (wheel,) = tmp_path.glob("chexvision-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.endswith(".py")}
    expected = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    assert expected - shipped == set()
