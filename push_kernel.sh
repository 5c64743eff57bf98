#!/usr/bin/env bash
# push_kernel.sh: run a CheXVision notebook headless on Kaggle (GPU T4 x2, internet off).
#
# A thin wrapper over `chexvision kaggle push` (chexvision_lib/publishing/kaggle_*.py), which
# builds the wheel dataset and the rendered kernel, uploads the wheel, waits until Kaggle serves
# that exact version, pushes the kernel and, with --wait, follows it and downloads its output.
# Any source Kaggle rejects, a push error, a failed or cancelled kernel, a timeout: exit non-zero.
#
#   ./push_kernel.sh --owner jane --dry-run -p epochs=2
#   ./push_kernel.sh --owner jane -p recipe=chexvision-resnet --wait
#   ./push_kernel.sh --owner jane --notebook 02_evaluate --wait --interval 30
#
# Options (see --help): --notebook, --owner, -p NAME=VALUE, --wait, --interval, --timeout,
# --internet, --dry-run, --out, --wheel, --output-dir, --validate DIR.
# Credentials: the kaggle client's own (~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY,
# KAGGLE_API_TOKEN); this script never reads, prints or writes a key.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY="$REPO/.venv/bin/python"
[[ -x $PY ]] || PY=$(command -v python3) || {
  echo "push_kernel.sh: error: no Python; run 'make install'" >&2
  exit 2
}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m chexvision_lib.cli kaggle push --repo "$REPO" "$@"
