"""`toon-ofx dataset build`: aligned face crops from films or image folders, for fine-tuning.

The crops use the same FFHQ alignment as rendering (``engine.faces.align``), so a
model trained on them lines up with the base model it was fine-tuned from
(which is what makes layer swapping work). Faces that are tiny (the crop would
be upscaled too much), largely outside the frame, blurred, or near-duplicates
of a face already kept (the same shot a few frames later) are skipped.

Output folder::

    DIR/images/<source>-<id>_<frame>_<face>.png   the crops (size x size RGB)
    DIR/manifest.jsonl                            one JSON row per kept crop
    DIR/state.json                                how far each source got (resume)

The manifest is the record of what was kept: re-running the same command
continues where the last run stopped and adds nothing twice; deleting bad
crops from ``images/`` by hand is fine (training skips rows whose file is gone,
and a rebuild does not re-add them).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..core import media
from ..core.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
ANALYSIS_SIZE = 128  # sharpness and duplicate checks look at a crop of this size, whatever --size is
HASH_BITS = 16       # difference hash on a 16 x 16 grid: 256 bits
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


@dataclass
class DatasetOptions:
    size: int = 512
    every: int = 12                  # videos: look at one frame in this many
    min_face: Optional[float] = None  # side of the FFHQ crop square in source pixels; None = size / 4
    min_sharpness: float = 50.0      # variance of the Laplacian of a 128 px grey crop
    max_hash_distance: int = 16      # bits of 256 in which two crops may differ and still be duplicates
    max_outside: float = 0.3         # fraction of the crop square that may lie outside the frame
    landmarker: str = "dlib"
    device: str = "cpu"              # face-alignment only

    @property
    def min_face_px(self) -> float:
        return float(self.size) / 4 if self.min_face is None else float(self.min_face)


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: low means blurred."""
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def dhash(image: np.ndarray, bits: int = HASH_BITS) -> np.ndarray:
    """Difference hash (bits x bits, packed to uint8): near-identical images differ in few bits.

    Aligned faces all share their layout, so the coarse 8 x 8 hash cannot tell
    different people apart; 16 x 16 can (measured on the test media: the same
    shot a few frames on differs in <= 12 of 256 bits, another expression of
    the same person in ~40, other people in > 70).
    """
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (bits + 1, bits), interpolation=cv2.INTER_AREA)
    return np.packbits(small[:, 1:] > small[:, :-1])


