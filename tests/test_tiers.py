"""The slow tier's list (tests/tiers.py) names tests that exist, and test.sh picks the tiers."""

import ast
import os
import subprocess
from pathlib import Path

import pytest

from tests import tiers

TESTS = Path(__file__).resolve().parent


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")}


def test_every_slow_file_and_test_exists():
    for name in tiers.SLOW_FILES:
        assert (TESTS / name).is_file(), f"tests/tiers.py names {name}, which is not in tests/"
    for node in tiers.SLOW_TESTS:
        file_name, test_name = node.split("::")
        assert (TESTS / file_name).is_file(), f"tests/tiers.py names {file_name}, which is not in tests/"
        assert test_name in functions_in(TESTS / file_name), f"tests/tiers.py names {node}, which is not a test"
        assert file_name not in tiers.SLOW_FILES, f"{node}: its whole file is slow already"


def test_the_collected_tests_are_marked_by_the_list(request):
    marked = {item.nodeid for item in request.session.items if item.get_closest_marker("slow")}
    for item in request.session.items:
        assert (item.nodeid in marked) == tiers.item_is_slow(item)
    # A browser test is slow wherever it lives, with no entry in the lists.
    assert any(item.path.name == "test_browser_xyz_plot.py" for item in request.session.items
               if item.nodeid in marked) or not any(item.path.name == "test_browser_xyz_plot.py"
                                                     for item in request.session.items)
    # This test is in the fast tier (it runs in either).
    assert request.node.nodeid not in marked


@pytest.mark.parametrize("args, expected", [
    ([], ["-m", "not slow"]),
    (["-k", "api", "-x"], ["-m", "not slow", "-k", "api", "-x"]),
    (["--all"], []),
    (["-x", "--all", "-k", "a b"], ["-x", "-k", "a b"]),
    (["-m", "slow"], ["-m", "slow"]),
    (["-mslow", "tests/test_api.py"], ["-mslow", "tests/test_api.py"]),
])
def test_test_sh_runs_the_fast_tier_unless_told(tmp_path, args, expected):
    """test.sh's own argument handling, with pytest and the environment set-up stood in for."""
    script = (TESTS.parent / "test.sh").read_text()
    script = script.replace('cd "$(dirname "$0")"', f'cd "{tmp_path}"')
    script = script.replace("python scripts/prepare_env.py --test", ":")
    script = script.replace("exec python -m pytest", "printf '%s\\n'")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to("/bin/true")
    (tmp_path / "venv" / "bin" / "activate").write_text("")
    (tmp_path / "test.sh").write_text(script)
    out = subprocess.run(["bash", str(tmp_path / "test.sh"), *args], capture_output=True, text=True,
                         env={**os.environ, "VENV_DIR": "venv"}, timeout=30)
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stdout.splitlines() if line] == expected
