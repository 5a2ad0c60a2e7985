"""Write small solid-colour PNGs with the standard library only (usable in Blender's Python and the tests')."""
from __future__ import annotations

import struct
import zlib


def png_bytes(width: int, height: int, color) -> bytes:
    """A solid-colour 8-bit PNG: `color` is (r, g, b) or (r, g, b, a)."""
    channels = len(color)
    row = b"\x00" + bytes(color) * width

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6 if channels == 4 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height)) + \
        chunk(b"IEND", b"")
