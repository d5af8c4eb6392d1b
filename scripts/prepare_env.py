"""Install what the app needs into the active virtual environment, once.

Run by webui.sh, webui.bat and test.sh after they activate the venv. torch comes first, from
TORCH_COMMAND (the CUDA build by default; set it for CPU-only or ROCm machines); then
requirements.txt (and requirements-test.txt with --test), reinstalled only when the file changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TORCH = {
    # PyPI's Linux wheels are CUDA builds; its Windows wheels are CPU-only, so Windows asks
    # PyTorch's own index for a CUDA build.
    "win32": "pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cu128",
}.get(sys.platform, "pip install torch==2.13.0")


def run(command: str) -> None:
    print(f"> {command}", flush=True)
    # TORCH_COMMAND is a shell command line by convention ("pip install torch ... --index-url ...").
    if subprocess.call(command, shell=True) != 0:
        sys.exit(f"Failed: {command}")


def pip_install(requirements: Path, no_deps: bool = False) -> None:
    marker = Path(sys.prefix) / f".installed-{requirements.name}.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if marker.exists() and marker.read_text().strip() == digest:
        return
    run(f'"{sys.executable}" -m pip install {"--no-deps " if no_deps else ""}-r "{requirements}"')
    marker.write_text(digest)


def main() -> None:
    if sys.prefix == sys.base_prefix and not os.environ.get("ALLOW_SYSTEM_PYTHON"):
        sys.exit("Run this inside the virtual environment (webui.sh / webui.bat make it).")
    if importlib.util.find_spec("torch") is None:
        run(os.environ.get("TORCH_COMMAND") or DEFAULT_TORCH)
    pip_install(ROOT / "requirements.txt")
    if "--test" in sys.argv[1:]:
        pip_install(ROOT / "requirements-test.txt")
        # Test references whose declared dependencies are not needed for what the tests use.
        pip_install(ROOT / "requirements-test-nodeps.txt", no_deps=True)


if __name__ == "__main__":
    main()
