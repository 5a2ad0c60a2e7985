"""Shared fixtures: tiny models in the real checkpoint formats, real faces, short clips.

Tiny generators (32 px, 16 channels) and a random-weight VGG16/LPIPS are written
at test time in the formats users download, and reach the code through the
same model store and loaders users run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# One torch thread per test process: `pytest -n 2` on 2 cores would otherwise oversubscribe them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("TOON_OFX_FIXTURES", REPO.parent / "shared" / "fixtures"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TINY_SIZE = 32


def fixture_path(name: str) -> Path:
    """A file from ../shared/fixtures; the test is skipped when the folder is absent."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"test media {path} not present")
    return path


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is fastest and does not fight the other test process for the cores."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo (one real face), RGB uint8 512x512."""
    from skimage import data

    return data.astronaut()


def _write_tiny_models(folder: Path) -> None:
    import torch

    from engine.generator.checkpoints import save_generator
    from engine.inversion.lpips import LPIPS
    from tiny_models import tiny_generator

    base = tiny_generator(TINY_SIZE, seed=0)
    toon = tiny_generator(TINY_SIZE, seed=0)
    with torch.no_grad():  # a "fine-tuned" copy: the base with perturbed weights
        gen = torch.Generator().manual_seed(1)
        for name, p in toon.named_parameters():
            if not name.startswith("style."):
                p.add_(torch.randn(p.shape, generator=gen) * 0.5 * p.abs().mean().clamp_min(1e-3))
    save_generator(folder / "tiny-base.pt", base)
    save_generator(folder / "tiny-toon.pt", toon)
    torch.manual_seed(0)
    lpips = LPIPS()
    torch.save(lpips.vgg_state_dict(), folder / "vgg16-397923af.pth")
    torch.save(lpips.lin_state_dict(), folder / "lpips-vgg-v0.1.pth")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A model folder (TOON_OFX_MODELS) with tiny base/toon generators and random LPIPS weights."""
    folder = tmp_path_factory.mktemp("models")
    _write_tiny_models(folder)
    old = os.environ.get("TOON_OFX_MODELS")
    os.environ["TOON_OFX_MODELS"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("TOON_OFX_MODELS", None)
    else:
        os.environ["TOON_OFX_MODELS"] = old


@pytest.fixture(scope="session")
def tiny_model_paths(tiny_models_dir) -> dict:
    return {"base": tiny_models_dir / "tiny-base.pt", "toon": tiny_models_dir / "tiny-toon.pt"}


@pytest.fixture(scope="session")
def tiny_params(tiny_model_paths) -> dict:
    """Effect parameters that render fast with the tiny models (valid for params.validate)."""
    return {"model": str(tiny_model_paths["toon"]), "base_model": str(tiny_model_paths["base"]),
            "swap_res": 16, "steps": 8, "warm_steps": 3, "keyframe_interval": 4, "device": "cpu",
            "landmarker": "dlib"}


def make_clip(path: Path, frames, fps: str = "24", audio: bool = True) -> Path:
    """Encode RGB frames (an iterable of equal-size uint8 arrays) into an H.264 clip with a sine tone."""
    frames = list(frames)
    h, w = frames[0].shape[:2]
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-framerate", fps, "-i", "-"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-shortest", "-c:a", "aac"]
    cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "12", str(path)]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), check=True)
    return path


def panning_frames(image: np.ndarray, count: int, size=(256, 192), step: int = 3):
    """A moving-camera view: `count` crops sliding diagonally across `image`."""
    w, h = size
    for i in range(count):
        x, y = 60 + i * step, 10 + i * step // 2
        yield np.ascontiguousarray(image[y:y + h, x:x + w])


@pytest.fixture(scope="session")
def astronaut_clip(tmp_path_factory, astronaut) -> Path:
    """10 frames, 24 fps, 256x192, a real face with a moving camera, with audio."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    return make_clip(tmp_path_factory.mktemp("clips") / "astronaut_pan.mp4", panning_frames(astronaut, 10))
