"""engine.vtoonify's readers: round trips through the real file formats and one clear error per bad input."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.generator.safe_pickle import CheckpointError
from engine.vtoonify import (find_exstyles, inspect_vtoonify, load_face_parser, load_style_encoder, load_vtoonify,
                            read_exstyles)
from tiny_models import tiny_generator
from tiny_vtoonify import (IN_SIZE, N_LATENT, OUT_SIZE, STYLE_DIM, save_face_parser, save_style_encoder,
                           save_vtoonify, tiny_face_parser, tiny_style_encoder, tiny_vtoonify, write_exstyles)

BACKBONES = ["toonify", "dualstylegan"]


def _inputs(n=2, h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 22, h, w, generator=g) * 2 - 1, torch.randn(n, N_LATENT, STYLE_DIM, generator=g)


class Evil:
    """Unpickling this would run a command (if a reader ever resolved it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("backbone", BACKBONES)
def test_vtoonify_round_trip(tmp_path, backbone):
    net = tiny_vtoonify(backbone, seed=3)
    path = save_vtoonify(tmp_path / "vtoonify.pt", net)
    info = inspect_vtoonify(path)
    assert (info.backbone, info.in_size, info.out_size, info.n_latent, info.path) == \
        (backbone, IN_SIZE, OUT_SIZE, N_LATENT, path)
    loaded = load_vtoonify(path, backbone=backbone)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert not any(b.is_meta for b in loaded.buffers())
    x, s = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, s, d_s=0.7), net(x, s, d_s=0.7))
    assert loaded.stylegan() is (loaded.generator.generator if backbone == "dualstylegan" else loaded.generator)


def test_face_parser_round_trip(tmp_path):
    parser = tiny_face_parser(seed=2)
    loaded = load_face_parser(save_face_parser(tmp_path / "faceparsing.pth", parser))
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        ours, theirs = loaded(x), parser(x)
    assert isinstance(ours, tuple) and len(ours) == 3
    for a, b in zip(ours, theirs):
        assert a.shape == (2, 19, 64, 48) and torch.equal(a, b)


def test_face_parser_without_batchnorm_counters(tmp_path):
    """Files saved before PyTorch 0.4.1 lack num_batches_tracked; that changes nothing at inference."""
    parser = tiny_face_parser()
    state = {k: v for k, v in parser.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_face_parser(tmp_path / "old.pth")(x)[0], parser(x)[0])


@pytest.mark.parametrize("rows", [N_LATENT, 1])
def test_style_encoder_adds_latent_avg_like_the_hook(tmp_path, rows):
    enc = tiny_style_encoder(seed=1)
    latent_avg = torch.randn(rows, STYLE_DIM)
    # the reference adds latent_avg whatever start_from_latent_avg says
    path = save_style_encoder(tmp_path / "encoder.pt", enc, latent_avg, opts={"start_from_latent_avg": False})
    loaded = load_style_encoder(path)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        codes = loaded(x)
        assert codes.shape == (2, N_LATENT, STYLE_DIM)
        assert torch.equal(codes, enc(x) + latent_avg.repeat(2, 1, 1))
    with pytest.raises(ValueError, match=r"\(N, 3, 256, 256\)"):
        loaded(torch.zeros(1, 3, 128, 128))


