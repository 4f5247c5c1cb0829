"""Import every model module so that each registers itself (see base.MODELS)."""
import importlib
import pkgutil

from . import __path__ as _pkg_path

for _m in pkgutil.iter_modules(_pkg_path):
    if not _m.name.startswith("_") and _m.name != "base":
        importlib.import_module(f"{__name__.rsplit('.', 1)[0]}.{_m.name}")
