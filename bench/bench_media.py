"""What 16-bit precision and conforming outputs cost, as ratios within one run.

    python bench/bench_media.py [--size 1280x720] [--frames 24]

Makes a 10-bit ProRes 422 HQ clip (a smooth gradient with the astronaut's face,
two audio streams, timecode) and times, per frame: decoding at 8 vs 16 bits,
writing the frame PNG at 8 vs 16 bits, aligning and pasting a face back at 8 vs
16 bits, and per movie: encoding the clip as 8-bit H.264 (what every movie was) vs the
ProRes 422 HQ that follows the source, with the streams carried and read back.
Also prints the distinct levels of one gradient row in each decode (the point
of it all). Numbers are ratios to the 8-bit path measured in the same run.

Plates (``--plates-size``, 1920x1080 by default; ``--plates-only`` skips the
above): OpenImageIO's read and write per frame for 16-bit PNG, 10-bit DPX and
half-float OpenEXR (PIZ), beside today's paths (OpenCV for PNG; ffmpeg, the
only other reader here, for DPX and EXR); and the OpenColorIO conversion of an
ACEScg plate (the whole frame into the working space, the face region back)
against the frame's non-inference work (decode, face detection, alignment,
paste-back, write): goal <= 5 %.

Measured (2 shared cores, 1920x1080, 8 frames, ms per frame): read / write
PNG 16-bit 57 / 287 with OIIO vs 48 / 117 with OpenCV (so PNG frames are still
written by OpenCV); DPX 10-bit 29 / 27 (ffmpeg reads it in 46); EXR half PIZ
54 / 132 (ffmpeg reads it in 139). OCIO: 39 ms into the engine's 16-bit codes
(the lossless float path alone takes 69), 22 ms for an 810x810 face region
back: 60 ms = 4.3 % of the frame's 1399 ms of non-inference work.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import media_sources as ms  # noqa: E402
from engine.faces.align import align_face, ffhq_quad  # noqa: E402
from engine.faces.landmarks import DlibLandmarker  # noqa: E402
from engine.faces.paste import paste_faces  # noqa: E402
from toon_ofx.core import media  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--plates-size", default="1920x1080")
    ap.add_argument("--plates-frames", type=int, default=6)
    ap.add_argument("--plates-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.plates_only:
        movie(args)
    plates(args)
    return 0


def movie(args) -> None:
    w, h = (int(v) for v in args.size.split("x"))
    from skimage import data

    face = data.astronaut()
    with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
        tmp = Path(tmp)
        clip = ms.encode(
            tmp / "clip.mov", ms.frames(w, h, args.frames, face=face, face_size=h * 3 // 4, face_x=w // 4,
                                        face_y=h // 8), "24000/1001",
            ["-c:v", "prores_ks", "-profile:v", "3", "-pix_fmt", "yuv422p10le", *ms.tags("bt709", "bt709", "bt709",
                                                                                       "bt709")],
            inputs=["-f", "lavfi", "-i", "sine=sample_rate=48000:duration=1",
                    "-f", "lavfi", "-i", "sine=frequency=880:sample_rate=48000:duration=1"],
            output=["-map", "0", "-map", "1", "-map", "2", "-c:a", "pcm_s24le", "-timecode", "01:00:00:00"])
        info = media.probe(clip)
        n = info.frame_count
        rows = {}
        decoded = {}
        for bits in (8, 16):
            frames = []
            rows[f"decode {bits}-bit"] = timed(lambda: frames.extend(f for _, f in media.read_frames(info, bits=bits))) / n
            decoded[bits] = frames
        for bits in (8, 16):
            folder = tmp / f"png{bits}"
            frames = decoded[bits]
            rows[f"write PNG {bits}-bit"] = timed(lambda: [media.write_frame(folder / f"f.{i:06d}.png", f, bits=bits,
                                                                             fsync=False)
                                                           for i, f in enumerate(frames)]) / n
        quad = ffhq_quad(DlibLandmarker().detect(decoded[8][0])[0].landmarks)
        for bits in (8, 16):
            frame = decoded[bits][0]
            crop, t = align_face(frame, quad, 1024)
            rows[f"align 1024 {bits}-bit"] = timed(lambda: align_face(frame, quad, 1024), 5)
            rows[f"paste {bits}-bit"] = timed(lambda: paste_faces(frame, [(crop, t)], color_match=True), 5)
        encodes = {}
        for name, codec in (("encode H.264 8-bit", "h264"), ("encode ProRes 422 HQ", None)):
            out = tmp / f"{codec or 'follow'}.mov"
            rows[name] = timed(lambda: encodes.setdefault(name, media.encode_frames(tmp / "png16" / "f.%06d.png", out, info,
                                                                             codec=codec, audio_from=info))) / n

    base = {"decode": rows["decode 8-bit"], "write PNG": rows["write PNG 8-bit"],
            "align 1024": rows["align 1024 8-bit"], "paste": rows["paste 8-bit"],
            "encode": rows["encode H.264 8-bit"]}
    print(f"{w}x{h}, {n} frames of 10-bit ProRes 422 HQ with two PCM streams and timecode")
    print(f"{'stage':28s} {'ms/frame':>10s} {'ratio':>7s}")
    for name, seconds in rows.items():
        ref = next(v for k, v in base.items() if name.startswith(k))
        print(f"{name:28s} {seconds * 1000:10.2f} {seconds / ref:7.2f}")
    print(f"distinct levels in one gradient row: 8-bit decode {ms.distinct_levels(decoded[8][0][h // 20])}, "
          f"16-bit decode {ms.distinct_levels(decoded[16][0][h // 20])}")
    for name, enc in encodes.items():
        print(f"{name}: {enc.codec.label}, {enc.pix_fmt}, notes: {enc.notes or 'none'}")


def plates(args) -> None:
    """OIIO against today's readers and writers; OCIO's cost next to a frame's non-inference work."""
    import subprocess

    import cv2

    from toon_ofx.core.colour import plan_colour
    from toon_ofx.core.media.images import read_pixels

    w, h = (int(v) for v in args.plates_size.split("x"))
    n = args.plates_frames
    from skimage import data

    pictures = ms.frames(w, h, n, face=data.astronaut(), face_size=h * 3 // 4, face_x=w // 3, face_y=h // 8)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-plates-") as tmp:
        tmp = Path(tmp)
        linear = [ms.to_acescg(p) for p in pictures]
        kinds = {"PNG 16-bit": (".png", lambda k: pictures[k], "uint16", {}),
                 "DPX 10-bit": (".dpx", lambda k: pictures[k], "uint16", {"bits": 10}),
                 "EXR half PIZ": (".exr", lambda k: linear[k].astype(np.float16), "half", {"compression": "piz"})}
        for name, (ext, pixels, kind, attrs) in kinds.items():
            folder = tmp / ext.strip(".")
            folder.mkdir()
            files = [folder / f"p.{k:04d}{ext}" for k in range(n)]
            write = timed(lambda: [ms.write_image(f, pixels(k), kind, **attrs) for k, f in enumerate(files)]) / n
            read = timed(lambda: [read_pixels(f) for f in files]) / n
            if ext == ".png":
                other = "OpenCV", timed(lambda: [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]) / n
                out = tmp / "cv"
                out.mkdir()
                other_write = timed(lambda: [media.write_frame(out / f.name, pixels(k), bits=16, fsync=False)
                                             for k, f in enumerate(files)]) / n
            else:
                fmt = "gbrpf32le" if ext == ".exr" else "rgb48le"
                cmd = ["ffmpeg", "-v", "error", "-i", str(folder / f"p.%04d{ext}"), "-f", "rawvideo", "-pix_fmt", fmt,
                       "pipe:1"]
                other = "ffmpeg", timed(lambda: subprocess.run(cmd, capture_output=True, check=True)) / n
                other_write = None
            rows.append((name, read, write, other[0], other[1], other_write))
        # OCIO: an ACEScg plate into the working space (whole frame), the face region back
        exr = tmp / "exr" / "p.0000.exr"
        info = media.probe(exr)
        colour = plan_colour(info, "ACEScg")
        half = read_pixels(exr)[0][..., :3]
        plate = half.astype(np.float32)
        # what the render does (core.pictures): OCIO from half floats straight to 16-bit codes; the face back
        half = np.ascontiguousarray(half)
        to_engine = timed(lambda: colour.to_engine(half, 16), 3)
        lossless = timed(lambda: colour.to_working(plate.copy()), 3)
        face = plate[h // 8: h // 8 + h * 3 // 4, w // 3: w // 3 + h * 3 // 4].copy()
        back = timed(lambda: colour.from_working(face.copy()), 3)
        engine = colour.to_engine(plate, 16)
        landmarker = DlibLandmarker()
        small = (engine >> 8).astype(np.uint8)
        detect = timed(lambda: landmarker.detect(small), 2)
        quad = ffhq_quad(landmarker.detect(small)[0].landmarks)
        crop, t = align_face(engine, quad, 1024)
        align = timed(lambda: align_face(engine, quad, 1024), 2)
        paste = timed(lambda: paste_faces(engine, [(crop, t)], color_match=True), 2)
        exr_read = next(r for r in rows if r[0].startswith("EXR"))
        other = exr_read[1] + exr_read[2] + detect + align + paste
    print(f"\nplates, {w}x{h}, {n} frames (ms per frame)")
    print(f"{'format':14s} {'OIIO read':>10s} {'OIIO write':>11s}   today's path")
    for name, read, write, who, other_read, other_write in rows:
        extra = f", write {other_write * 1000:.1f}" if other_write is not None else ""
        print(f"{name:14s} {read * 1000:10.1f} {write * 1000:11.1f}   {who}: read {other_read * 1000:.1f}{extra}")
    cost = to_engine + back
    print(f"OCIO ACEScg half -> 16-bit sRGB codes for the engine, whole frame: {to_engine * 1000:.1f} ms (float "
          f"lossless to_working alone: {lossless * 1000:.1f} ms); face region back ({face.shape[1]}x{face.shape[0]}, "
          f"lossless): {back * 1000:.1f} ms")
    print(f"non-inference work of a frame: EXR read {exr_read[1] * 1000:.1f} + write {exr_read[2] * 1000:.1f} + "
          f"detect {detect * 1000:.1f} + align 1024 {align * 1000:.1f} + paste {paste * 1000:.1f} = "
          f"{other * 1000:.1f} ms")
    print(f"colour conversion: {cost * 1000:.1f} ms = {100 * cost / other:.1f} % of it (goal <= 5 %); "
          f"{os.cpu_count()} cores")


if __name__ == "__main__":
    sys.exit(main())
