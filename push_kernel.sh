#!/usr/bin/env bash
# push_kernel.sh: run a CheXVision notebook headless on Kaggle (GPU T4 x2, internet off).
#
# One direction of flow, each step a function whose output is a folder you can open:
#   build_wheel_dataset -> OUT/wheel-dataset/   (our wheel + dataset-metadata.json)
#   render_notebook     -> OUT/source/          (notebook + install cell, outputs stripped)
#                       -> OUT/kernel/          (papermill-rendered notebook with the -p values)
#   write_kernel_metadata -> OUT/kernel/kernel-metadata.json, then validate_build checks it all
#   publish_wheel_dataset, push_kernel, wait_for_kernel, download_output talk to Kaggle.
# Credentials: only the Kaggle CLI touches them (~/.kaggle/kaggle.json, KAGGLE_USERNAME and
# KAGGLE_KEY, or its newer token login, all read by the CLI itself). This script never reads,
# prints or writes a key; KAGGLE_USERNAME, a name, is only a fallback for --owner.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
METADATA_TEMPLATE="$REPO/kernel-metadata.json"

# Facts shared with the embedded Python helper (handed over as environment variables).
PLACEHOLDER_OWNER="your-kaggle-username"
NIH_DATASET="nih-chest-xrays/data"
WHEEL_SLUG="chexvision-wheel"
# T4 x2. Not NvidiaTeslaP100: Kaggle's current torch build no longer ships kernels for the P100's
# compute capability (sm_60), so a P100 session fails at the first CUDA call.
MACHINE_SHAPE="NvidiaTeslaT4"
INSTALL_TAG="kaggle-install"
OUT_MARKER=".push_kernel"

