"""bench/_imagetar.py for the tests, loaded by path: bench/ holds docker.py, which must not go
on sys.path (it would shadow the docker package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "_imagetar.py"
    spec = importlib.util.spec_from_file_location("_imagetar", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


imagetar = _load()