def hash_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed hashes (broadcasting over leading axes)."""
    return _POPCOUNT[np.bitwise_xor(a, b)].sum(-1)


class HashIndex:
    """Packed hashes of the kept crops with a vectorised nearest-distance query."""

    def __init__(self, nbytes: int = HASH_BITS * HASH_BITS // 8):
        self._data = np.zeros((64, nbytes), np.uint8)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, h: np.ndarray) -> None:
        if self._n == len(self._data):
            self._data = np.concatenate([self._data, np.zeros_like(self._data)])
        self._data[self._n] = h
        self._n += 1

    def nearest(self, h: np.ndarray) -> int:
        """Smallest distance to any stored hash (a large number when empty)."""
        if self._n == 0:
            return 1 << 30
        return int(hash_distance(self._data[:self._n], h).min())


def quad_side(quad: np.ndarray) -> float:
    return float(np.linalg.norm(quad[1] - quad[0]))


def outside_fraction(quad: np.ndarray, width: int, height: int) -> float:
    """Fraction of the crop square (quad) that lies outside the frame."""
    import cv2

    quad = np.asarray(quad, np.float32).reshape(4, 2)
    area = abs(float(cv2.contourArea(quad)))
    if area <= 0:
        return 1.0
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    inside, _ = cv2.intersectConvexConvex(quad, frame)
    return max(0.0, 1.0 - float(inside) / area)


# ----------------------------------------------------------------- sources


def _is_image_folder(path: Path) -> bool:
    """Folders are sets of images, each used (photo folders are often numbered: IMG_0001.JPG ...).

    A numbered frame dump is subsampled like a video when given as a pattern (frames/shot.%06d.png).
    """
    return Path(path).is_dir()


def _folder_images(path: Path) -> List[Path]:
    return sorted(p for p in path.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def source_length(path: Path) -> int:
    """Frames in a video or sequence, images in a folder."""
    if _is_image_folder(path):
        return len(_folder_images(path))
    return media.probe(path).frame_count


def iter_source(path: Path, start: int, every: int) -> Iterator[Tuple[int, Path, np.ndarray]]:
    """(index, file, RGB image) from `start`: every `every`-th frame of a video or an image
    sequence pattern, every image of a folder (unreadable images are skipped with a warning)."""
    path = Path(path)
    if _is_image_folder(path):
        for index, file in enumerate(_folder_images(path)):
            if index < start:
                continue
            try:
                image = media.read_image(file)
            except (UserError, ValueError) as exc:
                print(f"toon-ofx: skipping unreadable image {file} ({getattr(exc, 'message', exc)})",
                      file=sys.stderr)
                continue
            yield index, file, _rgb8(image)
        return
    info = media.probe(path)
    if start >= info.frame_count:
        return
    for index, frame in media.read_frames(info, start, info.frame_count - 1, bits=8):
        if index % every == 0:
            yield index, path, frame


def _rgb8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _source_key(path: Path) -> str:
    return str(Path(path).resolve())


def _source_tag(path: Path) -> str:
    """File-name-safe stem plus a short id of the full path (two `clip.mp4` in different folders differ)."""
    p = Path(path)
    stem = "".join(c if c.isalnum() or c in "-." else "_" for c in (p.stem if p.is_file() else p.name))[:40]
    return f"{stem or 'source'}-{hashlib.sha1(_source_key(p).encode()).hexdigest()[:6]}"


# ----------------------------------------------------------------- builder


class DatasetBuilder:
    """Writes `images/*.png` and `manifest.jsonl` into `out_dir`; `state.json` makes it resumable."""

    COUNTS = ("frames", "faces", "kept", "tiny", "outside", "blurred", "duplicate")

    def __init__(self, out_dir: Path, options: DatasetOptions, landmarker=None):
        self.out_dir = Path(out_dir)
        self.options = options
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"{out_dir} is a file; the dataset needs a folder", field="output")
        self.state_path = self.out_dir / "state.json"
        self.manifest_path = self.out_dir / "manifest.jsonl"
        self.state: Dict = self._read_state()
        if self.state.get("size", options.size) != options.size:
            raise UserError(f"{out_dir} holds {self.state['size']} px crops; use --size {self.state['size']} "
                            "or another folder", field="size")
        self.hashes = HashIndex()
        self.names = set()
        self._read_manifest()
        self.landmarker = landmarker if landmarker is not None else _make_landmarker(options.landmarker,
                                                                                      options.device)
        self.counts = {k: 0 for k in self.COUNTS}

    # -- persisted state ---------------------------------------------------

    def _read_state(self) -> Dict:
        if not self.state_path.exists():
            return {}
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            print(f"toon-ofx: {self.state_path} is unreadable; rescanning every source "
                  "(crops already kept are not added again)", file=sys.stderr)
            return {}
        return state if isinstance(state, dict) else {}

    def _read_manifest(self) -> None:
        """Kept crops from the manifest; a torn last line (crash while writing) is dropped."""
        if not self.manifest_path.exists():
            return
        good, dropped = [], 0
        for line in self.manifest_path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name = Path(row["file"]).name
                h = np.frombuffer(bytes.fromhex(row["dhash"]), np.uint8)
            except (ValueError, KeyError, TypeError):
                dropped += 1
                continue
            good.append(line)
            self.names.add(name)
            if len(h) == HASH_BITS * HASH_BITS // 8:
                self.hashes.add(h)
        if dropped:
            tmp = self.manifest_path.with_name(".manifest.jsonl.tmp")
            tmp.write_text("".join(g + "\n" for g in good))
            os.replace(tmp, self.manifest_path)

    def _save_state(self, key: str, entry: Dict) -> None:
        self.state["size"] = self.options.size
        self.state.setdefault("sources", {})[key] = entry
        tmp = self.state_path.with_name(".state.json.tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.state_path)

    # -- work ----------------------------------------------------------------

    def build(self, sources: List[Path], progress: bool = True) -> Dict[str, int]:
        """Process every source; returns counts of frames, faces, kept and skipped crops."""
        from tqdm import tqdm

        (self.out_dir / "images").mkdir(parents=True, exist_ok=True)
        for source in sources:
            source = Path(source)
            key = _source_key(source)
            done = self.state.get("sources", {}).get(key, {})
            total = source_length(source)
            if done.get("complete") and done.get("total") == total and done.get("every") == self.options.every:
                continue
            start = done.get("next", 0) if done.get("every") == self.options.every else 0
            if done.get("total") not in (None, total):
                start = 0  # a folder that gained or lost images: rescan (kept crops are not added twice)
            bar = tqdm(total=total, initial=min(start, total), unit="frame", desc=source.name[:30],
                       disable=not progress, file=sys.stderr, dynamic_ncols=True)
            tag = _source_tag(source)
            for index, origin, frame in iter_source(source, start, self.options.every):
                self.counts["frames"] += 1
                self._faces(tag, origin, index, frame)
                bar.update(index + 1 - bar.n)
                bar.set_postfix(kept=self.counts["kept"])
                self._save_state(key, {"next": index + 1, "total": total, "every": self.options.every})
            bar.update(total - bar.n)
            bar.close()
            self._save_state(key, {"next": total, "total": total, "every": self.options.every, "complete": True})
        return dict(self.counts)

    def _faces(self, tag: str, origin: Path, index: int, frame: np.ndarray) -> None:
        from engine.faces.align import align_face, ffhq_quad

        opts = self.options
        h, w = frame.shape[:2]
        for number, face in enumerate(self.landmarker.detect(frame)):
            self.counts["faces"] += 1
            name = f"{tag}_{index:06d}_{number}.png"
            if name in self.names:  # kept by an earlier, interrupted run
                continue
            quad = ffhq_quad(face.landmarks)
            if quad_side(quad) < opts.min_face_px:
                self.counts["tiny"] += 1
                continue
            if outside_fraction(quad, w, h) > opts.max_outside:
                self.counts["outside"] += 1
                continue
            probe, _ = align_face(frame, quad, ANALYSIS_SIZE)
            sharp = sharpness(probe)
            if sharp < opts.min_sharpness:
                self.counts["blurred"] += 1
                continue
            hsh = dhash(probe)
            if self.hashes.nearest(hsh) <= opts.max_hash_distance:
                self.counts["duplicate"] += 1
                continue
            crop = probe if opts.size == ANALYSIS_SIZE else align_face(frame, quad, opts.size)[0]
            media.write_frame(self.out_dir / "images" / name, crop, fsync=False)
            record = {"file": f"images/{name}", "source": str(origin), "frame": int(index), "face": number,
                      "size": opts.size, "box": [round(float(v), 2) for v in face.box],
                      "quad": np.round(quad, 2).tolist(), "score": round(float(face.score), 4),
                      "sharpness": round(sharp, 1), "dhash": hsh.tobytes().hex()}
            with open(self.manifest_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.hashes.add(hsh)
            self.names.add(name)
            self.counts["kept"] += 1


def _make_landmarker(name: str, device: str = "cpu"):
    """The landmarker rendering would use (face-alignment's weights come from the model store)."""
    from engine.faces.landmarks import ModelFilesMissing, make_landmarker

    try:
        if name == "face-alignment":
            from ..core import model_store

            return make_landmarker("face-alignment", device=device, fan_path=model_store.resolve("fan-2d"),
                                   s3fd_path=model_store.resolve("s3fd"))
        return make_landmarker(name)
    except ModelFilesMissing as exc:
        raise UserError(str(exc), field="landmarker") from None
    except ImportError as exc:
        raise UserError(f"the {name} landmarker is not installed ({exc})", field="landmarker") from None


# ----------------------------------------------------------------- reading a dataset


def load_dataset_images(folder: Path) -> List[Path]:
    """The crops of a built dataset (manifest order, rows whose file was deleted skipped),
    or every image in a plain folder (recursively)."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"dataset folder {folder} does not exist", field="data")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; --data needs the folder `toon-ofx dataset build` wrote",
                        field="data")
    manifest = folder / "manifest.jsonl"
    if manifest.exists():
        files = []
        for line in manifest.read_text().splitlines():
            try:
                files.append(folder / json.loads(line)["file"])
            except (ValueError, KeyError, TypeError):
                continue
        files = [f for f in files if f.is_file()]
    else:
        files = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    if not files:
        raise UserError(f"no training images in {folder} (build one with `toon-ofx dataset build`)", field="data")
    return files


# ----------------------------------------------------------------- CLI


def add_dataset_parser(sub) -> None:
    p = sub.add_parser("dataset", help="build a training set of aligned faces")
    dsub = p.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    b = dsub.add_parser("build", help="detect and align faces in films or image folders",
                        description="Detect faces in videos, image sequences or folders of images, align them "
                                    "as rendering does (FFHQ) and write size x size crops plus manifest.jsonl. "
                                    "Tiny, cut-off, blurred and near-duplicate faces are skipped. Re-run the "
                                    "same command to resume.")
    b.add_argument("sources", nargs="+", type=Path,
                   help="videos, image-sequence patterns (frames/shot.%%06d.png) or folders of images "
                        "(every image of a folder is used)")
    b.add_argument("-o", "--output", type=Path, required=True, help="dataset folder (created; resumable)")
    b.add_argument("--size", type=int, default=512, choices=(32, 64, 128, 256, 512, 1024),
                   help="crop size in pixels: the size of the model you will train (default 512)")
    b.add_argument("--every", type=int, default=12,
                   help="videos and sequence patterns: use one frame in this many (default 12)")
    b.add_argument("--min-face", type=float, default=None,
                   help="skip faces whose crop square is smaller than this many source pixels "
                        "(default: a quarter of --size, i.e. at most 4x upscaling)")
    b.add_argument("--min-sharpness", type=float, default=50.0,
                   help="skip crops blurrier than this (variance of the Laplacian of a 128 px crop; default 50)")
    b.add_argument("--max-hash-distance", type=int, default=16,
                   help="crops within this many bits (of 256) of a kept crop are near-duplicates (default 16)")
    b.add_argument("--max-outside", type=float, default=0.3,
                   help="skip faces whose crop lies more than this fraction outside the frame (default 0.3)")
    b.add_argument("--landmarker", choices=("dlib", "face-alignment"), default="dlib",
                   help="face detector and landmarks (dlib: offline; its 68-point model is licensed for "
                        "non-commercial use only)")
    b.add_argument("--device", default="cpu", help="torch device for face-alignment (default cpu)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def run_dataset(args: argparse.Namespace) -> int:
    if args.every < 1:
        raise UserError("--every must be at least 1", field="every")
    if args.min_face is not None and args.min_face < 0:
        raise UserError("--min-face must be >= 0", field="min_face")
    if not 0 <= args.max_outside <= 1:
        raise UserError("--max-outside must be between 0 and 1", field="max_outside")
    if not 0 <= args.max_hash_distance <= 256:
        raise UserError("--max-hash-distance must be between 0 and 256", field="max_hash_distance")
    for source in args.sources:
        if source.is_file() and args.output.resolve() == source.resolve():
            raise UserError(f"the dataset folder {args.output} is the source {source}", field="output")
        folder = source if source.is_dir() else source.parent if not source.exists() else None
        if folder is not None and folder.is_dir() and _inside(args.output, folder) and (
                source.is_dir() or "%" in source.name or "#" in source.name):
            raise UserError(f"the dataset folder {args.output} is inside the source folder {folder}; "
                            "choose another -o (sources are never written to)", field="output")
        # missing, unreadable, not a video: one clear message before any work
        if source_length(source) == 0 and source.is_dir():
            raise UserError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})", field="sources")
    options = DatasetOptions(size=args.size, every=args.every, min_face=args.min_face,
                             min_sharpness=args.min_sharpness, max_hash_distance=args.max_hash_distance,
                             max_outside=args.max_outside, landmarker=args.landmarker, device=args.device)
    counts = DatasetBuilder(args.output, options).build(args.sources, progress=not args.quiet)
    try:
        total = len(load_dataset_images(args.output))
    except UserError:
        total = 0
    print(f"toon-ofx: {counts['kept']} new faces kept from {counts['frames']} frames, {total} in {args.output} "
          f"(skipped {counts['tiny']} tiny, {counts['outside']} cut off, {counts['blurred']} blurred, "
          f"{counts['duplicate']} near-duplicates)", file=sys.stderr)
    if total == 0:
        print("toon-ofx: warning: no faces found; check the sources, or lower --min-face / --min-sharpness",
              file=sys.stderr)
    return 0
