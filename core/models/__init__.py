"""Methods. Importing this package imports every module in it, and each module registers its
methods with :func:`core.models.registry.register_method` — adding a method is one new file."""
import importlib as _importlib
import pkgutil as _pkgutil

from core.models.registry import get_method, list_methods, method_entry, register_method  # noqa: F401

for _m in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_m.name}")
