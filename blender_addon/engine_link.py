"""Where the add-on gets toon-ofx's stdlib client and parameter schema.

Blender's Python has no ``toon_ofx`` installed, so the built extension carries
copies of ``client.py`` and ``core/params.py``, ``core/errors.py``, ``core/dirs.py``
in ``_vendor/toon_ofx/`` (see ``scripts/build_blender_addon.py``). In a repository
checkout (``blender_addon/`` beside ``toon_ofx/``) the add-on loads the
repository's modules instead, under a private package name, so that
``sys.path`` and the global ``toon_ofx`` name stay untouched.

Only the standard library is imported from here.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

_PRIVATE = __name__.rsplit(".", 1)[0] + "._toon_ofx_dev"


def _load():
    try:
        from ._vendor import toon_ofx as package  # built extension
        return package, "vendored"
    except ImportError:
        pass
    if _PRIVATE in sys.modules:
        return sys.modules[_PRIVATE], "checkout"
    here = os.path.dirname(os.path.realpath(__file__))  # follows a symlinked dev install
    source = os.path.join(os.path.dirname(here), "toon_ofx")
    init = os.path.join(source, "__init__.py")
    if not os.path.isfile(init):
        raise ImportError(
            "toon-ofx client modules not found: build the extension with "
            "scripts/build_blender_addon.py (it bundles them) or run from a checkout")
    spec = importlib.util.spec_from_file_location(_PRIVATE, init, submodule_search_locations=[source])
    package = importlib.util.module_from_spec(spec)
    sys.modules[_PRIVATE] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[_PRIVATE]
        raise
    return package, "checkout"


_package, SOURCE = _load()
params = importlib.import_module(_package.__name__ + ".core.params")
errors = importlib.import_module(_package.__name__ + ".core.errors")


def client_module():
    """The client module (imported on first use, so the panel works even if it is missing)."""
    return importlib.import_module(_package.__name__ + ".client")


def version() -> str:
    return getattr(_package, "__version__", "?")
