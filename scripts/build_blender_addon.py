#!/usr/bin/env python3
"""Zip the Blender extension for Blender's "Install from Disk".

    python scripts/build_blender_addon.py            # -> dist/toon_ofx-<version>.zip
    python scripts/build_blender_addon.py -o my.zip

The zip holds ``blender_addon/`` at its root (manifest first) plus copies of
toon-ofx's stdlib client and parameter schema, with what they import
(``toon_ofx.vendor.closure``), under ``_vendor/toon_ofx/``, because Blender's
Python has no toon-ofx installed. The build fails if a bundled module imports
anything but the standard library and other bundled modules. Standard library only; any
Python 3.9+ works, Blender's own included.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from toon_ofx import vendor  # noqa: E402  (stdlib only, like this script)

ADDON = ROOT / "blender_addon"
VENDOR_DIR = "_vendor/toon_ofx"
SKIP_DIRS = {"__pycache__", "_vendor", ".pytest_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".zip", ".blend1")
# Fixed timestamp so the same sources give the same zip.
STAMP = (2024, 1, 1, 0, 0, 0)


class BuildError(Exception):
    pass


def manifest_value(key: str) -> str:
    text = (ADDON / "blender_manifest.toml").read_text(encoding="utf-8")
    match = re.search(rf'^{key}\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise BuildError(f"blender_manifest.toml has no {key}")
    return match.group(1)


def addon_files():
    for dirpath, dirnames, filenames in os.walk(ADDON):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(SKIP_SUFFIXES) or name.startswith("."):
                continue
            path = Path(dirpath) / name
            yield path, path.relative_to(ADDON).as_posix()


def vendored_files(toon_ofx_dir: Path):
    """The client and the schema with everything they import (stdlib only, checked by toon_ofx.vendor)."""
    try:
        names = vendor.closure(vendor.BLENDER_ROOTS, toon_ofx_dir)
    except vendor.VendorError as exc:
        raise BuildError(str(exc)) from None
    for name in names:
        yield toon_ofx_dir / name, f"{VENDOR_DIR}/{name}"


def build(output: Path = None, toon_ofx_dir: Path = None) -> Path:
    """Write the extension zip; returns its path."""
    toon_ofx_dir = Path(toon_ofx_dir or ROOT / "toon_ofx")
    output = Path(output or ROOT / "dist" / f"{manifest_value('id')}-{manifest_value('version')}.zip")
    entries = list(addon_files())
    if not any(arc == "blender_manifest.toml" for _, arc in entries):
        raise BuildError("blender_addon/blender_manifest.toml is missing")
    entries.sort(key=lambda e: (e[1] != "blender_manifest.toml", e[1]))
    entries += list(vendored_files(toon_ofx_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        vendor_init = b'"""Stdlib-only modules bundled from toon-ofx (see scripts/build_blender_addon.py)."""\n'
        for arcname, data in [(arc, path.read_bytes()) for path, arc in entries] + [("_vendor/__init__.py",
                                                                                      vendor_init)]:
            info = zipfile.ZipInfo(arcname, STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    os.replace(tmp, output)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, help="zip to write (default: dist/<id>-<version>.zip)")
    parser.add_argument("--toon-ofx-dir", type=Path, help=argparse.SUPPRESS)  # modules to bundle (tests)
    args = parser.parse_args(argv)
    try:
        path = build(args.output, args.toon_ofx_dir)
    except BuildError as exc:
        print(f"build_blender_addon: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