usage() {
  cat <<EOF
Usage: push_kernel.sh [options]

Run a CheXVision notebook on Kaggle without opening the browser: build this package's wheel,
publish it as a new version of the Kaggle dataset OWNER/$WHEEL_SLUG, render the notebook with
papermill parameters, push it as the private kernel OWNER/chexvision-<task>, and optionally
wait for it and download its output.

The kernel runs with internet off, on "$MACHINE_SHAPE" (GPU T4 x2). A P100 cannot run Kaggle's
current torch build, so kernel-metadata.json pins the T4 and validation rejects anything else.
An install cell tagged "$INSTALL_TAG" is placed before the notebook's first code cell; it runs
  pip install --no-index --find-links /kaggle/input/$WHEEL_SLUG chexvision
so the package comes from the attached dataset, not from the internet.

Options:
  --notebook NAME    notebook to run: a name in notebooks/ (01_train, 02_evaluate, 03_publish;
                     ".ipynb" optional) or a path to an .ipynb file. Default: 01_train.
                     The kernel slug is chexvision-<task>, <task> being the name without its
                     number prefix (01_train -> chexvision-train). Kernels other than train
                     get OWNER/chexvision-train as a kernel source, to read its run folder.
  -p NAME=VALUE      notebook parameter, repeatable; passed to papermill as "-p NAME VALUE"
                     (ints, floats, True/False/None are typed, anything else is a string).
                     NAME must be defined in the notebook's "parameters" cell. Names that look
                     like credentials (token, key, password, secret) are refused: parameters
                     are stored in plain text in the pushed notebook; use Kaggle Secrets.
  --owner USER       Kaggle username that owns the kernel and the wheel dataset. Default: the
                     owner in kernel-metadata.json's "id" once edited, else \$KAGGLE_USERNAME.
  --out DIR          build folder (default: build/kaggle). Its wheel-dataset/, source/ and
                     kernel/ subfolders are rebuilt on every run.
  --wheel PATH       reuse a prebuilt chexvision-*.whl instead of building one
  --internet         push with enable_internet true (e.g. 03_publish must reach the Hub)
  --dry-run          build and validate the exact folders that would be pushed, then stop:
                     no network and no kaggle CLI needed
  --wait             after pushing, poll "kaggle kernels status" until complete or error,
                     then download the output with "kaggle kernels output"
  --interval SEC     seconds between status polls (default: 60); the wheel dataset is polled
                     until Kaggle has processed it before every push, the kernel with --wait
  --timeout SEC      give up waiting after this many seconds (default: 43200, Kaggle's 12 h cap)
  --output-dir DIR   where --wait downloads the output (default: OUT/output/<kernel slug>)
  --validate DIR     only validate an existing build folder (an --out DIR) and exit
  -h, --help         show this help

Before the first push: edit "$PLACEHOLDER_OWNER" in kernel-metadata.json (or pass --owner),
install the Kaggle CLI and give it credentials its own way (~/.kaggle/kaggle.json, KAGGLE_USERNAME
and KAGGLE_KEY, KAGGLE_API_TOKEN or 'kaggle auth login'; this script never reads a key).
Kaggle gives GPUs only to phone-verified accounts.

Examples:
  ./push_kernel.sh --owner jane --dry-run -p epochs=2
  ./push_kernel.sh --owner jane -p epochs=30 -p model=densenet121 --wait
  ./push_kernel.sh --owner jane --notebook 02_evaluate --wait --interval 30
EOF
}

die() {
  echo "push_kernel.sh: error: $*" >&2
  exit 1
}

usage_error() {
  echo "push_kernel.sh: $*" >&2
  echo "Try 'push_kernel.sh --help'." >&2
  exit 2
}

say() { echo "==> $*"; }

TMP_DIRS=()
cleanup() {
  local dir
  for dir in ${TMP_DIRS[@]+"${TMP_DIRS[@]}"}; do rm -rf "$dir"; done
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
NOTEBOOK="01_train"
OWNER=""
OUT=""
WHEEL=""
OUTPUT_DIR=""
VALIDATE_DIR=""
DRY_RUN=0
WAIT=0
INTERNET=0
INTERVAL=60
TIMEOUT=43200
PARAM_NAMES=()
PARAM_VALUES=()

need_value() {
  [[ $# -ge 2 && -n $2 ]] || usage_error "option $1 needs a value"
}

# A -p NAME=VALUE becomes papermill's "-p NAME VALUE". Checked here, before anything is built,
# so a typo or a credential never reaches a notebook file. The value is never echoed.
add_parameter() {
  local spec=$1 name value lower existing
  [[ $spec == *=* ]] || usage_error "malformed -p '$spec': expected -p NAME=VALUE, e.g. -p epochs=3"
  name=${spec%%=*}
  value=${spec#*=}
  [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] ||
    usage_error "malformed -p: parameter name '$name' is not a Python identifier" \
      "(expected -p NAME=VALUE)"
  lower=$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]')
  case $lower in
    *token* | *key* | *password* | *passwd* | *secret* | *credential*)
      die "refusing parameter '$name': names containing token, key, password or secret look like" \
        "credentials, and parameters are stored in plain text in the pushed notebook." \
        "Give the kernel credentials through Kaggle Secrets (Add-ons > Secrets) instead."
      ;;
  esac
  for existing in ${PARAM_NAMES[@]+"${PARAM_NAMES[@]}"}; do
    [[ $existing != "$name" ]] || usage_error "parameter '$name' is given twice"
  done
  PARAM_NAMES+=("$name")
  PARAM_VALUES+=("$value")
}

parse_args() {
  while [[ $# -gt 0 ]]; do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --notebook) need_value "$@"; NOTEBOOK=$2; shift 2 ;;
      -p | --parameter) need_value "$@"; add_parameter "$2"; shift 2 ;;
      --owner) need_value "$@"; OWNER=$2; shift 2 ;;
      --out) need_value "$@"; OUT=$2; shift 2 ;;
      --wheel) need_value "$@"; WHEEL=$2; shift 2 ;;
      --output-dir) need_value "$@"; OUTPUT_DIR=$2; shift 2 ;;
      --validate) need_value "$@"; VALIDATE_DIR=$2; shift 2 ;;
      --interval) need_value "$@"; INTERVAL=$2; shift 2 ;;
      --timeout) need_value "$@"; TIMEOUT=$2; shift 2 ;;
      --internet) INTERNET=1; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      --wait) WAIT=1; shift ;;
      *) usage_error "unknown option '$1'" ;;
    esac
  done
  [[ $INTERVAL =~ ^[0-9]+$ ]] ||
    usage_error "--interval must be a whole number of seconds, got '$INTERVAL'"
  [[ $TIMEOUT =~ ^[0-9]+$ && $TIMEOUT -gt 0 ]] ||
    usage_error "--timeout must be a positive whole number of seconds, got '$TIMEOUT'"
  if [[ -n $OWNER && ! $OWNER =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]]; then
    usage_error "--owner must be a Kaggle username (letters, digits, '-', '_'), got '$OWNER'"
  fi
}

# ---------------------------------------------------------------------------------------------
# Tools: the project's Python (its venv has papermill and nbformat) and, to push, the Kaggle CLI
# ---------------------------------------------------------------------------------------------
choose_python() {
  if [[ -x "$REPO/.venv/bin/python" ]]; then
    PY="$REPO/.venv/bin/python"
  elif command -v python3 >/dev/null 2>&1; then
    PY=$(command -v python3)
  else
    die "no Python found: expected $REPO/.venv/bin/python (run 'make install') or python3 on PATH"
  fi
}

require_papermill() {
  "$PY" -c 'import nbformat, papermill' 2>/dev/null ||
    die "papermill and nbformat are not importable by $PY; run 'make install'" \
      "or '$PY -m pip install papermill nbformat'"
}

