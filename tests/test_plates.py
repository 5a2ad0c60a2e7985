"""VFX plates and colour: DPX and OpenEXR through OpenImageIO, OpenColorIO, alpha, EXIF orientation.

Plates are written at test time with OIIO: a smooth gradient (finer than 8 bits) with the astronaut's
face, so the face region is real; the columns left of the face never see it. Renders use the tiny
models. Outside the faces a plate must come back exactly as it came: 10-bit DPX codes, half/float EXR
values (above 1.0 and negative ones included), alpha, frame numbers and headers.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import media_sources as ms
from toon_ofx.core import media
from toon_ofx.core.colour import plan_colour
from toon_ofx.core.errors import UserError
from toon_ofx.core.render import RenderRequest, render

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

FAST = {"steps": 3, "warm_steps": 1}
W, H = 320, 240
CLEAR = 60   # columns [0, CLEAR) never see the face (it is pasted at x >= 100)


def oiio_read(path):
    import OpenImageIO as oiio

    inp = oiio.ImageInput.open(str(path))
    spec = inp.spec()
    pixels = inp.read_image(0, 0, 0, spec.nchannels, spec.format)
    inp.close()
    return pixels, spec


@pytest.fixture(scope="module")
def face_pictures(astronaut):
    """3 16-bit RGB pictures: the gradient with a 200 px face at x = 100 moving 3 px a frame."""
    return ms.frames(W, H, 3, face=astronaut, face_size=200, face_x=100, face_y=20, step=3)


def ten_bit(picture, k):
    """A 16-bit picture rounded to 10-bit codes with a fine ramp added (so 8 bits would not hold it)."""
    codes = (picture.astype(np.int64) * 1023 + 32767) // 65535
    codes = np.clip(codes + (np.arange(W)[None, :, None] + k) % 3, 0, 1023)
    return (codes * 65535 // 1023).astype(np.uint16)


@pytest.fixture(scope="module")
def dpx_plate(tmp_path_factory, face_pictures):
    folder = tmp_path_factory.mktemp("dpx")
    for k, picture in enumerate(face_pictures):
        ms.write_image(folder / f"plate.{1001 + k}.dpx", ten_bit(picture, k), "uint16", bits=10,
                       timecode=f"01:00:00:{k:02d}", Copyright="shot 42", dpx__InputDevice="scanner 3")
    return folder


def test_dpx_10bit_sequence_is_probed_with_its_numbers_depth_and_headers(dpx_plate):
    info = media.probe(dpx_plate / "plate.####.dpx")
    assert (info.frame_count, info.first_number, info.width, info.height) == (3, 1001, W, H)
    assert info.bit_depth == 10 and info.image.format == "dpx" and info.image.channels == ("R", "G", "B")
    assert info.timecode == "01:00:00:00" and media.source_bits(info) == 16
    frames = dict(media.read_frames(info, bits=16))
    pixels, _ = oiio_read(dpx_plate / "plate.1002.dpx")
    assert np.array_equal(frames[1], pixels)
    codes = frames[1] >> 6
    assert np.unique(codes[0, :, 0]).size > 200 and (codes % 4 != 0).any()   # 10-bit codes, not 8-bit ones
    assert media.probe(dpx_plate).frame_count == 3          # a folder of DPX files is a sequence too


def test_dpx_plate_renders_back_to_10bit_dpx_exact_outside_the_face(dpx_plate, tmp_path, tiny_params):
    out = tmp_path / "out"
    result = render(RenderRequest(dpx_plate / "plate.%04d.dpx", out, dict(tiny_params, **FAST)))
    assert result.pattern == str(out / "plate_toon.%04d.dpx") and result.warnings == []
    assert sorted(os.listdir(out)) == ["plate_toon.1001.dpx", "plate_toon.1002.dpx", "plate_toon.1003.dpx"]
    for k in range(3):
        src, src_spec = oiio_read(dpx_plate / f"plate.{1001 + k}.dpx")
        got, spec = oiio_read(out / f"plate_toon.{1001 + k}.dpx")
        assert spec.get_int_attribute("oiio:BitsPerSample") == 10 and str(spec.format) == "uint16"
        for name in ("smpte:TimeCode", "Copyright", "dpx:InputDevice", "dpx:Packing", "dpx:Transfer"):
            assert spec.get_string_attribute(name) == src_spec.get_string_attribute(name), name
        assert spec.get_string_attribute("smpte:TimeCode") == f"01:00:00:{k:02d}"
        changed = (got != src).any(axis=2)
        assert 0.005 < changed.mean() < 0.6, "the face was not stylised, or more than the face changed"
        assert not changed[:, :CLEAR].any()    # the 10-bit codes, exactly
        assert np.array_equal(got[~changed], src[~changed])


def acescg_plate(picture, k):
    """ACEScg linear RGBA float32 of a 16-bit sRGB picture, with a highlight strip (8.0), negative values and
    a varying alpha, all in the columns the face never reaches."""
    rgb = ms.to_acescg(picture)
    rgb[10:30, 5:25] = 8.0 + k                        # a specular highlight far above display white
    rgb[40:50, 5:25] = (-0.02, 0.5, -0.001)           # out-of-gamut negatives
    alpha = np.broadcast_to(np.linspace(0.25, 1.0, W, dtype=np.float32)[None, :, None], (H, W, 1))
    return np.concatenate([rgb, alpha], axis=2)


@pytest.fixture(scope="module", params=["half", "float"])
def exr_plate(request, tmp_path_factory, face_pictures):
    """ACEScg EXR sequence: half RGBA (PIZ, colour space attribute) or float RGBA (ZIP, no attribute)."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"exr_{kind}")
    for k, picture in enumerate(face_pictures):
        attrs = {"compression": "piz", "oiio__ColorSpace": "ACEScg"} if kind == "half" else {"compression": "zip"}
        pixels = acescg_plate(picture, k).astype(np.float16 if kind == "half" else np.float32)
        ms.write_image(folder / f"bg.{k + 7:03d}.exr", pixels, kind, timecode=f"10:00:00:{k:02d}", fps=(24, 1),
                       **attrs)
    return kind, folder


