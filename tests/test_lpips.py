"""LPIPS (VGG16 trunk + linear heads) without torchvision."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from engine.inversion.lpips import (
    LPIPS,
    PULL_HINT,
    LPIPSWeightsError,
    PerceptualLoss,
    TinyPerceptual,
    VGG16Features,
    load_lpips,
)


def _images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _random_lpips(seed=0, resize=None) -> LPIPS:
    torch.manual_seed(seed)
    model = LPIPS(resize=resize)
    with torch.no_grad():
        for lin in model.lins:
            lin.model[1].weight.uniform_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Random weights saved in torchvision's vgg16 and lpips' vgg.pth key layouts."""
    d = tmp_path_factory.mktemp("lpips")
    model = _random_lpips(seed=1)
    vgg_sd = model.vgg_state_dict()
    assert "features.0.weight" in vgg_sd and "features.28.bias" in vgg_sd
    assert "features.30.weight" not in vgg_sd  # trunk stops after relu5_3
    vgg_sd["classifier.6.bias"] = torch.zeros(10)  # a full torchvision file also has the classifier
    lin_sd = model.lin_state_dict()
    assert sorted(lin_sd) == [f"lin{i}.model.1.weight" for i in range(5)]
    torch.save(vgg_sd, d / "vgg16-397923af.pth")
    torch.save(lin_sd, d / "vgg.pth")
    return model, d / "vgg16-397923af.pth", d / "vgg.pth"


def test_vgg_layout_matches_torchvision_keys():
    keys = VGG16Features().state_dict()
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert sorted(keys) == sorted([f"features.{i}.{p}" for i in convs for p in ("weight", "bias")])
    assert keys["features.0.weight"].shape == (64, 3, 3, 3)
    assert keys["features.28.weight"].shape == (512, 512, 3, 3)


def test_load_gives_identical_distance(weight_files):
    model, vgg_path, lin_path = weight_files
    loaded = load_lpips(vgg_path, lin_path, device="cpu", resize=None)
    x, y = _images(2, 32, 0), _images(2, 32, 1)
    with torch.no_grad():
        a, b = model(x, y), loaded(x, y)
    assert a.shape == (2,)
    assert torch.equal(a, b)


