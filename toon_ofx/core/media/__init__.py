"""Media I/O: the only package that runs ffmpeg/ffprobe and reads or writes image files (OpenImageIO).

Sources are movies (anything ffmpeg decodes), image sequences (a printf
pattern such as ``shot.%04d.png``, a ``shot.####.png`` pattern, or a folder
of numbered images) and single still images (a 1-frame clip: a photo can be
toonified like a clip; pass ``allow_still=False`` to `probe` where a clip is
needed). Frame N is the N-th picture the decoder presents, at its own
timestamp, for ffprobe, OpenCV and editors alike (see `timestamps`).

Callers use this package as one facade (``media.probe``, ``media.read_frames``,
``media.write_frame``, ``media.encode_movie``...). The data path, a module a step:

    info        MediaInfo (what a source is); frame-rate, frame-range and HDR checks
    probe       probe(): a movie, sequence or still -> MediaInfo
    pixfmt      pixel formats: bits, chroma subsampling, alpha (ffprobe's own table)
    timestamps  a movie stream's presented frames and their times
    sequences   image sequences and stills: patterns, numbered folders, gaps
    images      one image file <-> pixels through OpenImageIO (PNG, JPEG, TIFF, DPX, OpenEXR...): its own
                type and channels, EXIF orientation, the header a plate is written back with
    decode      read_frames(): RGB frames (uint8, or uint16 for deep sources) of a movie or sequence;
                read_native(): frames as the source holds them (alpha, float, every channel)
    frames      rendered frame files: naming, resume scan, atomic write_frame
    formats     movie outputs: the codecs, which follows the source, pixel formats, colour, fields
    streams     the source's audio, subtitles, data, timecode and reel name in an output
    timecode    start timecode of a part of a clip (drop-frame included)
    encode      encode_movie(): frame files -> a movie that conforms to its source
    writer      MovieWriter: RGB frames piped straight into a movie
    verify      a written movie read back and checked before it gets its name
    files       sources must be regular files; atomic outputs; never writing over a source
    tools       locating ffmpeg/ffprobe; deadlines on every call; ffmpeg's last error lines

Outputs are written atomically: frames go to a temp file in the same folder
and are renamed into place; movies are encoded to a temp name next to the
output and renamed only when ffmpeg succeeded. Source media is never written.
"""
from .decode import read_frames, read_native, source_bits
from .encode import Encoded, encode_frames, encode_movie
from .formats import CODECS, Codec, choose_codec, codec_choice, codec_names, default_codec, movie_suffix
from .frames import existing_frames, sequence_path, sequence_pattern, write_frame
from .images import image_format, read_image, read_pixels
from .info import (DEFAULT_SEQUENCE_FPS, FRAME_DIGITS, IMAGE_EXTS, MOVIE_EXTS, ImageFormat, MediaInfo, Stream,
                   check_renderable)
from .probe import probe
from .tools import ffmpeg_exe, ffprobe_exe
from .writer import MovieWriter

__all__ = [
    "MediaInfo", "Stream", "ImageFormat", "probe", "read_frames", "read_native", "source_bits", "write_frame",
    "read_image", "read_pixels", "image_format", "codec_choice", "sequence_path",
    "sequence_pattern", "existing_frames", "encode_movie", "encode_frames", "Encoded", "MovieWriter", "IMAGE_EXTS",
    "MOVIE_EXTS", "ffmpeg_exe", "ffprobe_exe", "DEFAULT_SEQUENCE_FPS", "FRAME_DIGITS", "CODECS", "Codec",
    "codec_names", "choose_codec", "default_codec", "movie_suffix", "check_renderable",
]
