"""Pixel formats as ffmpeg defines them: bits per component, chroma subsampling, alpha.

The facts come from ffprobe's own table (``-show_pixel_formats``, read once per
process), so ``yuv420p10le``, ``p010le``, ``gbrp12le`` or ``nv12`` need no
name parsing here. A palette format (``pal8``) may hold transparency but is
not an alpha format: its pictures are treated as opaque.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Optional

from .tools import ffprobe_exe, run


@dataclass(frozen=True)
class PixelFormat:
    name: str
    bits: int                 # bits per component (the deepest one)
    chroma: Optional[str]     # "420", "422", "444", "411", "440"; None for RGB and grey
    alpha: bool
    rgb: bool


def pixel_format(name: str) -> PixelFormat:
    """What pixel format `name` is; an unknown name is taken for 8-bit 4:2:0 YUV."""
    known = _table().get(name)
    if known is not None:
        return known
    bits = re.search(r"p(\d{2})(le|be)?$", name)
    return PixelFormat(name, int(bits.group(1)) if bits else 8, "420", False, False)


@lru_cache(maxsize=1)
def _table() -> Dict[str, PixelFormat]:
    try:
        out = run([ffprobe_exe(), "-v", "error", "-show_pixel_formats", "-of", "json"], "ffprobe's pixel formats")
        formats = json.loads(out.stdout or b"{}").get("pixel_formats", [])
    except ValueError:
        return {}
    table = {}
    for f in formats:
        flags = f.get("flags", {})
        depth = max((int(c.get("bit_depth", 8)) for c in f.get("components", [])), default=8)
        chroma = None
        if not flags.get("rgb") and int(f.get("nb_components", 0)) >= 3:
            w, h = int(f.get("log2_chroma_w", 0)), int(f.get("log2_chroma_h", 0))
            chroma = {(0, 0): "444", (1, 0): "422", (1, 1): "420", (2, 0): "411", (0, 1): "440"}.get((w, h), "420")
        table[f["name"]] = PixelFormat(f["name"], depth, chroma, bool(flags.get("alpha")) and not flags.get("palette"),
                                       bool(flags.get("rgb")))
    return table