# ------------------------------------------------------------------ strict keys


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.update({"fusion_out.9.weight": torch.zeros(1)}), r"1 unexpected key\(s\) \(fusion_out\.9\.weight\)"),
    (lambda sd: sd.pop("fusion_skip.0.bias"), r"missing 1 key\(s\) \(fusion_skip\.0\.bias\)"),
    (lambda sd: sd.update({"fusion_skip.0.weight": torch.zeros(3, 5, 3, 3)}),
     r"wrong shapes: fusion_skip\.0\.weight \(3, 5, 3, 3\) vs \(3, 11, 3, 3\)"),
])
def test_strict_keys_are_reported_readably(tmp_path, edit, message):
    state = tiny_vtoonify("toonify").state_dict()
    edit(state)
    torch.save({"g_ema": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"^bad\.pt: VToonify weights do not match .*{message}"):
        load_vtoonify(tmp_path / "bad.pt")


@pytest.mark.parametrize("block", [4, 99])
def test_extra_encoder_blocks_are_named_not_read_as_a_larger_input(tmp_path, block):
    """The encoder's size is read off its blocks: keys of a block past its last one (the 1x1 convolution,
    encoder.3 here) are named, never taken for an encoder of 2^97 times the input size."""
    from toon_ofx.core.errors import UserError
    from toon_ofx.core.vtoonify import vtoonify_style

    state = tiny_vtoonify("toonify").state_dict()
    state.update({f"encoder.{block}.weight": torch.zeros(3, 8, 1, 1), f"encoder.{block}.bias": torch.zeros(3)})
    path = _write(tmp_path / "extra.pt", {"g_ema": state})
    message = (rf"^extra\.pt: 2 unexpected key\(s\) \(encoder\.{block}\.bias, encoder\.{block}\.weight\): "
               r"VToonify's encoder ends at block 3")
    for read in (inspect_vtoonify, load_vtoonify):
        with pytest.raises(CheckpointError, match=message):
            read(path)
    with pytest.raises(UserError, match=message) as info:   # the product: one line naming the file, field model
        vtoonify_style(str(path))
    assert info.value.field == "model" and "px" not in str(info.value)


def test_a_changed_blur_kernel_is_refused(tmp_path):
    state = tiny_vtoonify("toonify").state_dict()
    state["generator.to_rgbs.3.upsample.kernel"] = torch.ones(4, 4)
    torch.save({"g_ema": state}, tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match=r"k\.pt: generator\.to_rgbs\.3\.upsample\.kernel is not"):
        load_vtoonify(tmp_path / "k.pt")


# ------------------------------------------------------------------ bad input


def _write(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_bad_vtoonify_files(tmp_path):
    t_path = save_vtoonify(tmp_path / "vtoonify_t.pt", tiny_vtoonify("toonify"))
    d_path = save_vtoonify(tmp_path / "vtoonify_d.pt", tiny_vtoonify("dualstylegan"))
    enc = save_style_encoder(tmp_path / "encoder.pt", tiny_style_encoder(), torch.zeros(N_LATENT, STYLE_DIM))
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    cases = [
        (lambda: load_vtoonify(t_path, backbone="dualstylegan"),
         r"vtoonify_t\.pt is a VToonify-T model \(backbone toonify\), not a VToonify-D model"),
        (lambda: load_vtoonify(d_path, backbone="toonify"), r"vtoonify_d\.pt is a VToonify-D model"),
        (lambda: load_vtoonify(tmp_path / "missing.pt"), r"checkpoint not found: .*missing\.pt"),
        (lambda: load_vtoonify(text), r"notes\.pt is not a torch checkpoint \(\.pt/\.pth\); expected a VToonify"),
        (lambda: load_vtoonify(enc), r"encoder\.pt is not a VToonify model .*\(it is a pSp encoder checkpoint\)"),
        (lambda: load_vtoonify(_write(tmp_path / "g.pt", {"g_ema": tiny_generator(32).state_dict()})),
         r"g\.pt is a StyleGAN2 generator, not a VToonify model"),
        (lambda: load_vtoonify(_write(tmp_path / "pretrain.pt",
                                      {"g_ema": tiny_vtoonify("toonify").encoder.state_dict()})),
         r"pretrain\.pt holds only VToonify's encoder \(a pre-training checkpoint"),
        (lambda: load_vtoonify(_write(tmp_path / "list.pt", {"g_ema": [1, 2]})),
         r"list\.pt: 'g_ema' is not a state dict of tensors"),
        (lambda: load_face_parser(t_path), r"vtoonify_t\.pt is not the BiSeNet face parser .* g_ema"),
        (lambda: load_face_parser(_write(tmp_path / "p.pth", {"conv.weight": torch.zeros(1)})),
         r"p\.pth is not the BiSeNet face parser .*\(no cp\.resnet\.conv1\.weight\)"),
        (lambda: load_style_encoder(t_path), r"vtoonify_t\.pt is not VToonify's style encoder"),
        (lambda: load_style_encoder(save_style_encoder(tmp_path / "noavg.pt", tiny_style_encoder(), None)),
         r"noavg\.pt has no latent_avg tensor"),
    ]
    for call, message in cases:
        with pytest.raises(CheckpointError, match=message):
            call()


def test_truncated_and_code_carrying_files_are_refused(tmp_path):
    path = save_vtoonify(tmp_path / "v.pt", tiny_vtoonify("toonify"))
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt is truncated or corrupt"):
        load_vtoonify(tmp_path / "cut.pt")
    marker = tmp_path / "pwned"
    torch.save({"g_ema": tiny_vtoonify("toonify").state_dict(), "extra": Evil(marker)}, tmp_path / "evil.pt")
    for load in (load_vtoonify, load_face_parser, load_style_encoder):
        with pytest.raises(CheckpointError, match=r"evil\.pt contains Python objects other than tensors"):
            load(tmp_path / "evil.pt")
    assert not marker.exists()


# ------------------------------------------------------------------ exstyle_code.npy


def test_exstyles_read_like_np_load(tmp_path):
    written = write_exstyles(tmp_path / "exstyle_code.npy", n=5, seed=4)
    reference = np.load(tmp_path / "exstyle_code.npy", allow_pickle=True).item()
    ours = read_exstyles(tmp_path / "exstyle_code.npy")
    assert list(ours) == list(reference) == list(written)  # the style id is a position in this order
    for k in ours:
        assert ours[k].dtype == np.float32 and ours[k].shape == (1, N_LATENT, STYLE_DIM)
        assert np.array_equal(ours[k], reference[k])


def test_exstyles_written_with_old_pickle_protocols(tmp_path):
    codes = {"a.jpg": np.ones((1, 4, 3), np.float32), "b.jpg": np.zeros((1, 4, 3), np.float64)}
    for protocol in (2, 3, 4, 5):
        with open(tmp_path / f"p{protocol}.npy", "wb") as f:  # what np.save of older NumPy wrote
            np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
            pickle.dump(np.asanyarray(codes), f, protocol=protocol)
        out = read_exstyles(tmp_path / f"p{protocol}.npy")
        assert list(out) == ["a.jpg", "b.jpg"] and out["b.jpg"].dtype == np.float32


@pytest.mark.parametrize("content, message", [
    ({"a.jpg": {1, 2}}, r"the code of style 'a\.jpg' is a set, not a numeric array"),
    ({"a.jpg": os.system}, r"references (posix|nt)\.system, which is not a NumPy array type"),
    ({"a.jpg": "text"}, r"the code of style 'a\.jpg' is a str, not a numeric array"),
    ({"a.jpg": np.zeros((18, 512), np.float32)}, r"has shape \(18, 512\), expected \(1, n_latent, 512\)"),
    ({"a.jpg": np.array([object()], dtype=object)}, r"references copyreg\.__newobj__|references builtins\.object"),
    ({3: np.zeros((1, 2, 2), np.float32)}, r"style name 3 is not a string"),
    ([np.zeros((1, 2, 2), np.float32)], r"holds a list, not a dict of style codes"),
])
def test_exstyles_refuse_what_is_not_a_dict_of_arrays(tmp_path, content, message):
    path = tmp_path / "exstyle_code.npy"
    arr = np.empty((), dtype=object)
    arr[()] = content
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(CheckpointError, match=rf"exstyle_code\.npy.*{message}"):
        read_exstyles(path)


def test_exstyles_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "exstyle_code.npy"
    arr = np.empty((), dtype=object)
    arr[()] = {"a.jpg": Evil(marker)}
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(CheckpointError, match=r"references pathlib"):
        read_exstyles(path)
    assert not marker.exists()
    with open(path, "rb") as f:  # the threat is real: a plain unpickler would run it
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        pickle.load(f)
    assert marker.exists()


def test_exstyles_other_bad_files(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((1, 18, 512), np.float32))
    (tmp_path / "text.npy").write_text("hello")
    cases = [(tmp_path / "plain.npy", r"plain\.npy holds a plain float32 array of shape \(1, 18, 512\)"),
             (tmp_path / "text.npy", r"text\.npy is not a NumPy \.npy file"),
             (tmp_path / "none.npy", r"style codes not found: .*none\.npy")]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message):
            read_exstyles(path)


def test_find_exstyles(tmp_path):
    model = tmp_path / "vtoonify_d_cartoon.pt"
    with pytest.raises(CheckpointError, match=r"put vtoonify_d_cartoon_exstyle_code\.npy \(or exstyle_code\.npy\)"):
        find_exstyles(model)
    write_exstyles(tmp_path / "exstyle_code.npy")  # the reference's folder layout
    assert find_exstyles(model) == tmp_path / "exstyle_code.npy"
    write_exstyles(tmp_path / "vtoonify_d_cartoon_exstyle_code.npy")  # the model store's names win
    assert find_exstyles(model) == tmp_path / "vtoonify_d_cartoon_exstyle_code.npy"
