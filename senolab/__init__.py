"""senolab: breast-imaging research across institutions.

Each sub-package exports its public names lazily (:func:`lazy_package`): ``from
senolab.fusion import build_fusion`` works as before, but importing a package, or its
``cli`` module, imports neither torch nor pandas, so ``senolab --help`` answers at once.
"""
from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("senolab")
except PackageNotFoundError:  # a source tree on sys.path without `pip install`
    __version__ = "0+unknown"


def lazy_package(name: str, exports: dict[str, list[str]],
                 registries: dict[str, list[str]] | None = None) -> list[str]:
    """Make the package ``name`` import each public name from its module on first use.

    ``exports`` maps a module of the package to the names the package exports from it.
    ``registries`` maps a module that defines a registry to the modules whose import
    registers its entries: they are imported as soon as the registry's module is, however
    it is reached (``from senolab.fusion.base import FUSIONS`` too), so a registry is never
    seen half-filled. Returns the exported names, for ``__all__``.
    """
    package = sys.modules[name]
    package.__class__ = LazyPackage
    package._lazy_homes = {attr: f"{name}.{module}" for module, attrs in exports.items() for attr in attrs}
    package._lazy_fillers = {f"{name}.{module}": [f"{name}.{filler}" for filler in fillers]
                             for module, fillers in (registries or {}).items()}
    return sorted(package._lazy_homes)


class LazyPackage(types.ModuleType):
    """The module type of a package set up by :func:`lazy_package`."""

    def __getattr__(self, attr: str):
        # called only for names not yet in the package's namespace
        home = self.__dict__.get("_lazy_homes", {}).get(attr)
        if home is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")
        value = getattr(importlib.import_module(home), attr)
        setattr(self, attr, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._lazy_homes})

    def __setattr__(self, attr: str, value) -> None:
        if not (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{attr}"):
            super().__setattr__(attr, value)
            return
        # The import system binds each submodule on its package once the submodule has run:
        # the moment to import the modules that fill the registries it defines.
        module = value
        if self._lazy_homes.get(attr) == module.__name__:
            # a name exported from its same-named module (evaluation.bootstrap) keeps meaning
            # the function, as when the package imported everything up front
            value = getattr(module, attr)
        super().__setattr__(attr, value)
        for filler in self._lazy_fillers.get(module.__name__, []):
            importlib.import_module(filler)