find_kaggle_cli() {
  # PATH first, so a user's own CLI (or a test's fake) wins over the venv's copy.
  if command -v kaggle >/dev/null 2>&1; then
    KAGGLE=$(command -v kaggle)
  elif [[ -x "$REPO/.venv/bin/kaggle" ]]; then
    KAGGLE="$REPO/.venv/bin/kaggle"
  else
    die "the kaggle CLI is not installed: 'pip install kaggle', then put an API token in" \
      "~/.kaggle/kaggle.json (or use --dry-run to build without pushing)"
  fi
  # A broken install (e.g. a missing dependency) would otherwise surface later as a confusing
  # "cannot tell whether the dataset exists".
  local output
  output=$("$KAGGLE" --version 2>&1) ||
    die "the kaggle CLI at $KAGGLE does not start: $(printf '%s' "$output" | tail -n 1)"
}

# The helper below does the JSON and notebook work; the facts it needs come from this script.
helper() {
  PLACEHOLDER_OWNER=$PLACEHOLDER_OWNER NIH_DATASET=$NIH_DATASET WHEEL_SLUG=$WHEEL_SLUG \
    MACHINE_SHAPE=$MACHINE_SHAPE INSTALL_TAG=$INSTALL_TAG "$PY" -c "$PY_HELPER" "$@"
}