def test_acescg_exr_plate_round_trips_outside_the_face(exr_plate, tmp_path, tiny_params):
    kind, folder = exr_plate
    params = dict(tiny_params, **FAST)
    if kind == "float":   # no colour attribute in the file: the studio config's rule would say ACES2065-1
        params["input_colorspace"] = "ACEScg"
    info = media.probe(folder / "bg.%03d.exr")
    assert info.image.pixel_type == kind and info.alpha and info.fps == 24 and info.timecode == "10:00:00:00"
    colour = plan_colour(info, params.get("input_colorspace", "auto"))
    assert colour.name == "ACEScg" and colour.how == ("file" if kind == "half" else "given")
    out = tmp_path / "out"
    result = render(RenderRequest(folder / "bg.%03d.exr", out, params))
    assert result.warnings == []
    assert sorted(os.listdir(out)) == ["bg_toon.007.exr", "bg_toon.008.exr", "bg_toon.009.exr"]
    for k in range(3):
        src, src_spec = oiio_read(folder / f"bg.{k + 7:03d}.exr")
        got, spec = oiio_read(out / f"bg_toon.{k + 7:03d}.exr")
        assert str(spec.format) == kind and spec.channelnames == ("R", "G", "B", "A")
        assert spec.get_string_attribute("compression") == ("piz" if kind == "half" else "zip")
        assert spec.get_string_attribute("smpte:TimeCode") == f"10:00:00:{k:02d}"
        assert got.dtype == src.dtype
        assert np.array_equal(got[..., 3], src[..., 3])            # alpha carried unchanged
        changed = (got != src).any(axis=2)
        assert 0.005 < changed.mean() < 0.6
        assert not changed[:, :CLEAR].any()
        outside = ~changed
        assert np.array_equal(got[outside], src[outside])          # bit for bit (goal: 1e-4 relative)
        assert got[10:30, 5:25, :3].min() == np.float32(8.0 + k)   # highlights above 1.0 survive
        assert np.array_equal(got[40:50, 5:25, :3], src[40:50, 5:25, :3])
        assert np.isfinite(got).all()
        # inside the face the toon is in the plate's colourimetry: linear values in display white's range
        toon = got[changed][:, :3].astype(np.float32)
        assert toon.max() <= 1.1 and toon.min() >= -0.1


def test_colour_path_round_trips_to_float_rounding(tmp_path):
    plate = ms.write_image(tmp_path / "lin.exr", np.zeros((4, 4, 3), np.float32), "float", oiio__ColorSpace="ACEScg")
    colour = plan_colour(media.probe(plate))
    rng = np.random.default_rng(0)
    linear = rng.uniform(0.002, 1.0, (64, 64, 3)).astype(np.float32)
    there = colour.to_working(linear.copy())
    assert not np.allclose(there, linear, atol=1e-3)
    back = colour.from_working(there)
    assert np.max(np.abs(back - linear) / np.abs(linear)) <= 1e-4
    codes = colour.to_engine(linear, 16)          # the engine's input: OCIO's fast kernels straight to 16 bits
    exact = np.round(np.clip(colour.to_working(linear.copy()), 0, 1) * 65535)
    assert codes.dtype == np.uint16 and np.abs(codes - exact).max() <= 1


