#!/usr/bin/env bash
# The GPU check (issue 20 part 6): on a CUDA machine, the CUDA-marked tests and the speed benches (the
# StyleGAN default path, the encoder path, the VToonify path in float32 and float16, the reference VToonify)
# in at most 7.8 minutes (each step has a deadline: 90 + 170 + 120 + 90 s), then one table.
#
#     bash bench/gpu_check.sh            # from the repository root; results also under $OUT (default /tmp/gpu_check)
#
# What it assumes about the machine (the lent H100/H200 machines: read /work/.library/device/KINDS.md):
# * a Python with a CUDA build of torch: $PYTHON if set, else the first of `python3` and `.venv/bin/python`
#   whose torch sees a GPU (the lent machines' python3 has torch 2.11+cu130, numpy, opencv, scipy,
#   scikit-image, pytest). A carried .venv is no use there: it is a link to this machine's CPU-only venv.
# * nothing can be downloaded there. What this repository needs beyond that Python is stdlib or comes
#   with it; dlib is not there, so the benches place the bench frame's face without it (--landmarker auto)
#   and the CUDA tests use tests/fixed_landmarker.py. Wheels put in .whl/ (git-ignored; see
#   /work/.library/device/README.md for `pip download`) are installed into /tmp/site first.
# * the reference VToonify checkout in bench/.reference/VToonify (git-ignored) for the side-by-side;
#   carry it (`carry: ["bench/.reference"]`); without it the speed bench stops with a message.
# Exit status: 0 all ran and passed, 1 a test failed or a bench broke, 3 no CUDA GPU.
# GPU_CHECK_DRY=1 runs the same steps on the CPU (one round, long deadlines): to check the script itself.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"

DEVICE=cuda ROUNDS=3 SLOW=1
if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then DEVICE=cpu ROUNDS=1 SLOW=30; fi
has_cuda() {
    [ "$DEVICE" = cpu ] && "$1" -c 'import torch' 2>/dev/null && return 0
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for candidate in python3 .venv/bin/python; do
        if command -v "$candidate" >/dev/null 2>&1 && has_cuda "$candidate"; then PY="$candidate"; break; fi
    done
fi
if [ -z "$PY" ] || ! has_cuda "$PY"; then
    echo "gpu_check: no Python here has a CUDA build of torch that sees a GPU (tried \$PYTHON, python3," \
         ".venv/bin/python):" >&2
    for candidate in python3 .venv/bin/python; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        "$candidate" -c 'import torch; print("   torch", torch.__version__, "CUDA build", torch.version.cuda, "GPU seen", torch.cuda.is_available())' >&2 2>/dev/null \
            || echo "   $candidate: no torch" >&2
    done
    exit 3
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None; print("gpu_check:", f"{p.name}, {p.total_memory / 2**30:.0f} GiB" if p else "CPU (dry run)", "torch", torch.__version__)' | tee "$OUT/device.txt"

status=0
step() {   # name, seconds, command...: run with a deadline, keep its log, remember a failure
    local name="$1" limit=$(($2 * SLOW)); shift 2
    echo "== $name (at most ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   rc $rc, $((SECONDS - t0)) s; log $OUT/$name.log"
    [ $rc -eq 0 ] || { status=1; tail -n 15 "$OUT/$name.log"; }
}

# only the files that hold CUDA tests: collecting the rest would import what this machine lacks (PySide6, bpy, ray)
step tests 90 "$PY" -m pytest -m cuda -q -p no:cacheprovider $(grep -l "mark.cuda" tests/test_*.py)
# the random-weight model files are written once (the first bench) and shared
step speed_fp32 170 "$PY" bench/bench_vtoonify.py speed --device $DEVICE --rounds $ROUNDS --no-memory \
    --models "$OUT/models" --json "$OUT/speed_fp32.json"
step speed_fp16 120 "$PY" bench/bench_vtoonify.py speed --device $DEVICE --rounds $ROUNDS --no-memory --half \
    --models "$OUT/models" --json "$OUT/speed_fp16.json"
step small 90 "$PY" bench/bench_vtoonify.py small --device $DEVICE --rounds $ROUNDS --models "$OUT/models" \
    --json "$OUT/small.json"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None

tests = (out / "tests.log").read_text().strip().splitlines()[-1:] if (out / "tests.log").exists() else ["not run"]
print("\n==", (out / "device.txt").read_text().strip())
print(f"{'CUDA tests':<58} {tests[0]}")
for name in ("speed_fp32", "speed_fp16"):
    r = load(name)
    if r is None:
        print(f"{name:<58} did not finish (see {name}.log)")
        continue
    print(f"-- {name}: seconds per face-frame (median of {r['rounds']} interleaved rounds)")
    for k, v in r["seconds_per_face_frame"].items():
        print(f"   {k:<55} {v:9.4f}")
    for k, v in r["ratios"].items():
        print(f"   {k:<55} {v:9.3f}")
    for k, v in r["peak_memory_mb"].items():
        print(f"   peak memory {k:<43} {v:6d} MiB")
    for k, v in r["goals"].items():
        print(f"   goal: {k:<48} {'met' if v else 'NOT met'}")
    if r.get("fp16_vs_fp32"):
        p = r["fp16_vs_fp32"]
        print(f"   fp16 vs fp32 output: max {p['max_abs_levels']:.0f}, mean {p['mean_abs_levels']:.3f} levels, "
              f"PSNR {p['psnr_db']:.1f} dB")
r = load("small")
if r is not None:
    print("-- small faces")
    for k, v in r["network_s"].items():
        print(f"   network {k:<47} {v:9.4f}")
    print(f"   {'saved by stopping one layer early':<55} {r['saved_by_stopping_early']:9.1%}")
    for k, v in r["per_face_s_by_batch"].items():
        print(f"   per face at batch {k:<37} {v:9.4f}")
    for k, v in r["paste_s"].items():
        print(f"   paste, {k:<48} {v:9.4f}")
EOF
exit $status
