#!/usr/bin/env bash
# Install toon-ofx into ./.venv, with ffmpeg from the system's packages when it is missing.
#   scripts/install.sh          the product (engine, CLI, server, panel)
#   scripts/install.sh --dev    plus test tools, the farm extras and a Blender (bpy) environment
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0; pick a CUDA build from
# pytorch.org first if you have an NVIDIA GPU and want it).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

system_packages=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || system_packages+=(ffmpeg)
if [ "$dev" = 1 ]; then
    # bpy (Blender as a Python module) needs these X/GL libraries even headless.
    for lib in libx11-6 libxi6 libxkbcommon0 libsm6 libgl1 libxrender1 libxfixes3 libxext6 libxxf86vm1 \
               libegl1 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0; do
        dpkg -s "$lib" >/dev/null 2>&1 || system_packages+=("$lib")
    done
fi
if [ "${#system_packages[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null; then
        echo "install.sh: installing ${system_packages[*]} with apt-get"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${system_packages[@]}"
    elif command -v brew >/dev/null; then
        brew install ffmpeg
    else
        echo "install.sh: please install ${system_packages[*]} with your system's package manager" >&2
        exit 1
    fi
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch first, so nothing else pulls a different (multi-GB) build.
.venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
if [ "$dev" = 1 ]; then
    .venv/bin/pip install -q -e ".[dev]"
    bash scripts/setup_blender_env.sh .venv-blender
    bash scripts/setup_blender_env.sh .venv-blender-4.2 4.2.x   # the oldest supported Blender, 4.2 LTS
    # The reference LPIPS code and its v0.1 heads, only for the parity test (never imported by the engine).
    [ -f .lpips-reference/lpips/lpips.py ] || .venv/bin/pip install -q --no-deps --target .lpips-reference lpips==0.1.4
    # The official OpenJD CLI (validates and runs the farm export) pins an older openjd-model: own venv.
    [ -x .venv-openjd/bin/openjd ] || { "$python" -m venv .venv-openjd && .venv-openjd/bin/pip install -q openjd-cli; }
else
    .venv/bin/pip install -q -e ".[accurate,panel]"
fi
echo "install.sh: ready: .venv/bin/toon-ofx"