def test_colour_space_choice_and_refusal(tmp_path, astronaut):
    clip = ms.encode(tmp_path / "v.mov", ms.frames(64, 48, 2), "24", ["-c:v", "prores_ks", "-pix_fmt",
                                                                       "yuv422p10le"])
    assert plan_colour(media.probe(clip)).identity                         # video: Rec.709, nothing converted
    png = tmp_path / "still.png"
    media.write_frame(png, astronaut)
    assert plan_colour(media.probe(png)).identity                          # sRGB images: nothing converted
    bare = ms.write_image(tmp_path / "bare.exr", np.zeros((4, 4, 3), np.float32), "float")
    ruled = plan_colour(media.probe(bare))
    assert (ruled.name, ruled.how) == ("ACES2065-1", "rule")               # the studio config's EXR rule
    log = plan_colour(media.probe(clip), "acescct")
    assert log.name == "ACEScct" and not log.identity                     # names and aliases, any case
    with pytest.raises(UserError) as err:
        plan_colour(media.probe(bare), "ACEScgg")
    message = err.value.message
    assert err.value.field == "input_colorspace" and "\n" not in message
    assert "'ACEScgg' is not in the OCIO config" in message and "ACEScg" in message.split("close names:")[1]


def test_an_unknown_colour_space_fails_before_models_load(tmp_path, tiny_params, astronaut):
    from toon_ofx.core.render import check_request

    png = media.write_frame(tmp_path / "p.png", astronaut)
    with pytest.raises(UserError, match="close names: .*sRGB"):
        check_request(RenderRequest(png, tmp_path / "o", dict(tiny_params, input_colorspace="sRGB Encoded Rec709")))


def test_acescg_plate_into_a_movie_keeps_its_alpha_and_says_what_it_cannot_keep(exr_plate, tmp_path, tiny_params):
    kind, folder = exr_plate
    if kind == "float":
        pytest.skip("one pixel type is enough for the movie path")
    out = tmp_path / "bg.mov"
    result = render(RenderRequest(folder, out, dict(tiny_params, **FAST), work_dir=tmp_path / "w", keep_frames=True))
    assert result.codec == "ProRes 4444"
    assert any("float values" in w and "display-referred" in w for w in result.warnings)
    got = media.probe(out)
    assert got.alpha and got.frame_count == 3 and got.timecode == "10:00:00:00"
    src, _ = oiio_read(folder / "bg.008.exr")
    (_, rgba), = media.read_native(got, 1, 1, bits=16)
    expected = np.round(np.clip(src[..., 3].astype(np.float64), 0, 1) * 65535)
    # the alpha plane: ffmpeg decodes ProRes 4444 alpha at 12 bits and scales it: within 1.5 10-bit steps
    assert np.abs(rgba[..., 3].astype(np.int64) - expected).max() <= 96
    mp4 = render(RenderRequest(folder, tmp_path / "bg.mp4", dict(tiny_params, **FAST), work_dir=tmp_path / "w"))
    assert any("alpha channel of bg.%03d.exr is left out" in w for w in mp4.warnings)


def test_rgba_png_sequence_keeps_its_alpha(tmp_path, face_pictures, tiny_params):
    folder = tmp_path / "rgba"
    rng = np.random.default_rng(3)
    for k, picture in enumerate(face_pictures[:2]):
        alpha = rng.integers(0, 65536, (H, W, 1), dtype=np.uint16)
        media.write_frame(folder / f"fg.{k:04d}.png", np.concatenate([picture, alpha], axis=2), bits=16, fsync=False)
    out = tmp_path / "out"
    render(RenderRequest(folder, out, dict(tiny_params, **FAST)))
    for k in range(2):
        src, got = media.read_pixels(folder / f"fg.{k:04d}.png")[0], media.read_pixels(out / f"fg_toon.{k:04d}.png")[0]
        assert got.shape == (H, W, 4) and np.array_equal(got[..., 3], src[..., 3])
        changed = (got[..., :3] != src[..., :3]).any(axis=2)
        assert changed.any() and not changed[:, :CLEAR].any()


