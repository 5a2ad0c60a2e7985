#!/usr/bin/env bash
# Create the Blender environment the add-on's tests run in: the `bpy` module from PyPI in its own venv.
#
#   bash scripts/setup_blender_env.sh [VENV]        (default: .venv-blender)
#
# Why separate: bpy 5.0.1 exists for Python 3.11 only and pins numpy<2.0, while the engine's
# environment uses numpy 2.x. tests/test_blender_addon.py finds this venv at $TOON_OFX_BPY_PYTHON,
# <repo>/.venv-blender or /tmp/venv-blender, and skips the Blender tests (saying why) without it.
#
# bpy needs these X/GL libraries even headless (Debian names): libx11-6 libxi6 libxkbcommon0 libsm6
# libgl1 libxrender1 libxfixes3 libxext6 (scripts/install.sh --dev installs them).
#
# Environment: BPY_VERSION (default 5.0.1), BPY_PYTHON (a Python 3.11 to build the venv with).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${1:-.venv-blender}
version=${BPY_VERSION:-5.0.1}

if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$version" <<'PY' 2>/dev/null; then
import sys, bpy
sys.exit(0 if bpy.app.version_string == sys.argv[1] else 1)
PY
    echo "setup_blender_env: $venv already has bpy $version"
    exit 0
fi

python=""
for candidate in "${BPY_PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "setup_blender_env: bpy $version needs Python 3.11, and none was found (set BPY_PYTHON)" >&2
    exit 1
fi

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q "bpy==$version"
# Fails here, naming the library, when an X/GL library is missing.
"$venv/bin/python" -c 'import bpy; print("setup_blender_env: bpy", bpy.app.version_string, "ready in", __import__("sys").prefix)'
