"""No module-level mutable state and no process-wide patching (issue 19): caches, devices and test
hooks live in objects the composition root (app.py) builds, so two apps in one process (or a
test's engine beside the session's) never share them.

The source of engine/, ui/ and extensions/ is read with `ast` and refused when it has
- a `global` statement;
- a module-level dict, list or set (or OrderedDict, defaultdict, deque, weak dictionary) that a
  function of the module changes;
- a functools cache (lru_cache, cache) on a function: a cache that outlives every app;
- an assignment to an attribute of something imported (a module or a class of a library: its
  functions swapped for every user in the process), or setattr/delattr on it;
- a look into sys.modules (how modules imported elsewhere are found to be patched; registering
  an extension's module there, and taking it out again, is allowed).
The checks are tried on samples first, so they are known to catch what they look for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "ui", "extensions")
MUTABLE_CALLS = {"dict", "list", "set", "OrderedDict", "defaultdict", "deque", "Counter",
                 "WeakKeyDictionary", "WeakValueDictionary", "WeakSet"}
MUTATING_METHODS = {"append", "extend", "insert", "update", "setdefault", "pop", "popitem", "clear",
                    "add", "discard", "remove", "appendleft", "popleft", "sort", "reverse"}
# Patching another library that is deliberate, with the reason. Nothing of diffusers may be here.
ALLOWED_PATCHES = {
    # Gradio's components write its file cache through these module functions, and Gradio has no
    # per-app hook for it; the replacements write each file once, atomically (see the module).
    ("ui/gradio_cache.py", "processing_utils.save_pil_to_cache"),
    ("ui/gradio_cache.py", "processing_utils.save_bytes_to_cache"),
}


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names if alias.name != "*")
    return names


def _module_containers(tree: ast.Module) -> set[str]:
    """Names the module binds, at its top level, to a mutable container."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)) or (
            isinstance(value, ast.Call) and
            (value.func.attr if isinstance(value.func, ast.Attribute) else getattr(value.func, "id", ""))
            in MUTABLE_CALLS)
        if mutable:
            found.update(target.id for target in targets if isinstance(target, ast.Name))
    return found


def _local_names(function: ast.AST) -> set[str]:
    """Parameters and names a function assigns itself (which hide module-level ones)."""
    args = function.args
    names = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)}
    names.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def problems(source: str, path: str) -> list[str]:
    """What in `source` (the file at `path`, relative to the repository) breaks the rules."""
    tree = ast.parse(source)
    imported = _imported_names(tree)
    containers = _module_containers(tree)
    found = []

    def say(node: ast.AST, what: str) -> None:
        found.append(f"{path}:{node.lineno}: {what}")

    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.modules":
            parent = parents.get(node)
            registers = isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store)
            forgets = isinstance(parent, ast.Attribute) and parent.attr == "pop"
            if not (registers or forgets):
                say(node, "looks into sys.modules (to patch modules imported elsewhere?)")
        if isinstance(node, ast.Global):
            say(node, f"global {', '.join(node.names)}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for decorator in node.decorator_list:
                called = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
                if name in ("lru_cache", "cache"):
                    say(node, f"functools.{name} on {node.name}(): keep the cache in an object")
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and _root_name(target) in imported:
                if (path, ast.unparse(target)) not in ALLOWED_PATCHES:
                    say(node, f"patches {ast.unparse(target)}, which is imported")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") \
                and node.args and _root_name(node.args[0]) in imported:
            say(node, f"{node.func.id}() on {ast.unparse(node.args[0])}, which is imported")

    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    for function in functions:
        local = _local_names(function) if not isinstance(function, ast.Lambda) else set()
        shared = containers - local
        for node in ast.walk(function):
            changed = None
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                for target in node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]:
                    if isinstance(target, ast.Subscript) and _root_name(target) in shared:
                        changed = _root_name(target)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in shared \
                    and node.func.attr in MUTATING_METHODS:
                changed = node.func.value.id
            if changed:
                say(node, f"changes the module-level {changed} at run time: keep it in an object")
    return sorted(set(found))


def sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


SAMPLE = '''
import functools
import sys
import diffusers
from diffusers.schedulers import scheduling_euler_discrete as euler
from diffusers import UNet2DConditionModel
from diffusers.utils import torch_utils

_cache = {}
_seen: list = []
TABLE = {"a": 1}
_device = None


def use(device):
    global _device
    _device = device


def remember(key, value):
    _cache[key] = value
    _seen.append(key)


def look(key):
    table = {}
    table[key] = TABLE[key]  # a local table, and reading the module's: fine
    return table


@functools.lru_cache(maxsize=1)
def detector():
    return object()


def patch(noise):
    euler.randn_tensor = noise
    diffusers.schedulers.scheduling_euler_discrete.randn_tensor = noise
    UNet2DConditionModel.forward = noise
    setattr(torch_utils, "randn_tensor", noise)
    for name, module in list(sys.modules.items()):
        if name.startswith("diffusers.schedulers."):
            module.randn_tensor = noise


def load_extension(name, module):
    sys.modules[name] = module  # registering a module of our own: fine
    sys.modules.pop(name, None)
'''


def test_the_checks_catch_each_kind_of_shared_state():
    found = problems(SAMPLE, "engine/sample.py")
    text = "\n".join(found)
    for expected in ("global _device", "functools.lru_cache on detector()",
                     "changes the module-level _cache", "changes the module-level _seen",
                     "patches euler.randn_tensor", "patches diffusers.schedulers.scheduling_euler_discrete.randn_tensor",
                     "patches UNet2DConditionModel.forward", "setattr() on torch_utils",
                     "looks into sys.modules"):
        assert expected in text, f"{expected!r} not caught in:\n{text}"
    assert "TABLE" not in text and "table" not in text
    assert len(found) == 9  # one line each, no more


def test_the_allowed_patches_are_only_allowed_where_listed():
    sample = "from gradio import processing_utils\n\n\ndef install(f):\n    processing_utils.save_pil_to_cache = f\n"
    assert problems(sample, "ui/gradio_cache.py") == []
    assert problems(sample, "ui/other.py") == ["ui/other.py:5: patches processing_utils.save_pil_to_cache, "
                                               "which is imported"]
    assert not any("diffusers" in target for _, target in ALLOWED_PATCHES)


def test_the_packages_are_found():
    names = {path.relative_to(ROOT).as_posix() for path in sources()}
    assert {"engine/engine.py", "ui/settings_tab.py", "extensions/hires_fix/__init__.py",
            "engine/memory/memory_guard.py", "engine/controlnet/annotators.py"} <= names


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_level_mutable_state_or_patching(package):
    found = []
    for path in sources():
        relative = path.relative_to(ROOT).as_posix()
        if relative.split("/")[0] == package:
            found += problems(path.read_text(encoding="utf-8"), relative)
    assert not found, "Module-level state or process-wide patching:\n" + "\n".join(found)
