"""Media I/O: the only package that runs ffmpeg/ffprobe.

Sources are movies (anything ffmpeg decodes), image sequences (a printf
pattern such as ``shot.%04d.png``, a ``shot.####.png`` pattern, or a folder
of numbered images) and single still images (a 1-frame clip: a photo can be
toonified like a clip; pass ``allow_still=False`` to `probe` where a clip is
needed). Frame N is the N-th picture the decoder presents, at its own
timestamp, for ffprobe, OpenCV and editors alike (see `timestamps`).

Callers use this package as one facade (``media.probe``, ``media.read_frames``,
``media.write_frame``, ``media.encode_movie``...). The data path, a module a step:

    info        MediaInfo (what a source is); frame-rate and frame-range checks
    probe       probe(): a movie, sequence or still -> MediaInfo
    timestamps  a movie stream's presented frames and their times
    sequences   image sequences and stills: patterns, numbered folders, gaps
    images      one image file <-> pixels; RGB uint8 and 8/16-bit conversion
    decode      read_frames(): RGB frames of a movie (ffmpeg pipe) or sequence
    frames      rendered frame files: naming, resume scan, atomic write_frame
    encode      encode_movie(): frame files -> movie with the source's timing and audio
    writer      MovieWriter: RGB frames piped straight into a movie
    formats     movie outputs: codec/container checks, colour and encoder options
    files       atomic outputs (temp sibling, rename) and never writing over a source
    tools       locating ffmpeg/ffprobe; ``file:`` URLs; ffmpeg's last error lines

Outputs are written atomically: frames go to a temp file in the same folder
and are renamed into place; movies are encoded to a temp name next to the
output and renamed only when ffmpeg succeeded. Source media is never written.
"""
from .decode import read_frames
from .encode import encode_movie
from .frames import FRAME_DIGITS, existing_frames, sequence_path, sequence_pattern, write_frame
from .images import read_image
from .info import DEFAULT_SEQUENCE_FPS, IMAGE_EXTS, MOVIE_EXTS, MediaInfo
from .probe import probe
from .tools import ffmpeg_exe, ffprobe_exe
from .writer import MovieWriter

__all__ = [
    "MediaInfo", "probe", "read_frames", "write_frame", "read_image", "sequence_path", "sequence_pattern",
    "existing_frames", "encode_movie", "MovieWriter", "IMAGE_EXTS", "MOVIE_EXTS", "ffmpeg_exe", "ffprobe_exe",
    "DEFAULT_SEQUENCE_FPS", "FRAME_DIGITS",
]
