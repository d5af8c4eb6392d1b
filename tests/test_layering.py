"""The architecture's import rules, as import-linter contracts in .importlinter (docs/layout.md):
ui/ sits on engine/, extensions/ sit on engine/ and never import ui/, engine/ and extensions/ never
import gradio, and the engine's packages keep the directions listed there."""

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".importlinter"

LINT = ("import sys\n"
        "from importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(config_filename='.importlinter', no_cache=True))\n")


def test_the_import_contracts_hold():
    out = subprocess.run([sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert "0 broken" in report, report


def _engine_modules() -> list[str]:
    """Every module and package under engine/, read from the files (nothing imported here)."""
    names = set()
    for path in (ROOT / "engine").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names - {"engine"})


def test_every_engine_package_and_core_module_is_placed_in_the_engine_layers():
    """A new package or top-level module of engine/ must be given its place in the engine-core
    contract (and in docs/layout.md), not escape the contracts by being unnamed."""
    config = configparser.ConfigParser()
    config.read(CONFIG, encoding="utf-8")
    layers = config["importlinter:contract:engine-core"]["layers"]
    placed = {name.strip() for line in layers.splitlines() for name in line.replace("|", ":").split(":")
              if name.strip()}
    top_level = {m.split(".")[1] for m in _engine_modules()}
    assert top_level - placed == set()
    assert placed - top_level == set()


def test_importing_the_whole_engine_does_not_load_gradio():
    modules = _engine_modules()
    assert len(modules) > 50
    assert "engine.models.registry" in modules and "engine.prompts.prompt_parser.emphasis" in modules
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
