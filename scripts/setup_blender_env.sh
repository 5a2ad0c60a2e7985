#!/usr/bin/env bash
# Create a Blender environment the add-on's tests run in: the `bpy` module from PyPI in its own venv.
#
#   bash scripts/setup_blender_env.sh [VENV [VERSION]]
#
#   bash scripts/setup_blender_env.sh                              .venv-blender, bpy 5.0.1 (the default)
#   bash scripts/setup_blender_env.sh .venv-blender-4.2 4.2.x      .venv-blender-4.2, bpy 4.2.23 (4.2 LTS)
#   bash scripts/setup_blender_env.sh /tmp/bpy45 4.5.3             any exact version PyPI has for Python 3.11
#
# VERSION is an exact bpy version, or a series ("4.2", "4.2.x"): a known series means the version pinned
# for it below (the one the tests were run against), any other series the newest bpy of that series.
# BPY_VERSION sets VERSION when no second argument is given.
#
# Why separate: bpy 4.2 to 5.0 exist for Python 3.11 only and pin numpy<2.0, while the engine's
# environment uses numpy 2.x. tests/test_blender_addon.py runs against every bpy venv it finds:
# <repo>/.venv-blender, <repo>/.venv-blender-4.2 and $TOON_OFX_BPY_PYTHON (else /tmp/venv-blender);
# with none, the Blender tests skip, saying why.
#
# bpy needs these X/GL libraries even headless (Debian names): libx11-6 libxi6 libxkbcommon0 libsm6
# libgl1 libxrender1 libxfixes3 libxext6 (scripts/install.sh --dev installs them).
#
# Environment: BPY_VERSION (default 5.0.1), BPY_PYTHON (a Python 3.11 to build the venv with).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${1:-.venv-blender}
requested=${2:-${BPY_VERSION:-5.0.1}}

# The pinned version of each series the add-on is tested on (4.2 LTS: the newest 4.2 on PyPI).
case "$requested" in
    4.2 | 4.2.x) version=4.2.23 ;;
    5.0 | 5.0.x) version=5.0.1 ;;
    *) version=$requested ;;
esac
case "$version" in
    [0-9]*.[0-9]*.[0-9]*) spec="bpy==$version"; want=$version ;;            # exact: 4.2.23
    [0-9]*.[0-9]* | [0-9]*.[0-9]*.x) want=${version%.x}; spec="bpy==$want.*" ;;  # a series: its newest
    *) echo "setup_blender_env: bad bpy version '$requested' (want e.g. 5.0.1, 4.2.23, 4.2 or 4.2.x)" >&2
       exit 2 ;;
esac

# bpy 4.x wheels leave numpy unpinned, but Blender 4.x is built against and ships numpy 1.x (4.2: 1.26);
# numpy 2 would be a Blender that does not exist. (bpy 5.0 pins numpy<2.0 itself.)
extra=()
case "$want" in 4.*) extra=("numpy<2") ;; esac

# The venv's bpy matches when its version equals `want`, or starts with it for a series.
if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$want" <<'PY' 2>/dev/null; then
import sys, bpy
have = ".".join(map(str, bpy.app.version))
want = sys.argv[1]
sys.exit(0 if have == want or have.startswith(want + ".") else 1)
PY
    echo "setup_blender_env: $venv already has bpy $want"
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
    echo "setup_blender_env: $spec needs Python 3.11, and none was found (set BPY_PYTHON)" >&2
    exit 1
fi

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$spec" "${extra[@]}"
# Fails here, naming the library, when an X/GL library is missing.
"$venv/bin/python" -c 'import bpy, sys; print("setup_blender_env: bpy", bpy.app.version_string, "ready in", sys.prefix)'