def test_exif_orientation_is_applied_on_input_and_kept_on_output(tmp_path, astronaut, tiny_params):
    import OpenImageIO as oiio

    stored = np.ascontiguousarray(np.rot90(astronaut, 1))        # what a phone held sideways stores
    photo = ms.write_image(tmp_path / "phone.jpg", stored, "uint8", Orientation=6, CompressionQuality=98)
    info = media.probe(photo)
    assert (info.width, info.height) == (512, 512) and info.image.orientation == 6
    upright = media.read_image(photo)
    assert np.abs(upright.astype(int) - astronaut).mean() < 4          # the face stands upright
    result = render(RenderRequest(photo, tmp_path / "out", dict(tiny_params, **FAST)))
    assert result.output == tmp_path / "out" / "phone_toon.jpg" and result.warnings == []
    inp = oiio.ImageInput.open(str(result.output))
    assert inp.spec().get_int_attribute("Orientation") == 6             # the tag is kept ...
    raw = inp.read_image(0, 0, 0, 3, "uint8")
    inp.close()
    assert np.abs(raw.astype(int) - stored).mean() < 12                # ... with the pixels stored as they came
    assert not np.array_equal(media.read_image(result.output), upright)  # and the face was stylised


def test_a_still_without_a_face_says_so(tmp_path, tiny_params):
    plain = media.write_frame(tmp_path / "wall.png", ms.frames(96, 64, 1)[0], bits=16)
    result = render(RenderRequest(plain, tmp_path / "wall_toon.png", dict(tiny_params, **FAST)))
    assert result.warnings == ["no face found in wall.png: it was written unchanged"]


def test_an_unreadable_plate_names_the_file_and_the_reason(tmp_path):
    bad = tmp_path / "p.1001.dpx"
    bad.write_bytes(b"SDPX" + b"\x00" * 60)
    with pytest.raises(UserError) as err:
        media.probe(bad)
    assert err.value.message.startswith("p.1001.dpx is not a readable DPX image: ") and "damaged" not in \
        err.value.message
    odd = tmp_path / "scan.xyz"
    odd.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError) as err:
        media.probe(odd)
    assert "DPX" in err.value.message and "OpenEXR" in err.value.message and "damaged" not in err.value.message


def test_a_plate_previews_in_the_working_space(exr_plate, tiny_params):
    from toon_ofx.core.render import preview

    kind, folder = exr_plate
    if kind == "float":
        pytest.skip("one pixel type is enough for the preview")
    original, stylised, faces = preview(folder / "bg.%03d.exr", 1, dict(tiny_params, **FAST))
    linear, _ = media.read_pixels(folder / "bg.008.exr")
    expected = plan_colour(media.probe(folder / "bg.%03d.exr")).to_engine(np.ascontiguousarray(linear[..., :3]), 8)
    assert original.dtype == np.uint8 and np.abs(original.astype(int) - expected).max() <= 1
    assert faces == 1 and stylised.shape == original.shape


def test_a_prores_4444_source_keeps_its_alpha_and_h264_says_it_cannot(tmp_path, tiny_params):
    rng = np.random.default_rng(5)
    pictures = [np.concatenate([p, rng.integers(0, 65536, (64, 96, 1), dtype=np.uint16)], axis=2)
                for p in ms.frames(96, 64, 2)]
    clip = ms.encode(tmp_path / "key.mov", pictures, "25", ["-c:v", "prores_ks", "-profile:v", "4",
                                                            "-pix_fmt", "yuva444p10le", "-alpha_bits", "16"])
    info = media.probe(clip)
    assert info.alpha
    result = render(RenderRequest(clip, tmp_path / "toon.mov", dict(tiny_params, **FAST)))
    assert result.codec == "ProRes 4444" and result.warnings == []
    source = dict(media.read_native(info))
    for i, frame in media.read_native(media.probe(result.output)):
        # the alpha plane, to ffmpeg's ProRes precision (it decodes 12-bit alpha and its encoder takes 10 bits):
        # within 1.5 10-bit steps
        diff = np.abs(frame[..., 3].astype(np.int64) - source[i][..., 3])
        assert frame.shape[2] == 4 and diff.max() <= 96
    mp4 = render(RenderRequest(clip, tmp_path / "toon.mp4", dict(tiny_params, **FAST)))
    assert mp4.warnings[-1] == ("the alpha channel of key.mov is left out: a HEVC Main 10 movie cannot hold it "
                                "(write a .mov in ProRes 4444, or .png/.exr/.tif frames, to keep it)")
    assert not media.probe(mp4.output).alpha


def test_a_bad_ocio_config_is_one_line(tmp_path, monkeypatch):
    from toon_ofx.core.colour import plan_colour as plan

    monkeypatch.setenv("OCIO", str(tmp_path / "missing.ocio"))
    plate = ms.write_image(tmp_path / "lin.exr", np.zeros((4, 4, 3), np.float32), "float")
    with pytest.raises(UserError) as err:
        plan(media.probe(plate), "ACEScg")
    assert err.value.message.startswith(f"the OCIO config {tmp_path / 'missing.ocio'} cannot be read: ")
    assert "\n" not in err.value.message
