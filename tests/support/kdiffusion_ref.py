"""k-diffusion (PyPI `k-diffusion` 0.1.1.post1, the sampling code AUTOMATIC1111 pins) loaded as a
test reference without its package `__init__` (training modules with heavy dependencies) and with
a stand-in for the torchvision import of its `utils` (torchvision cannot load beside the CPU torch
here). Only `sampling` and `external` are used; both need nothing of torchvision."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_PACKAGE = "_kdiffusion_reference"


def _load(name: str, folder: Path):
    spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    setattr(sys.modules[_PACKAGE], name, module)
    return module


def load():
    """(sampling, external) modules of k-diffusion; raises ImportError when it is not installed."""
    if _PACKAGE in sys.modules:
        package = sys.modules[_PACKAGE]
        return package.sampling, package.external
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    folder = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(folder)]
    sys.modules[_PACKAGE] = package
    stand_ins = {}
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        if name not in sys.modules:
            stand_ins[name] = sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    try:
        _load("utils", folder)
        sampling = _load("sampling", folder)
        external = _load("external", folder)
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return sampling, external
