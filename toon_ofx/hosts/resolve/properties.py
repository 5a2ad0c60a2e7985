"""Giving the placed result its source item's look: transform, crop, compositing (`copy_look`).

The keys are those of README.txt, "Looking up Timeline item properties", read with
`TimelineItem.GetProperty(key)` and written with `SetProperty(key, value)` ("Getting the values for the
keys that uses constants will return the number which is in the constant"). Each write is read back:
a setter may answer True and change nothing. An RGBA overlay result composites Normal at full
opacity over its source (which keeps its own settings), like the Blender add-on's Alpha Over.

What the scripting API cannot copy is said in the report (`NOT_COPIED`): the grade (Color page),
Fusion and OFX effects, and keyframes (an animated value comes across as the one value GetProperty
answers).
"""
from __future__ import annotations

from typing import Any, List

#: the source's placement and sizing; ZoomGang before ZoomX/ZoomY (with the gang on, one zoom sets both)
PLACEMENT_KEYS = ("ZoomGang", "ZoomX", "ZoomY", "Pan", "Tilt", "RotationAngle", "AnchorPointX", "AnchorPointY",
                  "Pitch", "Yaw", "FlipX", "FlipY", "CropLeft", "CropRight", "CropTop", "CropBottom", "CropSoftness",
                  "CropRetain", "Distortion", "DynamicZoomEase", "Scaling", "ResizeFilter", "RetimeProcess",
                  "MotionEstimation")
#: how it composites onto the tracks below
COMPOSITE_KEYS = ("CompositeMode", "Opacity")
COMPOSITE_NORMAL = 0  # COMPOSITE_NORMAL in README.txt
NOT_COPIED = ("not copied (no scripting call for them): grades, Fusion and OFX effects, and keyframes "
              "(an animated transform or opacity comes across as one value)")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-4 * max(1.0, abs(float(a)))
    return a == b


def _set(item, key: str, value: Any) -> bool:
    try:
        return bool(item.SetProperty(key, value)) and _same(item.GetProperty(key), value)
    except Exception:  # a key this Resolve version does not know
        return False


def copy_look(source, target, overlay: bool = False) -> List[str]:
    """Copy the source item's properties to `target`; returns the keys that would not take."""
    failed = []
    keys = PLACEMENT_KEYS if overlay else PLACEMENT_KEYS + COMPOSITE_KEYS
    for key in keys:
        try:
            value = source.GetProperty(key)
        except Exception:
            continue
        if value is None or _same(target.GetProperty(key), value):
            continue
        if not _set(target, key, value):
            failed.append(key)
    if overlay:
        for key, value in (("CompositeMode", COMPOSITE_NORMAL), ("Opacity", 100.0)):
            if not _same(target.GetProperty(key), value) and not _set(target, key, value):
                failed.append(key)
    return failed
