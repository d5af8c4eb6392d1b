#!/usr/bin/env bash
# Run the tests: CPU only, no network.
#   ./test.sh         the fast tier: every test not marked slow (tests/tiers.py lists the slow ones)
#   ./test.sh --all   every test, slow ones included (what CI runs)
# Other arguments go to pytest (./test.sh -k api -x); with your own -m, that selection is used as
# given. The slow tier needs Chromium for the browser tests (Debian/Ubuntu: sudo apt install
# chromium); set CHROMIUM_PATH if it is not /usr/bin/chromium.
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

all=0
own_marker=0
args=()
for arg in "$@"; do
    case "$arg" in
        --all) all=1; continue ;;
        -m|-m?*) own_marker=1 ;;
    esac
    args+=("$arg")
done
if [[ $all -eq 0 && $own_marker -eq 0 ]]; then
    echo "test.sh: the fast tier (-m 'not slow'); ./test.sh --all runs the slow tests too" >&2
    args=(-m "not slow" ${args[@]+"${args[@]}"})
fi
exec python -m pytest ${args[@]+"${args[@]}"}
