"""The architecture's one rule: engine/ and extensions/ never import gradio."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_source_file_in_engine_or_extensions_imports_gradio():
    files = [p for folder in ("engine", "extensions") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 10
    offenders = [str(p.relative_to(ROOT)) for p in files
                 if {"gradio", "gradio_client"} & _imported_modules(p)]
    assert offenders == []


def test_importing_the_whole_engine_does_not_load_gradio():
    modules = sorted(f"engine.{p.stem}" for p in (ROOT / "engine").glob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
