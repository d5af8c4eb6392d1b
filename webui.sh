#!/usr/bin/env bash
# Start SD Studio. First run: make ./venv, install torch (TORCH_COMMAND) and requirements.txt.
# Flags go to app.py (see README.md); COMMANDLINE_ARGS="--listen --api" works too.
set -euo pipefail
cd "$(dirname "$0")"

# Optional per-install settings (COMMANDLINE_ARGS, TORCH_COMMAND, PYTHON, VENV_DIR).
if [[ -f webui-user.sh ]]; then
    # shellcheck disable=SC1091
    source webui-user.sh
fi

PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-venv}"

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    echo "Creating virtual environment in $VENV_DIR"
    "$PYTHON" -m venv "$VENV_DIR"
fi
# shellcheck disable=SC1091
source "$VENV_DIR/bin/activate"
python scripts/prepare_env.py
exec python app.py "$@"
