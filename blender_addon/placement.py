"""Placing a result: a new image strip above its source strip, showing the toonified frames
on the same timeline frames (see `place_result`)."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from . import compat
from .planning import MediaMapping, ToonifyError, media_mapping, strip_timing
from .timeline import TimelineError, first_free_channel

def place_result(scene, source_strip, result: Dict[str, Any], output_kind: str = "frame",
                 mapping: Optional[MediaMapping] = None):
    """Add the engine's result as a new image strip above `source_strip`, on the same timeline frames.

    The new strip goes into the first channel above the source that is free over
    the source's frames (inside the same meta strip, if any). For each timeline
    frame where the source shows source frame ``s``, it shows the result's frame
    ``s``, and it gets the source's handles (trim, hold frames), transform, crop
    and flips. An overlay result blends with Alpha Over over the original. The
    source strip is not changed.
    """
    if not result.get("pattern"):
        raise ToonifyError("the engine's result has no image-sequence pattern")
    pattern = result["pattern"]
    first, last = int(result["first_frame"]), int(result["last_frame"])
    if mapping is None:
        mapping = media_mapping(scene, source_strip)
    timing = strip_timing(scene, source_strip, mapping)
    try:
        start, _ = timing.visible_timeline_range()
    except TimelineError as exc:
        raise ToonifyError(f"strip {source_strip.name!r}: {exc}") from None
    shown = timing.shown_frames()
    outside = [f for f in shown if not first <= f <= last]
    if outside:
        raise ToonifyError(f"the result holds frames {first}-{last}, but the strip now shows frame {outside[0]}; "
                           "toonify it again")
    number = int(result.get("first_number") or 0)  # frame i is file pattern % (first_number + i)
    files = [pattern % (number + f) for f in shown]
    missing = sorted({f for f in files if not os.path.isfile(f)})
    if missing:
        raise ToonifyError(f"{len(missing)} result frames are missing, e.g. {missing[0]}")
    sed = compat.sequence_editor(scene)
    collection = compat.parent_collection(sed, source_strip)
    span_start, span_end = min(timing.final_start, start), max(timing.final_end, start + len(files))
    occupied = [(s.channel, s.frame_final_start, s.frame_final_end) for s in collection]
    try:
        channel = first_free_channel(occupied, source_strip.channel, span_start, span_end)
    except TimelineError as exc:
        raise ToonifyError(str(exc)) from None

    strip = compat.new_image(collection, f"{source_strip.name} toon", files[0], channel, start)
    for path in files[1:]:
        strip.elements.append(os.path.basename(path))
    # Same visible range as the source: trims, and hold frames beyond the content.
    strip.frame_final_start = timing.final_start
    strip.frame_final_end = timing.final_end
    _copy_look(source_strip, strip)
    if output_kind == "overlay":
        strip.blend_type = "ALPHA_OVER"
        strip.blend_alpha = 1.0
    else:
        strip.blend_type = source_strip.blend_type
        strip.blend_alpha = source_strip.blend_alpha
    strip.select = False
    return strip


def covered_strips(scene, source_strip, strip) -> list:
    """Names of the strips between `source_strip` and the new `strip` (in channel order) on the same frames.

    The result goes into the first free channel above its source; anything in between used to show
    above the source and now sits below the result.
    """
    collection = compat.parent_collection(compat.sequence_editor(scene), source_strip)
    return [s.name for s in sorted(collection, key=lambda s: s.channel)
            if source_strip.channel < s.channel < strip.channel and not s.mute
            and s.frame_final_start < strip.frame_final_end and strip.frame_final_start < s.frame_final_end]


def _copy_look(source, target) -> None:
    """Copy placement (transform, crop, flips) so the result sits exactly over the source."""
    for group, names in (("transform", ("offset_x", "offset_y", "scale_x", "scale_y", "rotation", "origin",
                                        "filter")),
                         ("crop", ("min_x", "max_x", "min_y", "max_y"))):
        src, dst = getattr(source, group, None), getattr(target, group, None)
        if src is None or dst is None:
            continue
        for name in names:
            if hasattr(src, name):
                try:
                    setattr(dst, name, getattr(src, name))
                except (AttributeError, TypeError, ValueError):
                    pass
    for name in ("use_flip_x", "use_flip_y"):
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))
