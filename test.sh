#!/usr/bin/env bash
# Run the test suite: CPU only, no network. Needs Chromium for the browser tests
# (Debian/Ubuntu: sudo apt install chromium); set CHROMIUM_PATH if it is not /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-venv}"
# The tests run on the CPU; a CUDA build of torch works too but is a large download.
export TORCH_COMMAND="${TORCH_COMMAND:-pip install torch==2.13.0}"

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV_DIR"
fi
# shellcheck disable=SC1091
source "$VENV_DIR/bin/activate"
python scripts/prepare_env.py --test
exec python -m pytest "$@"
