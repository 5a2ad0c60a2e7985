"""What 16-bit precision and conforming outputs cost, as ratios within one run.

    python bench/bench_media.py [--size 1280x720] [--frames 24]

Makes a 10-bit ProRes 422 HQ clip (a smooth gradient with the astronaut's face,
two audio streams, timecode) and times, per frame: decoding at 8 vs 16 bits,
writing the frame PNG at 8 vs 16 bits, aligning and pasting a face back at 8 vs
16 bits, and per movie: encoding the clip as 8-bit H.264 (what every movie was) vs the
ProRes 422 HQ that follows the source, with the streams carried and read back.
Also prints the distinct levels of one gradient row in each decode (the point
of it all). Numbers are ratios to the 8-bit path measured in the same run.
"""
from __future__ import annotations

import argparse
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
    args = ap.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
