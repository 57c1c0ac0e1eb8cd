"""Importing a plug-in named on the command line: ``path/to/file.py`` or ``package.module``.

The methods and backbones registries share it; a file is imported once per path, under a module
name derived from the path, so two files with one stem do not collide."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zlib
from pathlib import Path
from types import ModuleType


def import_plugin(where: str, what: str) -> ModuleType:
    """Import `where` (a .py file or a module name); `what` ('method', 'backbone') names it in errors."""
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{what} module {where} does not exist")
        module_name = f"madda_rs_{what}_{path.stem}_{zlib.crc32(str(path).encode()):08x}"
        if module_name in sys.modules:
            return sys.modules[module_name]
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module
    try:
        return importlib.import_module(where)
    except ImportError as exc:
        raise ValueError(f"cannot import the {what} module {where!r}: {exc}") from None


__all__ = ["import_plugin"]