# ---------------------------------------------------------------------------------------------
# What to run, as whom, and where to build
# ---------------------------------------------------------------------------------------------
resolve_notebook() {
  local name=$NOTEBOOK available task
  if [[ $name == */* ]]; then
    [[ -f $name ]] || die "notebook file not found: $name"
    NOTEBOOK_PATH=$(cd "$(dirname "$name")" && pwd)/$(basename "$name")
  else
    NOTEBOOK_PATH="$REPO/notebooks/${name%.ipynb}.ipynb"
    if [[ ! -f $NOTEBOOK_PATH ]]; then
      available=$(find "$REPO/notebooks" -maxdepth 1 -name '*.ipynb' -exec basename {} .ipynb \; \
        2>/dev/null | LC_ALL=C sort | tr '\n' ' ')
      die "unknown notebook '$name'; available in notebooks/: ${available:-(none found)}" \
        "(or pass a path to an .ipynb file)"
    fi
  fi
  [[ $NOTEBOOK_PATH == *.ipynb ]] || die "notebook must be an .ipynb file: $NOTEBOOK_PATH"
  # 01_train -> train -> kernel chexvision-train titled "CheXVision train" (Kaggle derives the
  # slug from the title, so the two are built together).
  task=$(basename "$NOTEBOOK_PATH" .ipynb | sed -E 's/^[0-9]+[_-]//' | tr '[:upper:]' '[:lower:]' |
    tr '_ ' '--' | tr -cd 'a-z0-9-')
  [[ -n $task ]] || die "cannot derive a kernel name from $NOTEBOOK_PATH"
  SLUG="chexvision-$task"
  TITLE="CheXVision ${task//-/ }"
}

resolve_owner() {
  local template_owner
  template_owner=$(helper owner-of "$METADATA_TEMPLATE")
  if [[ -z $OWNER && $template_owner != "$PLACEHOLDER_OWNER" ]]; then OWNER=$template_owner; fi
  if [[ -z $OWNER && -n ${KAGGLE_USERNAME:-} ]]; then OWNER=$KAGGLE_USERNAME; fi
  OWNER=${OWNER:-$PLACEHOLDER_OWNER}
  if [[ $OWNER == "$PLACEHOLDER_OWNER" ]]; then
    [[ $DRY_RUN -eq 1 ]] ||
      die "no Kaggle owner: pass --owner USER or replace '$PLACEHOLDER_OWNER' in $METADATA_TEMPLATE"
    echo "warning: owner is the placeholder '$PLACEHOLDER_OWNER'; pass --owner USER to push" >&2
  fi
  KERNEL_REF="$OWNER/$SLUG"
  WHEEL_REF="$OWNER/$WHEEL_SLUG"
}

# A --wheel from an earlier build folder (OUT/wheel-dataset) would be deleted by prepare_out, so it
# is set aside first.
set_aside_wheel() {
  [[ -n $WHEEL ]] || return 0
  [[ -f $WHEEL && $(basename "$WHEEL") == chexvision-*.whl ]] ||
    die "--wheel must be an existing chexvision-*.whl file, got '$WHEEL'"
  local kept
  kept=$(mktemp -d)
  TMP_DIRS+=("$kept")
  cp "$WHEEL" "$kept/"
  WHEEL="$kept/$(basename "$WHEEL")"
}

# Only the subfolders this script owns are rebuilt, and only inside a folder it made itself, so a
# mistyped --out never deletes somebody's files.
prepare_out() {
  OUT=${OUT:-$REPO/build/kaggle}
  if [[ -d $OUT && ! -e "$OUT/$OUT_MARKER" && -n $(ls -A "$OUT") ]]; then
    die "--out $OUT is a non-empty folder that push_kernel.sh did not create; choose another"
  fi
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd -P)
  touch "$OUT/$OUT_MARKER"
  rm -rf "$OUT/wheel-dataset" "$OUT/source" "$OUT/kernel"
  mkdir -p "$OUT/wheel-dataset" "$OUT/source" "$OUT/kernel"
}

# ---------------------------------------------------------------------------------------------
# The wheel, as a Kaggle dataset folder
# ---------------------------------------------------------------------------------------------
build_wheel_dataset() {
  local dest="$OUT/wheel-dataset" src wheels
  if [[ -n $WHEEL ]]; then
    cp "$WHEEL" "$dest/"
  else
    # Build from a clean copy: setuptools reuses ./build/lib, where a module deleted from the
    # source tree would survive and end up in the wheel.
    src=$(mktemp -d)
    TMP_DIRS+=("$src")
    cp "$REPO/pyproject.toml" "$src/"
    cp "$REPO"/README* "$REPO"/LICENSE* "$REPO"/MANIFEST.in "$src/" 2>/dev/null || true
    cp -R "$REPO/chexvision_lib" "$src/"
    find "$src" -name __pycache__ -type d -prune -exec rm -rf {} +
    # An isolated build downloads setuptools; when ours is already new enough (pyproject needs
    # >=77) build without isolation, which also works offline.
    local no_isolation=0
    if "$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' \
      2>/dev/null; then
      no_isolation=1
    fi
    say "building the wheel with $PY"
    # find_spec, not "import build": a ./build folder would import as an empty namespace package.
    if "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("build.__main__") is None)' \
      2>/dev/null; then
      if [[ $no_isolation -eq 1 ]]; then
        "$PY" -m build --wheel --no-isolation --outdir "$dest" "$src" >/dev/null
      else
        "$PY" -m build --wheel --outdir "$dest" "$src" >/dev/null
      fi
    elif [[ $no_isolation -eq 1 ]]; then
      "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dest" "$src"
    else
      "$PY" -m pip wheel --quiet --no-deps -w "$dest" "$src"
    fi
  fi
  wheels=$(find "$dest" -maxdepth 1 -name 'chexvision-*.whl')
  [[ -n $wheels && $(printf '%s\n' "$wheels" | wc -l) -eq 1 ]] ||
    die "expected exactly one chexvision-*.whl in $dest, found: ${wheels:-none}"
  WHEEL_FILE=$wheels
  # chexvision-0.1.0-py3-none-any.whl -> 0.1.0
  VERSION=$(basename "$WHEEL_FILE" | cut -d- -f2)
  helper dataset-metadata "$dest/dataset-metadata.json" "$OWNER"
  say "wheel dataset $WHEEL_REF: $(basename "$WHEEL_FILE")"
}

# ---------------------------------------------------------------------------------------------
# The notebook: install cell + no outputs (source/), then papermill parameters (kernel/)
# ---------------------------------------------------------------------------------------------
render_notebook() {
  local staged i
  staged="$OUT/source/$(basename "$NOTEBOOK_PATH")"
  RENDERED="$OUT/kernel/$SLUG.ipynb"
  helper prepare "$NOTEBOOK_PATH" "$staged" "$WHEEL_REF" ${PARAM_NAMES[@]+"${PARAM_NAMES[@]}"}
  local papermill_args=()
  for i in ${PARAM_NAMES[@]+"${!PARAM_NAMES[@]}"}; do
    papermill_args+=(-p "${PARAM_NAMES[$i]}" "${PARAM_VALUES[$i]}")
  done
  say "rendering $(basename "$NOTEBOOK_PATH") -> kernel/$(basename "$RENDERED")"
  # --prepare-only injects the parameters after the "parameters" cell without executing; the
  # kernel name is given because Kaggle, not a local kernel, will run it.
  "$PY" -m papermill --prepare-only --kernel python3 --language python --log-level WARNING \
    "$staged" "$RENDERED" ${papermill_args[@]+"${papermill_args[@]}"}
}

# ---------------------------------------------------------------------------------------------
# kernel-metadata.json for the push folder, then one validation of everything built
# ---------------------------------------------------------------------------------------------
write_kernel_metadata() {
  local extra=()
  [[ $INTERNET -eq 0 ]] || extra+=(--internet)
  # Evaluate and publish read the train kernel's run folder, mounted as a kernel source.
  [[ $SLUG == chexvision-train ]] || extra+=(--kernel-source "$OWNER/chexvision-train")
  helper kernel-metadata "$METADATA_TEMPLATE" "$OUT/kernel/kernel-metadata.json" \
    --owner "$OWNER" --slug "$SLUG" --title "$TITLE" --code-file "$(basename "$RENDERED")" \
    ${extra[@]+"${extra[@]}"}
}

validate_build() {
  local args=("$OUT") name
  for name in ${PARAM_NAMES[@]+"${PARAM_NAMES[@]}"}; do args+=(--expect-param "$name"); done
  [[ $OWNER != "$PLACEHOLDER_OWNER" ]] || args+=(--allow-placeholder-owner)
  helper validate "${args[@]}"
}

# ---------------------------------------------------------------------------------------------
# Kaggle. The CLI exits 0 on some failures ("Kernel push error: ..."), so its
# output is checked as well as its status.
# ---------------------------------------------------------------------------------------------
run_kaggle() {
  local output
  echo "+ kaggle $*"
  if ! output=$("$KAGGLE" "$@" 2>&1); then
    [[ -z $output ]] || echo "$output" >&2
    die "'kaggle $1 $2' failed (see above)"
  fi
  [[ -z $output ]] || echo "$output"
  if grep -qiE '(^|[^a-z])error' <<<"$output"; then
    die "'kaggle $1 $2' reported an error (see above)"
  fi
}

publish_wheel_dataset() {
  local status_output
  # A dataset that exists gets a new version; the first run creates it (private).
  echo "+ kaggle datasets status $WHEEL_REF"
  if status_output=$("$KAGGLE" datasets status "$WHEEL_REF" 2>&1); then
    run_kaggle datasets version -p "$OUT/wheel-dataset" -m "chexvision $VERSION" --dir-mode zip
  elif grep -qiE '404|not found' <<<"$status_output"; then
    say "dataset $WHEEL_REF does not exist yet: creating it"
    run_kaggle datasets create -p "$OUT/wheel-dataset" --dir-mode zip
  else
    echo "$status_output" >&2
    die "cannot tell whether dataset $WHEEL_REF exists (see above; are the CLI's credentials set?)"
  fi
}

# Kaggle processes an upload for a while; a kernel started before that attaches the old wheel.
wait_for_wheel_dataset() {
  local deadline=$((SECONDS + TIMEOUT)) output state
  while true; do
    sleep "$INTERVAL"
    echo "+ kaggle datasets status $WHEEL_REF"
    # A failed query right after an upload is normal (the new dataset is not visible yet).
    if output=$("$KAGGLE" datasets status "$WHEEL_REF" 2>&1); then
      state=$(printf '%s' "$output" | tr '[:upper:]' '[:lower:]')
      case $state in
        *ready*) say "dataset $WHEEL_REF is ready"; return ;;
        *failed* | *deleted*) die "dataset $WHEEL_REF failed to process: $output" ;;
      esac
    fi
    ((SECONDS < deadline)) || die "dataset $WHEEL_REF not ready after ${TIMEOUT}s: $output"
    echo "    dataset status: ${output:-unknown}; next check in ${INTERVAL}s"
  done
}

push_kernel() {
  run_kaggle kernels push -p "$OUT/kernel"
  say "pushed https://www.kaggle.com/code/$KERNEL_REF"
}

wait_for_kernel() {
  local deadline=$((SECONDS + TIMEOUT)) failures=0 output state
  while true; do
    # Sleep first: right after a push the status can still describe the previous run.
    sleep "$INTERVAL"
    echo "+ kaggle kernels status $KERNEL_REF"
    if output=$("$KAGGLE" kernels status "$KERNEL_REF" 2>&1); then
      failures=0
      echo "    $output"
      # The CLI prints e.g.: jane/chexvision-train has status "KernelWorkerStatus.RUNNING"
      state=$(printf '%s' "$output" | tr '[:upper:]' '[:lower:]')
      case $state in
        *complete*) return ;;
        *error* | *cancel*)
          download_output
          die "kernel $KERNEL_REF did not complete; its log is in $OUTPUT_DIR"
          ;;
      esac
    else
      # A failed query (network, Kaggle hiccup) is retried; three in a row is not a hiccup.
      failures=$((failures + 1))
      echo "$output" >&2
      [[ $failures -lt 3 ]] || die "'kaggle kernels status $KERNEL_REF' failed 3 times in a row"
    fi
    ((SECONDS < deadline)) ||
      die "kernel $KERNEL_REF still running after ${TIMEOUT}s; check later with" \
        "'kaggle kernels status $KERNEL_REF'"
    echo "    next check in ${INTERVAL}s"
  done
}

download_output() {
  mkdir -p "$OUTPUT_DIR"
  run_kaggle kernels output "$KERNEL_REF" -p "$OUTPUT_DIR" -o
}

print_tree() {
  echo "$1/"
  (cd "$1" && find . -mindepth 1 -not -name "$OUT_MARKER" | LC_ALL=C sort | head -n 200 |
    sed -e 's|^\./||' -e 's|[^/]*/|  |g' -e 's|^|  |')
}

# ---------------------------------------------------------------------------------------------
# The embedded helper: notebook and JSON work, and the validation of a build folder.
# ---------------------------------------------------------------------------------------------
read -r -d '' PY_HELPER <<'PYEOF' || true
import argparse
import json
import os
import re
import sys
from pathlib import Path

PLACEHOLDER_OWNER = os.environ["PLACEHOLDER_OWNER"]
NIH_DATASET = os.environ["NIH_DATASET"]
WHEEL_SLUG = os.environ["WHEEL_SLUG"]
MACHINE_SHAPE = os.environ["MACHINE_SHAPE"]
INSTALL_TAG = os.environ["INSTALL_TAG"]

# Placed before the notebook's first code cell. Kaggle mounts a dataset at /kaggle/input/<slug>;
# some images nest it deeper, hence the fallback search.
INSTALL_CELL = '''\
# Added by push_kernel.sh: install CheXVision from the attached dataset {wheel_ref} so the
# kernel runs with internet off, i.e.
#   pip install --no-index --find-links /kaggle/input/{wheel_slug} chexvision
# Outside Kaggle (no /kaggle/input) this cell does nothing.
import glob
import os
import subprocess
import sys

if os.path.isdir("/kaggle/input"):
    patterns = ["/kaggle/input/{wheel_slug}/chexvision-*.whl"]
    patterns += ["/kaggle/input/" + "*/" * depth + "chexvision-*.whl" for depth in range(1, 5)]
    wheels = []
    for pattern in patterns:
        wheels = wheels or sorted(glob.glob(pattern))
    if not wheels:
        raise FileNotFoundError("no chexvision-*.whl under /kaggle/input: attach {wheel_ref}")
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
         "--find-links", os.path.dirname(wheels[-1]), "chexvision"]
    )
'''


def fail(message):
    print(f"push_kernel.sh: error: {message}", file=sys.stderr)
    sys.exit(1)


def tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def kaggle_slug(title):
    try:  # python-slugify is what the Kaggle CLI itself uses to compare title and id
        from slugify import slugify

        return slugify(title)
    except ImportError:
        return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def owner_of(template):
    meta = json.loads(Path(template).read_text())
    print(str(meta.get("id", "")).split("/")[0])


def dataset_metadata(path, owner):
    meta = {
        "title": "CheXVision wheel",
        "id": f"{owner}/{WHEEL_SLUG}",
        "licenses": [{"name": "other"}],
        "description": "The chexvision Python wheel (MIT licence), installed offline by the "
        "CheXVision Kaggle kernels. Built and uploaded by push_kernel.sh.",
    }
    Path(path).write_text(json.dumps(meta, indent=2) + "\n")


def prepare(source, staged, wheel_ref, params):
    import nbformat
    import papermill

    nb = nbformat.read(source, as_version=4)
    if nb.nbformat_minor < 5:  # the install cell has an id, and cell ids arrived in nbformat 4.5
        from nbformat.v4.nbbase import random_cell_id

        nb.nbformat_minor = 5
        for cell in nb.cells:
            cell.setdefault("id", random_cell_id())
    n_parameters = sum("parameters" in tags(c) for c in nb.cells)
    if n_parameters != 1:
        fail(f"{source}: needs exactly one cell tagged 'parameters' (papermill injects the -p "
             f"values after it), found {n_parameters}")
    # Outputs and counts from a local run must not travel to Kaggle; an install cell from an
    # earlier render is replaced.
    nb.cells = [c for c in nb.cells if INSTALL_TAG not in tags(c)]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    install = nbformat.v4.new_code_cell(
        INSTALL_CELL.format(wheel_ref=wheel_ref, wheel_slug=WHEEL_SLUG).rstrip("\n"),
        metadata={"tags": [INSTALL_TAG]},
    )
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    nb.cells.insert(first_code, install)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata.setdefault("language_info", {})["name"] = "python"
    nbformat.write(nb, staged)
    # papermill only warns about an unknown parameter; here it is an error naming what exists.
    known = papermill.inspect_notebook(staged)
    unknown = [p for p in params if p not in known]
    if unknown:
        fail(f"{source} has no parameter {', '.join(repr(p) for p in unknown)}; its 'parameters' "
             f"cell defines: {', '.join(known) or '(nothing)'}")


def kernel_metadata(template, path, owner, slug, title, code_file, internet, kernel_sources):
    meta = json.loads(Path(template).read_text())
    meta["id"] = f"{owner}/{slug}"
    meta["title"] = title
    meta["code_file"] = code_file
    wheel_ref = f"{owner}/{WHEEL_SLUG}"
    sources = [s for s in meta.get("dataset_sources", []) if s.split("/")[1:2] != [WHEEL_SLUG]]
    meta["dataset_sources"] = sources + [wheel_ref]
    if internet:
        meta["enable_internet"] = True
    existing = list(meta.get("kernel_sources", []))
    meta["kernel_sources"] = existing + [k for k in kernel_sources if k not in existing]
    Path(path).write_text(json.dumps(meta, indent=2) + "\n")


REQUIRED = {
    "id": str, "title": str, "code_file": str, "language": str, "kernel_type": str,
    "is_private": bool, "enable_gpu": bool, "enable_internet": bool, "machine_shape": str,
    "dataset_sources": list, "competition_sources": list, "kernel_sources": list,
}


def check_kernel_metadata(meta, where, kernel_dir, allow_placeholder, problems):
    bad = set()
    for key, kind in REQUIRED.items():
        if key not in meta:
            problems.append(f"{where}: missing required field '{key}'")
            bad.add(key)
        elif not isinstance(meta[key], kind):
            problems.append(f"{where}: '{key}' must be a JSON {kind.__name__}, got {meta[key]!r}")
            bad.add(key)
    if bad:  # the checks below read these fields; report the type problems alone
        return None
    parts = meta["id"].split("/")
    if len(parts) != 2 or not all(parts):
        problems.append(f"{where}: id must be 'owner/kernel-slug', got {meta['id']!r}")
        return None
    owner, slug = parts
    if owner == PLACEHOLDER_OWNER and not allow_placeholder:
        problems.append(f"{where}: id still has the placeholder owner '{PLACEHOLDER_OWNER}'; "
                        "pass --owner USER")
    if len(slug) < 5:
        problems.append(f"{where}: the kernel slug {slug!r} must have at least 5 characters")
    if len(meta["title"]) < 5:
        problems.append(f"{where}: title must have at least 5 characters")
    if kaggle_slug(meta["title"]) != slug.lower():
        problems.append(f"{where}: title {meta['title']!r} slugs to "
                        f"{kaggle_slug(meta['title'])!r}, not the id's slug {slug!r}; Kaggle "
                        "derives the slug from the title, so they must agree")
    if meta["language"] != "python":
        problems.append(f"{where}: language must be 'python', got {meta['language']!r}")
    if meta["kernel_type"] != "notebook":
        problems.append(f"{where}: kernel_type must be 'notebook', got {meta['kernel_type']!r}")
    if meta["enable_gpu"] is not True:
        problems.append(f"{where}: enable_gpu must be true (training needs the GPU)")
    if meta.get("enable_tpu", False) is not False:
        problems.append(f"{where}: enable_tpu must be false or absent")
    if meta["machine_shape"] != MACHINE_SHAPE:
        problems.append(f"{where}: machine_shape must be {MACHINE_SHAPE!r} (GPU T4 x2), got "
                        f"{meta['machine_shape']!r}; a P100 cannot run Kaggle's current torch")
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
    code_file = meta["code_file"]
    if os.path.isabs(code_file) or not code_file.endswith(".ipynb"):
        problems.append(f"{where}: code_file must be a relative path to an .ipynb file, got "
                        f"{code_file!r}")
        return None
    notebook = kernel_dir / code_file
    if not notebook.is_file():
        problems.append(f"{where}: code_file {code_file!r} not found in {kernel_dir}")
        return None
    return owner, notebook


def check_notebook(notebook, expected_params, problems):
    try:
        import nbformat

        nb = nbformat.read(notebook, as_version=4)
        nbformat.validate(nb)
    except ImportError:
        nb = json.loads(notebook.read_text())
    except Exception as error:  # nbformat raises several kinds for a broken file
        problems.append(f"{notebook}: not a valid notebook ({error})")
        return
    cells = nb["cells"]
    with_outputs = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
                    and (c.get("outputs") or c.get("execution_count") is not None)]
    if with_outputs:
        problems.append(f"{notebook}: cells {with_outputs} carry outputs or execution counts")
    install = [i for i, c in enumerate(cells) if INSTALL_TAG in tags(c)]
    parameters = [i for i, c in enumerate(cells) if "parameters" in tags(c)]
    if len(parameters) != 1:
        problems.append(f"{notebook}: expected one cell tagged 'parameters', found "
                        f"{len(parameters)}")
        return
    if len(install) != 1:
        problems.append(f"{notebook}: expected one cell tagged {INSTALL_TAG!r}, found "
                        f"{len(install)}")
    else:
        source = "".join(cells[install[0]]["source"])
        if "--no-index" not in source or "--find-links" not in source:
            problems.append(f"{notebook}: the {INSTALL_TAG!r} cell must pip install with "
                            "--no-index --find-links (the kernel has no internet)")
        if install[0] > parameters[0]:
            problems.append(f"{notebook}: the {INSTALL_TAG!r} cell must come before the "
                            "parameters cell")
    injected_params = nb.get("metadata", {}).get("papermill", {}).get("parameters", {})
    for name in expected_params:
        if name not in injected_params:
            problems.append(f"{notebook}: parameter {name!r} was not injected by papermill")
    if not injected_params:
        return
    after = parameters[0] + 1
    if after >= len(cells) or "injected-parameters" not in tags(cells[after]):
        problems.append(f"{notebook}: no 'injected-parameters' cell right after the parameters "
                        "cell")
        return
    injected = "".join(cells[after]["source"])
    for name in injected_params:
        if not re.search(rf"^{re.escape(name)} = ", injected, re.MULTILINE):
            problems.append(f"{notebook}: the injected-parameters cell does not set {name!r}")


def check_wheel_dataset(folder, owner, problems):
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


def validate(out, expected_params, allow_placeholder):
    out = Path(out)
    kernel_dir = out / "kernel"
    where = kernel_dir / "kernel-metadata.json"
    problems = []
    try:
        meta = json.loads(where.read_text())
    except (OSError, ValueError) as error:
        fail(f"{where}: cannot read ({error}); is {out} a folder built by push_kernel.sh?")
    if not isinstance(meta, dict):
        fail(f"{where}: must hold a JSON object")
    found = check_kernel_metadata(meta, where, kernel_dir, allow_placeholder, problems)
    if found:
        owner, notebook = found
        check_notebook(notebook, expected_params, problems)
        check_wheel_dataset(out / "wheel-dataset", owner, problems)
    if problems:
        print("push_kernel.sh: validation failed:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        sys.exit(1)
    print(f"==> validated {out}: kernel {meta['id']}, notebook {meta['code_file']}")


def main():
    parser = argparse.ArgumentParser(prog="push_kernel.sh helper")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("owner-of").add_argument("template")
    sub = commands.add_parser("dataset-metadata")
    sub.add_argument("path")
    sub.add_argument("owner")
    sub = commands.add_parser("prepare")
    sub.add_argument("source")
    sub.add_argument("staged")
    sub.add_argument("wheel_ref")
    sub.add_argument("params", nargs="*")
    sub = commands.add_parser("kernel-metadata")
    sub.add_argument("template")
    sub.add_argument("path")
    for option in ("--owner", "--slug", "--title", "--code-file"):
        sub.add_argument(option, required=True)
    sub.add_argument("--internet", action="store_true")
    sub.add_argument("--kernel-source", action="append", default=[])
    sub = commands.add_parser("validate")
    sub.add_argument("out")
    sub.add_argument("--expect-param", action="append", default=[])
    sub.add_argument("--allow-placeholder-owner", action="store_true")
    args = parser.parse_args()
    if args.command == "owner-of":
        owner_of(args.template)
    elif args.command == "dataset-metadata":
        dataset_metadata(args.path, args.owner)
    elif args.command == "prepare":
        prepare(args.source, args.staged, args.wheel_ref, args.params)
    elif args.command == "kernel-metadata":
        kernel_metadata(args.template, args.path, args.owner, args.slug, args.title,
                        args.code_file, args.internet, args.kernel_source)
    else:
        validate(args.out, args.expect_param, args.allow_placeholder_owner)


main()
PYEOF

# ---------------------------------------------------------------------------------------------
main() {
  parse_args "$@"
  choose_python
  if [[ -n $VALIDATE_DIR ]]; then
    helper validate "$VALIDATE_DIR"
    return
  fi
  [[ -f $METADATA_TEMPLATE ]] || die "kernel metadata template not found: $METADATA_TEMPLATE"
  resolve_notebook
  resolve_owner
  require_papermill
  [[ $DRY_RUN -eq 1 ]] || find_kaggle_cli # before the build, not after it
  set_aside_wheel
  prepare_out
  OUTPUT_DIR=${OUTPUT_DIR:-$OUT/output/$SLUG}

  build_wheel_dataset
  render_notebook
  write_kernel_metadata
  validate_build

  if [[ $DRY_RUN -eq 1 ]]; then
    print_tree "$OUT"
    say "dry run: nothing was uploaded; the same command without --dry-run pushes $KERNEL_REF"
    return
  fi

  publish_wheel_dataset
  wait_for_wheel_dataset
  push_kernel
  if [[ $WAIT -eq 1 ]]; then
    wait_for_kernel
    download_output
  else
    echo "Follow it with: kaggle kernels status $KERNEL_REF"
    echo "Fetch output:   kaggle kernels output $KERNEL_REF -p $OUTPUT_DIR"
  fi
  print_tree "$OUT"
}

main "$@"
