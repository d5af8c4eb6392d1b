#!/usr/bin/env bash
# Start SD Studio. First run: make ./venv, install torch (TORCH_COMMAND) and requirements.txt.
# Flags go to app.py (see README.md); COMMANDLINE_ARGS="--listen --api" works too.
set -euo pipefail
cd "$(dirname "$0")"

# Optional per-install settings (COMMANDLINE_ARGS, TORCH_COMMAND, PYTHON, VENV_DIR), including
# an AUTOMATIC1111 webui-user.sh copied over as it is (python_cmd, venv_dir).
if [[ -f webui-user.sh ]]; then
    # shellcheck disable=SC1091
    source webui-user.sh
fi
# A webui-user.sh may set COMMANDLINE_ARGS without exporting it: app.py reads it either way.
export COMMANDLINE_ARGS="${COMMANDLINE_ARGS:-}"

PYTHON="${PYTHON:-${python_cmd:-python3}}"
VENV_DIR="${VENV_DIR:-${venv_dir:-venv}}"

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    echo "Creating virtual environment in $VENV_DIR"
    "$PYTHON" -m venv "$VENV_DIR"
fi
# shellcheck disable=SC1091
source "$VENV_DIR/bin/activate"
# --skip-install / --skip-prepare-environment (AUTOMATIC1111's names): start without checking
# the installed packages.
case " $COMMANDLINE_ARGS $* " in
    *" --skip-install "*|*" --skip-prepare-environment "*) ;;
    *) python scripts/prepare_env.py ;;
esac
exec python app.py "$@"
