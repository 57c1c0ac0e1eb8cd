"""Registries of plug-ins (methods, backbones): finding the modules of a package, and looking a
name up, importing ``path/to/file.py:NAME`` or ``package.module:NAME`` when it names one defined
elsewhere. A file is imported once per path, under a module name derived from the path, so two
files with one stem do not collide."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import zlib
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterable, TypeVar

T = TypeVar("T")


def import_package_modules(path: Iterable[str], package: str) -> None:
    """Import every module of a package (its ``__path__`` and name) but private ones, so each
    registers what it defines."""
    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def lookup(registry: Dict[str, T], spec: str, what: str) -> T:
    """The entry registered as `spec`, or for ``FILE.py:NAME`` / ``MODULE:NAME`` the entry NAME that
    importing FILE or MODULE registers; anything else is a ValueError listing what is registered."""
    if spec in registry:
        return registry[spec]
    known = ", ".join(sorted(registry))
    if ":" not in spec:
        raise ValueError(f"{what} must be one of {known}, or FILE.py:NAME or MODULE:NAME for a {what} defined "
                         f"elsewhere; got {spec!r}")
    where, name = spec.rsplit(":", 1)
    import_plugin(where, what)
    if name not in registry:
        raise ValueError(f"{what} {spec!r}: {where} registers no {what} {name!r} (registered: "
                         f"{', '.join(sorted(registry))})")
    return registry[name]


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


__all__ = ["import_plugin", "import_package_modules", "lookup"]
