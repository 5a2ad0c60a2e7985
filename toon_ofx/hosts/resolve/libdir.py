"""The client files the installed Resolve script imports: written whole, swapped in, old copies removed.

`build_lib()` copies the stdlib closure of the bridge (`toon_ofx.vendor.closure(RESOLVE_ROOTS)`) into
`<lib root>/toon_ofx-<content stamp>/toon_ofx/`: built under a temporary name and renamed into place, so
no half-written copy is ever in use. The installer then points the script at that folder with one atomic
`os.replace`: Resolve imports either the old complete copy or the new one, never a mix (the old layout's
leftovers, such as the pre-split `hosts/resolve.py`, are not on its path any more).

`remove_old_libs()` deletes the copies an earlier install left, and only those: a folder counts as this
installer's when its manifest (`MANIFEST`, written before the files) names every file it holds
(`__pycache__` aside). The first layout (`<lib root>/toon_ofx/`, no manifest) counts when it holds nothing
but modules this package vendors or once vendored. Anything else in the lib root is left alone.
Standard library only.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterable, List, Optional, Set

from .api import Log

MANIFEST = "toon-ofx-lib.json"
PREFIX = "toon_ofx-"
STAGING = ".toon_ofx-staging-"
LEGACY = "toon_ofx"
#: modules earlier versions vendored that the package no longer has (relative to toon_ofx/)
RETIRED = frozenset({"hosts/resolve.py"})


class LibError(OSError):
    """The lib root holds something in the way that this installer did not write."""


def content_stamp(package_dir: str, names: Iterable[str]) -> str:
    """A short hash of the files' names and bytes: the same sources give the same folder."""
    digest = hashlib.sha1()
    for name in sorted(names):
        digest.update(name.encode() + b"\0")
        with open(os.path.join(package_dir, *name.split("/")), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


def _present(folder: str) -> Set[str]:
    """Files under `folder` ('/'-separated, relative), compiled caches left out."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            found.add(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
    return found


def is_ours(folder: str) -> bool:
    """True when `folder` holds nothing but the files its manifest names (a complete or partial copy)."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            listed = set(json.load(f)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return _present(folder) <= listed | {MANIFEST}


def _is_legacy(folder: str, names: Iterable[str]) -> bool:
    """The first layout (`<root>/toon_ofx/`): only modules this package vendors or once vendored."""
    known = {name for name in names} | RETIRED
    present = _present(folder)
    return bool(present) and present <= known


def build_lib(lib_root: str, package_dir: str, names: List[str]) -> str:
    """The folder to put on sys.path (it holds `toon_ofx/`), written whole before it gets its final name."""
    final = os.path.join(lib_root, PREFIX + content_stamp(package_dir, names))
    files = [f"toon_ofx/{name}" for name in names]
    if os.path.isdir(final) and is_ours(final) and _present(final) == set(files) | {MANIFEST}:
        return final  # the same sources are installed already
    os.makedirs(lib_root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=STAGING, dir=lib_root)
    try:
        with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as f:
            json.dump({"files": files}, f, indent=1)  # first: a crash leaves a folder that is provably ours
        for name, rel in zip(names, files):
            dst = os.path.join(staging, *rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(os.path.join(package_dir, *name.split("/")), dst)
        if os.path.lexists(final):
            if not is_ours(final):
                raise LibError(f"{final} exists and was not written by toon-ofx; remove it or choose another "
                               "--lib-dir")
            shutil.rmtree(final)  # an incomplete copy of the same sources
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def remove_old_libs(lib_root: str, names: Iterable[str], keep: Optional[str] = None,
                    log: Optional[Log] = None) -> List[str]:
    """Delete the copies earlier installs left in `lib_root` (never `keep`, never anything not ours)."""
    log = log or (lambda message: None)
    names = list(names)
    removed = []
    try:
        entries = sorted(os.listdir(lib_root))
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(lib_root, entry)
        if (keep and os.path.abspath(path) == os.path.abspath(keep)) or os.path.islink(path) \
                or not os.path.isdir(path):
            continue
        if entry.startswith((PREFIX, STAGING)):
            ours = is_ours(path)
        elif entry == LEGACY:
            ours = _is_legacy(path, names)
            if not ours:
                log(f"  left {path} alone: it holds files toon-ofx did not write")
        else:
            continue
        if not ours:
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:  # Windows: a file Resolve still has open
            log(f"  could not remove the old copy {path}: {exc}")
            continue
        removed.append(path)
    return removed