def test_metric_properties(weight_files):
    _, vgg_path, lin_path = weight_files
    m = load_lpips(vgg_path, lin_path)
    x, y = _images(3, 32, 2), _images(3, 32, 3)
    with torch.no_grad():
        dxx = m(x, x)
        dxy, dyx = m(x, y), m(y, x)
    assert torch.all(dxx == 0)
    assert torch.allclose(dxy, dyx, rtol=1e-6, atol=1e-7)
    assert torch.all(dxy > 0)
    # per-sample: a batch gives the same values as one image at a time
    with torch.no_grad():
        single = torch.cat([m(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    assert torch.allclose(single, dxy, rtol=1e-5, atol=1e-7)


def test_gradients_flow_to_inputs_and_are_finite(weight_files):
    _, vgg_path, lin_path = weight_files
    m = load_lpips(vgg_path, lin_path)
    x = _images(1, 32, 4).requires_grad_(True)
    y = _images(1, 32, 5)
    m(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in m.parameters())
    # zero images give all-zero ReLU features somewhere; gradients stay finite
    z = torch.zeros(1, 3, 16, 16, requires_grad=True)
    m(z, torch.full((1, 3, 16, 16), 0.5)).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_resize_large_inputs_like_rosinality():
    m = _random_lpips(seed=2, resize=16)
    full = LPIPS(resize=None)
    full.load_state_dict(m.state_dict())
    x, y = _images(1, 64, 6), _images(1, 64, 7)

    def block_mean(t, f=4):
        n, c, h, w = t.shape
        return t.reshape(n, c, h // f, f, w // f, f).mean([3, 5])

    with torch.no_grad():
        assert torch.allclose(m(x, y), full(block_mean(x), block_mean(y)), rtol=1e-5, atol=1e-7)
        small_x, small_y = _images(1, 16, 8), _images(1, 16, 9)
        assert torch.equal(m(small_x, small_y), full(small_x, small_y))


def test_missing_file_error_names_file_and_pull(tmp_path, weight_files):
    _, vgg_path, lin_path = weight_files
    with pytest.raises(FileNotFoundError) as ei:
        load_lpips(tmp_path / "nope.pth", lin_path)
    assert "nope.pth" in str(ei.value) and "toon-ofx models pull lpips-vgg" in str(ei.value)
    with pytest.raises(LPIPSWeightsError) as ei:
        load_lpips(vgg_path, tmp_path / "vgg_missing.pth")
    assert "vgg_missing.pth" in str(ei.value) and PULL_HINT in str(ei.value)


def test_wrong_keys_or_garbage_are_clear_errors(tmp_path, weight_files):
    _, vgg_path, lin_path = weight_files
    wrong = tmp_path / "wrong.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, wrong)
    with pytest.raises(FileNotFoundError) as ei:
        load_lpips(vgg_path, wrong)
    assert "wrong.pth" in str(ei.value) and "missing keys" in str(ei.value) and PULL_HINT in str(ei.value)
    # the heads file given as the trunk
    with pytest.raises(LPIPSWeightsError, match="not an LPIPS VGG16 weight file"):
        load_lpips(lin_path, lin_path)
    bad_shape = tmp_path / "shape.pth"
    torch.save({f"lin{i}.model.1.weight": torch.zeros(1, 3, 1, 1) for i in range(5)}, bad_shape)
    with pytest.raises(LPIPSWeightsError, match="wrong shapes"):
        load_lpips(vgg_path, bad_shape)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(LPIPSWeightsError, match="could not be read"):
        load_lpips(vgg_path, garbage)


def test_tiny_perceptual_same_interface():
    m = TinyPerceptual(seed=0)
    assert isinstance(m, PerceptualLoss)
    x, y = _images(2, 32, 10), _images(2, 32, 11)
    d = m(x, y)
    assert d.shape == (2,)
    assert torch.all(d > 0) and torch.all(m(x, x) == 0)
    assert torch.allclose(d, m(y, x), atol=1e-7)
    assert torch.equal(TinyPerceptual(seed=0)(x, y), d)  # deterministic
    assert not torch.equal(TinyPerceptual(seed=1)(x, y), d)


# ---------------------------------------------------------------- parity with the lpips package

def _lpips_pkg_dir() -> Path | None:
    """The reference ``lpips`` package files (install.sh --dev puts them in .lpips-reference), if present."""
    cand = os.environ.get("TOON_OFX_LPIPS_PKG", Path(__file__).resolve().parents[1] / ".lpips-reference")
    p = Path(cand)
    return p if (p / "lpips" / "lpips.py").is_file() else None


@pytest.mark.skipif(_lpips_pkg_dir() is None, reason="unpacked lpips wheel not present")
def test_parity_with_lpips_package(monkeypatch, tmp_path):
    """Same trunk weights in the reference lpips code (torchvision stubbed) -> same distance."""
    pkg = _lpips_pkg_dir()
    torch.manual_seed(3)
    trunk = VGG16Features()

    tv = types.ModuleType("torchvision")
    tv_models = types.ModuleType("torchvision.models")
    tv_models.vgg16 = lambda *a, **k: types.SimpleNamespace(features=trunk.features)
    tv.models = tv_models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)
    saved = {k: v for k, v in sys.modules.items() if k == "lpips" or k.startswith("lpips.")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    monkeypatch.syspath_prepend(str(pkg))
    try:
        ref_pkg = importlib.import_module("lpips")
        ref = ref_pkg.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    finally:
        for k in [k for k in sys.modules if k == "lpips" or k.startswith("lpips.")]:
            del sys.modules[k]
        sys.modules.update(saved)

    vgg_file = tmp_path / "vgg16.pth"
    torch.save(trunk.state_dict(), vgg_file)
    lin_file = pkg / "lpips" / "weights" / "v0.1" / "vgg.pth"
    ours = load_lpips(vgg_file, lin_file, resize=None)
    x, y = _images(2, 48, 12), _images(2, 48, 13)
    with torch.no_grad():
        expected = ref(x, y).view(-1)
        got = ours(x, y)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got, expected)
