"""The layout's rules (docs/ARCHITECTURE.md, "Layout"): who may import whom, and room sizes.

Imports are read from the source (every `import`, at module level or inside a
function), so a lazy import breaks a rule as much as a top-level one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

#: room -> the toon_ofx rooms it may import (besides itself); "engine" means the engine package
ALLOWED = {
    "core": {"engine"},
    "client": {"core"},
    "vendor": set(),
    "service": {"core", "engine", "client"},   # the client defines the wire protocol's shared pieces
    "farm": {"core", "engine"},
    "panel": {"core", "client", "hosts", "engine"},
    "training": {"core", "engine"},
    "hosts": {"core", "client", "vendor"},
    "cli": {"core", "client", "service", "farm", "panel", "training", "hosts", "engine"},
}
#: modules allowed over the size limit -> the words in their docstring that say why
LARGE = {
    "engine/generator/stylegan2.py": "Deliberately one file",
    "toon_ofx/core/model_store.py": "One module over the usual size",
}
SIZE_LIMIT = 500


def python_files(*roots):
    for root in roots:
        yield from sorted(p for p in (REPO / root).rglob("*.py") if "_vendor" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path):
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
                if node.module:
                    yield stem
                else:
                    yield from (f"{stem}.{alias.name}" for alias in node.names)
            else:
                yield node.module


def room_of(name: str) -> str:
    """'toon_ofx.core.media.probe' -> 'core'; 'toon_ofx.client' -> 'client'; 'engine.x' -> 'engine'."""
    parts = name.split(".")
    if parts[0] == "engine":
        return "engine"
    package = REPO / "toon_ofx"
    if len(parts) > 1 and ((package / parts[1]).is_dir() or (package / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "toon_ofx"  # the package itself (__version__): anyone may


def test_engine_never_imports_the_product():
    offenders = [(module_name(p), name) for p in python_files("engine") for name in imports_of(p)
                 if name.split(".")[0] == "toon_ofx"]
    assert not offenders


def test_nothing_imports_the_cli():
    offenders = [module_name(p) for p in python_files("toon_ofx", "engine", "blender_addon")
                 if any(name == "toon_ofx.cli" or name.startswith("toon_ofx.cli.") for name in imports_of(p))]
    assert offenders == ["toon_ofx.__main__"]  # `python -m toon_ofx` runs it


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_rooms_import_only_what_the_layout_allows(room):
    offenders = []
    for path in python_files("toon_ofx"):
        name = module_name(path)
        if room_of(name) != room:
            continue
        for target in imports_of(path):
            if target.split(".")[0] not in ("toon_ofx", "engine"):
                continue
            other = room_of(target)
            if other not in (room, "toon_ofx") and other not in ALLOWED[room]:
                offenders.append(f"{name} imports {target}")
    assert not offenders, offenders


def test_hosts_scripts_import_only_their_bridge():
    names = [name for p in REPO.joinpath("resolve_scripts").glob("*.py") for name in imports_of(p)]
    assert {n for n in names if n.split(".")[0] in ("toon_ofx", "engine")} <= {"toon_ofx.hosts"}  # .resolve
    addon = [name for p in python_files("blender_addon") for name in imports_of(p)]
    assert not [n for n in addon if n.split(".")[0] in ("toon_ofx", "engine")], \
        "the Blender add-on reaches toon-ofx only through engine_link (the vendored client)"


def test_no_module_is_larger_than_the_limit_without_a_stated_reason():
    large = {p.relative_to(REPO).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in python_files("engine", "toon_ofx", "blender_addon")}
    over = {path for path, lines in large.items() if lines > SIZE_LIMIT}
    assert over <= set(LARGE), {path: large[path] for path in over - set(LARGE)}
    for path, reason in LARGE.items():
        assert reason in ast.get_docstring(ast.parse((REPO / path).read_text(encoding="utf-8"))), path


def test_no_class_is_larger_than_300_lines():
    big = [f"{p.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
           for p in python_files("engine", "toon_ofx", "blender_addon")
           for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
           if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300]
    assert not big
