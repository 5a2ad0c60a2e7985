"""A stand-in renderer for the real engine process: ``toon-ofx serve --render-fn engine_stub:identity_render``.

It decodes the source with toon_ofx.core.media (the engine's own frame counting)
and writes each requested frame unchanged, named by its source frame number,
like ``render.render`` does. Rendering the Blender timeline with and without
the placed result then shows whether the engine's frame N is Blender's frame N.
``TOON_STUB_DELAY`` adds seconds per frame; seed 4242 makes the render fail.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from toon_ofx.core import media
from toon_ofx.core.errors import Cancelled, UserError

FAIL_SEED = 4242


def identity_render(request, progress=None, cancel=None):
    delay = float(os.environ.get("TOON_STUB_DELAY", "0"))
    if request.params.get("seed") == FAIL_SEED:
        raise UserError("the stand-in renderer was told to fail", field="seed")
    info = media.probe(request.source)
    first, last = request.frames
    pattern = str(request.output)
    number = getattr(info, "first_number", 0)   # an image sequence's results carry its own file numbers
    total = last - first + 1
    overlay = request.params.get("output_kind") == "overlay"

    def emit(stage, done):
        if progress is not None:
            progress(SimpleNamespace(stage=stage, frames_done=done, frames_total=total, faces=0, eta_seconds=None))

    emit("rendering", 0)
    done = 0
    for index, frame in media.read_frames(info, first, last):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"cancelled after {done} of {total} frames")
        if overlay:
            import numpy as np
            frame = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
        media.write_frame(Path(pattern % (number + index)), frame)
        done += 1
        emit("rendering", done)
        time.sleep(delay)
    emit("done", done)
    return SimpleNamespace(output=Path(pattern).parent, kind="sequence", pattern=pattern, first_frame=first,
                           last_frame=last, written=done, skipped=0, fps=float(info.fps), first_number=number)
