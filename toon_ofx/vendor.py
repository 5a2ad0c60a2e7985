"""The stdlib-only part of toon_ofx that editor hosts carry with them.

Resolve's and Blender's own Pythons have no toon-ofx, numpy or torch. The
Blender extension bundles the client and the parameter schema; the Resolve
installer copies the client and the Resolve bridge next to its script. Both
ask this module for the files: `closure(roots)` follows the roots' relative
imports through the package, adds every package `__init__.py` on the way, and
refuses any import that is neither the standard library nor part of the
closure, so a heavy import slipping into the client fails the build, not the
user's editor. Standard library only (this module runs in build scripts too).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterable, List, Set

PACKAGE_DIR = Path(__file__).resolve().parent

#: what the Blender extension bundles (the client, and the schema its panel is built from)
BLENDER_ROOTS = ("client", "core/params", "core/errors")
#: what the Resolve installer copies beside its script
RESOLVE_ROOTS = ("client", "hosts/resolve/__init__")


class VendorError(Exception):
    """A module to bundle imports something a host's Python does not have."""


def _stdlib() -> Set[str]:
    names = set(getattr(sys, "stdlib_module_names", ()))
    return names or {"__future__", "argparse", "ast", "base64", "contextlib", "dataclasses", "errno", "fractions",
                     "hashlib", "http", "importlib", "json", "ntpath", "os", "pathlib", "platform", "posixpath",
                     "re", "secrets", "shlex", "shutil", "signal", "socket", "string", "subprocess", "sys",
                     "tempfile", "threading", "time", "typing", "urllib", "uuid"}


def _module_file(package_dir: Path, dotted: List[str]) -> Path:
    """The file of module `dotted` (relative to the package root): a module or a sub-package."""
    as_module = package_dir.joinpath(*dotted).with_suffix(".py")
    if dotted and as_module.is_file():
        return as_module
    return package_dir.joinpath(*dotted, "__init__.py")


def _imports(path: Path, package_dir: Path) -> Iterable[Path]:
    """Files inside the package that `path` imports; raises VendorError for a non-stdlib import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = list(path.relative_to(package_dir).parent.parts)
    stdlib = _stdlib()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
            module = base + (node.module.split(".") if node.module else [])
            target = _module_file(package_dir, module)
            if not target.is_file():
                raise VendorError(f"{path.name}:{node.lineno} imports {'.' * node.level}{node.module or ''}, "
                                  "which is not in the package")
            yield target
            if not node.module or target.name == "__init__.py":
                for alias in node.names:  # `from . import dirs`: a submodule, or a name in __init__
                    sub = _module_file(package_dir, module + [alias.name])
                    if sub.is_file() and sub != target:
                        yield sub
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in stdlib:
                raise VendorError(f"{path.relative_to(package_dir)}:{node.lineno} imports {name!r}, which is "
                                  "not in the standard library; an editor host's Python cannot bundle it")


def closure(roots: Iterable[str], package_dir: Path = PACKAGE_DIR) -> List[str]:
    """Paths (relative to the toon_ofx folder, '/'-separated, sorted) of `roots` and all they import."""
    package_dir = Path(package_dir).resolve()
    todo = [package_dir.joinpath(*root.split("/")).with_suffix(".py") for root in roots]
    seen: Set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        if not path.is_file():
            raise VendorError(f"{path} is missing")
        seen.add(path)
        folder = path.parent
        while folder != package_dir.parent and folder.is_relative_to(package_dir):
            todo.append(folder / "__init__.py")  # every package on the way is imported first
            folder = folder.parent
        todo.extend(_imports(path, package_dir))
    return sorted(p.relative_to(package_dir).as_posix() for p in seen)
