"""The VToonify render path: the engine's VToonifyPipeline and the product around it (style kind, required
models, loading, render, preview, CLI), with tiny models written in the real file formats
(tests/tiny_vtoonify.py) and read through the loaders users run.

Resume, frame ranges and farm chunks are checked against a single pass on the 160-frame real clip of
test_temporal_render.py (a face that leaves and returns), longer than the style window (13 frames) and the
tracking window (20 + 6) together; its dlib detections are memoised the same way.
"""
from __future__ import annotations

import io
import textwrap
from contextlib import redirect_stderr
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import toon_ofx.core.vtoonify as core_vt
from engine.faces.landmarks import make_landmarker
from engine.vtoonify import load_face_parser, load_style_encoder, load_vtoonify
from engine.vtoonify.video import StyleWindow, VToonifyConfig, VToonifyPipeline, VToonifyPlan
from toon_ofx.core import media
from toon_ofx.core.errors import UserError
from toon_ofx.core.inversion import plan_inversion, required_models
from toon_ofx.core.params import validate
from toon_ofx.core.render import Renderer, RenderRequest, render

from conftest import fixture_path, panning_frames
from test_temporal_render import FRAMES, MemoLandmarker, detections_for, shared_dir, spliced_clip  # noqa: F401
from tiny_vtoonify import N_LATENT, STYLE_DIM, save_style_encoder, tiny_style_encoder, write_tiny_set


@pytest.fixture(scope="module")
def vt_t(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("vt_t"), "toonify", seed=0)


@pytest.fixture(scope="module")
def vt_d(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("vt_d"), "dualstylegan", seed=1)


@pytest.fixture(scope="module", autouse=True)
def supporting_files(vt_t):
    """The face parser and style encoder by path (users get them by manifest name)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core_vt, "PARSER", str(vt_t["parser"]))
        mp.setattr(core_vt, "STYLE_ENCODER", str(vt_t["encoder"]))
        yield


def networks(files):
    return load_vtoonify(files["model"]), load_face_parser(files["parser"]), load_style_encoder(files["encoder"])


def pipeline(files, landmarker=None, exstyle=None, **config):
    net, parser, encoder = networks(files)
    if net.backbone == "dualstylegan" and exstyle is None:
        exstyle = torch.zeros(1, net.n_latent, net.style_channels)
    return VToonifyPipeline(landmarker or make_landmarker("dlib"), net, parser, encoder, VToonifyConfig(**config),
                            exstyle=exstyle)


# ------------------------------------------------------------------ engine


def test_the_style_code_is_the_tent_mean_of_the_tracks_samples_and_a_broken_link_takes_a_new_one():
    window = StyleWindow(3, stride=2)
    codes = {i: torch.full((1,), float(i)) for i in range(6)}
    keys = [(i, i, 0) for i in range(6)]
    samples = []
    for i, key in enumerate(keys):
        previous = None if i == 0 else (keys[i - 1] if i != 3 else (2, 9, 9))   # frame 3's link is broken
        if window.link(key, previous):
            samples.append(i)
            window.set_code(key, codes[i])
    assert samples == [0, 2, 3, 4]    # the track's start, the stride's grid, where the link broke
    window = StyleWindow(3, stride=2)
    for i in range(4):
        if window.link(keys[i], keys[i - 1] if i else None):
            window.set_code(keys[i], codes[i])
    # frame 3 looks back over frames 3, 2, 1 (ages 0, 1, 2: weights 1, 2, 1); only frame 2 has a code
    assert window.smoothed(keys[3]).item() == 2
    window.link((4, 4, 0), keys[3])
    window.set_code((4, 4, 0), codes[4])
    # frame 4: ages 0 (frame 4, weight 1), 2 (frame 2, weight 1)
    assert window.smoothed((4, 4, 0)).item() == pytest.approx((4 * 1 + 2 * 1) / 2)
    fresh = StyleWindow(3, stride=2)
    assert fresh.link((7, 7, 0), (6, 1, 1))   # nothing recorded before it: a sample wherever it is


def test_the_plan_reads_back_the_style_window_and_the_tracking_history():
    plan = VToonifyPlan.create(0.5)
    assert (plan.style_window, plan.style_stride, plan.history, plan.look_ahead) == (13, 4, 14, 6)
    assert (plan.style_start(100), plan.track_start(100), plan.warmup_start(100)) == (88, 87, 73)
    assert plan.decode_end(100, 104) == 103 and plan.warmup_start(5) == 0
    assert (VToonifyPlan.create(0.0).style_window, VToonifyPlan.create(0.0).style_stride) == (1, 1)


def test_faces_go_through_the_network_in_full_batches_of_frames_aligned_on_their_index(vt_t, astronaut):
    pipe = pipeline(vt_t, batch_size=4)
    seen = []
    forward = pipe.net.forward
    pipe.net.forward = lambda x, *a, **k: (seen.append(len(x)), forward(x, *a, **k))[1]
    frames = list(enumerate(panning_frames(astronaut, 10)))[3:]   # frames 3..9: groups {3}, {4-7}, {8, 9}
    results = list(pipe.run(frames, first=3))
    assert [i for i, _ in results] == list(range(3, 10)) and all(r.faces == 1 for _, r in results)
    assert seen == [4, 4, 4]
    one = pipeline(vt_t, batch_size=1)
    alone = dict(one.run(frames, first=3))
    for index, result in results:   # batched convolutions round differently: a level or two, rarely
        diff = np.abs(result.image.astype(int) - alone[index].image.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.01


def test_only_the_head_changes_and_the_overlay_composites_to_the_frame(vt_t, astronaut):
    frames = list(enumerate(panning_frames(astronaut, 4)))
    full = dict(pipeline(vt_t).run(frames))
    over = dict(pipeline(vt_t, overlay=True).run(frames))
    for index, frame in frames:
        image, rgba = full[index].image, over[index].image
        changed = (image != frame).any(-1)
        assert changed.any() and not changed[:, :20].any()   # the face's region changes, the far left does not
        assert rgba.shape == frame.shape[:2] + (4,)
        alpha = rgba[..., 3:] / 255.0
        assert np.abs(rgba[..., :3] * alpha + frame * (1 - alpha) - image).max() <= 1.5
        assert (rgba[:, :20] == 0).all()   # transparent black away from the head


@pytest.mark.parametrize("scale", [4, 2])
def test_the_output_is_pasted_at_the_models_own_scale(vt_t, astronaut, scale):
    """A network that hands back its input crop enlarged to its output size (4x, or 2x for a model distilled
    with --out-scale 2) pastes the frame back onto itself: the output lands where its crop came from."""
    import torch.nn.functional as F

    pipe = pipeline(vt_t, color_match=False)
    pipe.net.forward = lambda x, style, d_s=None: F.interpolate(x[:, :3], scale_factor=scale, mode="bilinear",
                                                                align_corners=False)
    frame = astronaut[:320, 60:380]
    result = pipe.process(frame, 0)
    changed = (result.image != frame).any(-1)
    assert result.faces == 1 and changed.mean() > 0.2   # the head was pasted (blurred by the crop's pre-blur)
    diff = np.abs(result.image.astype(int) - frame)[changed]
    assert diff.mean() < 12, diff.mean()   # the crop's pre-blur: ~6 levels; the 2x output pasted as 4x: ~60


def test_deep_frames_stay_deep(vt_t, astronaut):
    frames = list(enumerate(panning_frames(astronaut, 2)))
    deep = [(i, f.astype(np.uint16) * 257) for i, f in frames]
    shallow = dict(pipeline(vt_t).run(frames))
    for index, result in pipeline(vt_t).run(deep):
        assert result.image.dtype == np.uint16
        untouched = (shallow[index].image == frames[index][1]).all(-1)
        assert (result.image[untouched] == deep[index][1][untouched]).mean() > 0.99


def test_every_face_of_a_group_photo_is_stylised(vt_t):
    photo = cv2.cvtColor(cv2.imread(str(fixture_path("multi_face.jpg"))), cv2.COLOR_BGR2RGB)
    result = pipeline(vt_t).process(photo, 0)
    faces = make_landmarker("dlib").detect(photo)
    assert result.faces == len(faces) >= 4
    for face in faces:
        x0, y0, x1, y1 = face.box.astype(int)
        assert (result.image[y0:y1, x0:x1] != photo[y0:y1, x0:x1]).any()


def test_vtoonify_d_takes_its_style_degree_and_extrinsic_style(vt_d, astronaut):
    net, parser, encoder = networks(vt_d)
    frame = next(panning_frames(astronaut, 1))
    codes = [net.zplus2wplus(torch.randn(1, net.n_latent, net.style_channels, generator=torch.Generator()
                                         .manual_seed(s))) for s in (1, 2)]
    landmarker = make_landmarker("dlib")

    def image(**kw):
        config = {k: kw.pop(k) for k in list(kw) if k in VToonifyConfig.__dataclass_fields__}
        pipe = VToonifyPipeline(landmarker, net, parser, encoder, VToonifyConfig(**config), **kw)
        return pipe.process(frame, 0).image.astype(int)

    base = image(exstyle=codes[0], style_degree=0.5)
    assert np.abs(image(exstyle=codes[0], style_degree=1.0) - base).max() > 0
    assert np.abs(image(exstyle=codes[1], style_degree=0.5) - base).max() > 0
    with pytest.raises(ValueError, match="extrinsic style"):
        VToonifyPipeline(landmarker, net, parser, encoder)


# ------------------------------------------------------------------ product


def test_a_vtoonify_file_is_a_style_of_its_own_without_base_model_or_lpips(vt_t):
    params = validate({"model": str(vt_t["model"]), "inversion": "projection"})
    inversion = plan_inversion(params)
    assert inversion.mode == "vtoonify" and inversion.vtoonify.backbone == "toonify"
    assert required_models(params, inversion) == {"toon": str(vt_t["model"]), "parser": str(vt_t["parser"]),
                                                  "style_encoder": str(vt_t["encoder"])}


def test_a_style_encoder_with_fewer_styles_than_the_model_reads_is_one_clear_error(vt_t, tmp_path):
    """More styles than the network reads is fine (the reference's 18-layer encoder drives an out-scale-2
    model's 16 layers: tests/test_distill.py renders one); fewer is one message naming both files."""
    short = save_style_encoder(tmp_path / "short.pt", tiny_style_encoder(n_styles=N_LATENT - 2),
                               torch.zeros(N_LATENT - 2, STYLE_DIM), output_size=128)
    files = {"toon": vt_t["model"], "parser": vt_t["parser"], "style_encoder": short}
    with pytest.raises(UserError, match=rf"^short\.pt encodes {N_LATENT - 2} styles of {STYLE_DIM}, but the "
                                        rf"VToonify model vtoonify_t\.pt reads {N_LATENT} styles") as info:
        core_vt.VToonifyModels(files, "cpu")
    assert info.value.field == "model"


@pytest.fixture
def bad_files(tmp_path, vt_t):
    state = torch.load(vt_t["model"], weights_only=True)["g_ema"]
    extra = dict(state, **{"junk.weight": torch.zeros(1)})
    torch.save({"g_ema": extra}, tmp_path / "extra.pt")
    shapes = dict(state)
    name = next(k for k in shapes if k.startswith("fusion_skip.") and k.endswith("weight"))
    shapes[name] = torch.zeros(shapes[name].shape[0] + 1, *shapes[name].shape[1:])
    torch.save({"g_ema": shapes}, tmp_path / "shapes.pt")
    return tmp_path


@pytest.mark.parametrize("name, reason", [("extra.pt", "unexpected key"), ("shapes.pt", "wrong shapes")])
def test_a_broken_vtoonify_file_is_one_line_naming_it(bad_files, astronaut_clip, tmp_path, name, reason):
    params = {"model": str(bad_files / name), "device": "cpu"}
    with pytest.raises(UserError) as info:
        render(RenderRequest(astronaut_clip, tmp_path / "out", params, frames=(0, 0)))
    message = str(info.value)
    assert info.value.field == "model" and name in message and reason in message and "\n" not in message


@pytest.fixture
def test_manifest(tmp_path, monkeypatch, vt_d):
    """A manifest naming a VToonify-D style, its codes, the parser and the style encoder (none installed)."""
    entries = {"tiny-vt-d": ('kind = "vtoonify"\nbackbone = "dualstylegan"\n'
                             'requires = ["tiny-vt-d-exstyles", "tiny-parser", "tiny-vt-encoder"]', vt_d["model"]),
               "tiny-vt-d-exstyles": ('kind = "exstyles"', vt_d["exstyles"]),
               "tiny-parser": ('kind = "parser"', vt_d["parser"]),
               "tiny-vt-encoder": ('kind = "encoder"', vt_d["encoder"])}
    text = "[groups]\n"
    for name, (extra, path) in entries.items():
        text += textwrap.dedent(f"""
            [models.{name}]
            title = "{name}"
            {{extra}}
            file = "{path.name}"
            format = "vtoonify"
            urls = []
            page = "https://example.invalid/{name}"
            sha256 = ""
            licence = "test weights"
            notes = ""
            """).replace("{extra}", extra)
    (tmp_path / "manifest.toml").write_text(text)
    monkeypatch.setenv("TOON_OFX_MANIFEST", str(tmp_path / "manifest.toml"))
    monkeypatch.setenv("TOON_OFX_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(core_vt, "PARSER", "tiny-parser")
    monkeypatch.setattr(core_vt, "STYLE_ENCODER", "tiny-vt-encoder")
    (tmp_path / "models").mkdir()
    return {name: path for name, (_, path) in entries.items()}


def test_missing_vtoonify_files_are_named_at_once_and_render_once_installed(test_manifest, astronaut_clip,
                                                                            tmp_path):
    from toon_ofx.core import render as render_module

    params = {"model": "tiny-vt-d", "device": "cpu", "style_id": 2, "style_degree": 0.25}
    with pytest.raises(UserError) as info:
        render(RenderRequest(astronaut_clip, tmp_path / "out", params, frames=(0, 0)))
    lines = [line for line in str(info.value).splitlines() if line.startswith("  - ")]
    assert str(info.value).startswith("4 model files are missing")
    assert [line.split(" (model ")[1].split(",")[0] for line in lines] == list(test_manifest)
    for name, path in test_manifest.items():
        (tmp_path / "models" / path.name).write_bytes(path.read_bytes())
    render_module._CACHE.clear()
    events = []
    result = render(RenderRequest(astronaut_clip, tmp_path / "out", params, frames=(0, 1)), progress=events.append)
    assert result.written == 2
    assert [(e.model, e.step, e.steps) for e in events if e.stage == "loading" and e.model] == [
        ("tiny-vt-d", 1, 4), ("tiny-parser", 2, 4), ("tiny-vt-encoder", 3, 4), ("dlib", 4, 4)]
    with pytest.raises(UserError, match="style_id 3 is out of range: this VToonify-D model has 3 styles") as info:
        render(RenderRequest(astronaut_clip, tmp_path / "again", dict(params, style_id=3), frames=(0, 0)))
    assert info.value.field == "style_id"


def test_first_run_offline_names_the_public_vtoonify_files_at_once(tmp_path, monkeypatch, astronaut_clip, capsys):
    """`--model vtoonify-d-cartoon` with nothing installed and no network: one message names the model, its
    style codes, the style encoder and the face parser (no base model, no LPIPS)."""
    import urllib.error
    import urllib.request

    from toon_ofx.cli import main

    monkeypatch.setattr(core_vt, "PARSER", "face-parsing")
    monkeypatch.setattr(core_vt, "STYLE_ENCODER", "vtoonify-style-encoder")
    for var in ("TOON_OFX_MODELS", "TOON_OFX_CACHE_DIR", "TORCH_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))

    def offline(request, timeout=None):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code = main(["render", str(astronaut_clip), "-o", str(tmp_path / "out.mp4"), "--device", "cpu",
                 "--model", "vtoonify-d-cartoon"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("toon-ofx: error: 4 model files are missing (this machine looks offline):")
    listed = [line.split(" (model ")[1].split(",")[0] for line in err.splitlines() if line.startswith("  - ")]
    assert listed == ["vtoonify-d-cartoon", "vtoonify-d-cartoon-exstyles", "face-parsing", "vtoonify-style-encoder"]


def test_a_manifest_backbone_refuses_a_file_of_the_other_kind(test_manifest, vt_t, astronaut_clip, tmp_path):
    for name, path in test_manifest.items():
        source = vt_t["model"] if name == "tiny-vt-d" else path
        (tmp_path / "models" / path.name).write_bytes(source.read_bytes())
    with pytest.raises(UserError, match="is a VToonify-T model .* not a VToonify-D model") as info:
        Renderer({"model": "tiny-vt-d", "device": "cpu"})
    assert info.value.field == "model"


def test_cli_and_preview_take_the_vtoonify_parameters(vt_d, astronaut_clip, tmp_path):
    from toon_ofx.cli import main
    from toon_ofx.core.render import preview

    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["render", str(astronaut_clip), "-o", str(tmp_path / "cli"), "--frames", "0-1", "--quiet",
                     "--model", str(vt_d["model"]), "--style-id", "1", "--style-degree", "0.3",
                     "--color-transfer", "--batch-size", "2", "--device", "cpu"])
    assert code == 0, err.getvalue()
    assert len(list((tmp_path / "cli").glob("*.png"))) == 2
    original, stylised, faces = preview(astronaut_clip, 3, {"model": str(vt_d["model"]), "device": "cpu",
                                                            "inversion": "encoder", "style_id": 1})
    assert faces == 1 and stylised.shape == original.shape and (stylised != original).any()


def test_the_engine_process_previews_a_vtoonify_d_style_and_follows_its_style_id(vt_d, astronaut_clip, tmp_path):
    """Through the engine's HTTP API (its own model check and preview function): a VToonify-D style previews;
    a second preview with another style id, degree or colour transfer uses them on the same loaded models
    (the renderer is kept: none of them is a model parameter); an id out of range is refused (422) before
    anything loads, for previews and jobs alike."""
    import cv2

    from toon_ofx.client import EngineClient, EngineError
    from toon_ofx.core import render as render_module
    from toon_ofx.service.server import Server

    render_module._CACHE.clear()
    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data").start()
    try:
        client = EngineClient(server.url, server.token)
        params = {"model": str(vt_d["model"]), "device": "cpu", "style_id": 0}

        def stylised(**change):
            answer = client.preview(str(astronaut_clip), 2, dict(params, **change))
            assert answer["faces"] == 1
            return cv2.imdecode(np.frombuffer(answer["stylised_png"], np.uint8), cv2.IMREAD_UNCHANGED).astype(int)

        first = stylised()
        renderer = render_module._CACHE["current"]
        assert np.array_equal(stylised(), first)
        for change in ({"style_id": 1}, {"style_degree": 0.9}, {"color_transfer": True}):
            assert np.abs(stylised(**change) - first).max() > 0, change
        assert render_module._CACHE["current"] is renderer
        for submit in (lambda: stylised(style_id=3),   # refused by the request check: no model loads
                       lambda: client.submit(str(astronaut_clip), frames=(0, 1), params=dict(params, style_id=3),
                                             output_folder=str(tmp_path / "out"))):
            with pytest.raises(EngineError) as info:
                submit()
            assert (info.value.status, info.value.field) == (422, "params.style_id")
            assert str(info.value) == "style_id 3 is out of range: this VToonify-D model has 3 styles (0-2)"
    finally:
        server.shutdown()
        render_module._CACHE.clear()


def test_a_style_file_rewritten_in_place_is_loaded_again(vt_t, astronaut_clip, tmp_path):
    """`distill` run on (more iterations, same output folder) rewrites RUN/vtoonify.pt: the engine process's
    kept renderer notices and loads it again instead of previewing the old weights."""
    from toon_ofx.core import render as render_module
    from toon_ofx.core.render import get_renderer, preview
    from tiny_vtoonify import save_vtoonify, tiny_vtoonify

    model = save_vtoonify(tmp_path / "vtoonify.pt", tiny_vtoonify("toonify", seed=0))
    params = {"model": str(model), "device": "cpu"}
    render_module._CACHE.clear()
    try:
        before = preview(astronaut_clip, 2, params)[1]
        renderer = get_renderer(params)
        assert get_renderer(params) is renderer and np.array_equal(preview(astronaut_clip, 2, params)[1], before)
        save_vtoonify(model, tiny_vtoonify("toonify", seed=3))
        after = preview(astronaut_clip, 2, params)[1]
        assert get_renderer(params) is not renderer and (after != before).any()
    finally:
        render_module._CACHE.clear()


def test_cancel_stops_before_the_next_network_batch(vt_t, astronaut_clip, tmp_path):
    import threading

    from toon_ofx.core.errors import Cancelled

    cancel = threading.Event()

    def progress(event):
        if event.stage == "rendering" and event.frames_done >= 2:
            cancel.set()

    with pytest.raises(Cancelled):
        render(RenderRequest(astronaut_clip, tmp_path / "out", {"model": str(vt_t["model"]), "device": "cpu"}),
               progress=progress, cancel=cancel)
    assert 2 <= len(list((tmp_path / "out").glob("*.png"))) < 10


# ------------------------------------------------------------------ chunks and resume on real footage


@pytest.fixture(scope="module")
def vt_params(vt_t) -> dict:
    return {"model": str(vt_t["model"]), "device": "cpu", "landmarker": "dlib", "batch_size": 4}


@pytest.fixture(scope="module")
def vt_renderer(tmp_path_factory, spliced_clip, vt_params):
    renderer = Renderer(vt_params)
    store = shared_dir(tmp_path_factory) / "face_leaves_and_returns.dets"
    renderer.landmarker = MemoLandmarker(renderer.landmarker, detections_for(spliced_clip, store, renderer.landmarker))
    return renderer


@pytest.fixture(scope="module")
def vt_single_pass(tmp_path_factory, spliced_clip, vt_params, vt_renderer):
    out = tmp_path_factory.mktemp("vt_single")
    assert vt_renderer.render(RenderRequest(spliced_clip, out, vt_params)).written == FRAMES
    pattern = str(out / "face_leaves_and_returns_toon.%06d.png")
    return {i: media.read_image(pattern % i) for i in range(FRAMES)}


def assert_frames_equal(pattern: str, single: dict, frames) -> None:
    for i in frames:
        assert np.array_equal(media.read_image(pattern % i), single[i]), f"frame {i} differs from the single pass"


def test_the_single_pass_stylises_the_face_and_passes_the_rest(spliced_clip, vt_single_pass):
    source = dict(media.read_frames(spliced_clip))
    changed = [bool((vt_single_pass[i] != source[i]).any()) for i in range(FRAMES)]
    assert changed == [not 72 <= i < 88 for i in range(FRAMES)]


@pytest.mark.parametrize("position", [5, 13, 50, 88, 95, 157])
def test_resume_equals_the_single_pass(tmp_path, position, spliced_clip, vt_params, vt_renderer, vt_single_pass):
    out = tmp_path / "seq"
    out.mkdir()
    pattern = str(out / "face_leaves_and_returns_toon.%06d.png")
    for i in range(position):
        media.write_frame(pattern % i, vt_single_pass[i])
    last = min(position + 5, FRAMES - 1)
    again = vt_renderer.render(RenderRequest(spliced_clip, out, vt_params, frames=(0, last)))
    assert (again.written, again.skipped) == (last - position + 1, position)
    assert_frames_equal(pattern, vt_single_pass, range(position, last + 1))


@pytest.mark.parametrize("size, span", [(5, (30, 49)), (7, (84, 104)), (29, (100, 159))])
def test_chunks_equal_the_single_pass(tmp_path, size, span, spliced_clip, vt_params, vt_renderer, vt_single_pass):
    out = tmp_path / "seq"
    for first in range(span[0], span[1] + 1, size):
        vt_renderer.render(RenderRequest(spliced_clip, out, vt_params, frames=(first, min(first + size - 1, span[1]))))
    assert_frames_equal(str(out / "face_leaves_and_returns_toon.%06d.png"), vt_single_pass,
                        range(span[0], span[1] + 1))


# ------------------------------------------------------------------ farm: frame-exact chunks


def test_a_vtoonify_style_plans_frame_exact_chunks(vt_t):
    """No keyframe grid: chunks of the size asked from the range's first frame, each task's warm-up what
    VToonifyPlan says, no snapping, the keyframe parameters left out of the task command lines."""
    from toon_ofx.farm.job import FarmJob, explicit_params
    from toon_ofx.farm.plan import plan_chunks, snap_chunk, temporal_plan

    params = {"model": str(vt_t["model"])}
    plan = temporal_plan(params)
    assert plan == VToonifyPlan.create(0.5)
    chunks = plan_chunks(30, 49, 7, plan=plan)
    assert [c.frames for c in chunks] == [(30, 36), (37, 43), (44, 49)]
    assert [c.warmup_first for c in chunks] == [plan.warmup_start(c.first) for c in chunks] == [3, 10, 17]
    assert snap_chunk((33, 38), (30, 49), plan) == (33, 38)
    assert "keyframe_interval" not in explicit_params(params)
    job = FarmJob("/clips/a.mp4", "/out/a.%06d.png", None, (30, 49), 7, params)
    assert job.frame_exact and job.task_chunk_size == 7 and job.idle_note([(30, 36)], "cut") is None
    assert "frame-exact for a VToonify style" in job.chunk_note() and "(7 per task), after decoding up to 27 frames" in job.chunk_note()


@pytest.mark.parametrize("fmt, size, span", [("flamenco", 5, (30, 49)), ("opencue", 7, (84, 104)),
                                             ("openjd", 7, (61, 80))])
def test_farm_tasks_of_a_vtoonify_style_equal_the_single_pass(fmt, size, span, tmp_path, monkeypatch, spliced_clip,
                                                              vt_params, vt_renderer, vt_single_pass):
    """The export's task command lines, cut the way each farm manager cuts them and run by the real CLI,
    write every frame once, no task idle, bit for bit the single pass; chunks of exactly the size asked
    (OpenJD divides the range evenly: at most that size)."""
    from test_farm import _check_render_commands, _exported_render_tasks
    from toon_ofx import cli
    from toon_ofx.core import render as render_module
    from toon_ofx.farm.job import FarmJob

    out = tmp_path / "frames"
    job = FarmJob(str(spliced_clip), str(out / "face_leaves_and_returns_toon.%06d.png"), None, span, size,
                  vt_params, name="vt")
    argvs, text = _exported_render_tasks(fmt, job, tmp_path / fmt)
    ranges = _check_render_commands(job, argvs)
    assert len(ranges) == len(argvs)   # no idle task
    sizes = [b - a + 1 for a, b in ranges]
    assert max(sizes) == size and (fmt == "openjd" or sizes[:-1] == [size] * (len(sizes) - 1)), ranges
    assert "frame-exact for a VToonify style" in str(text) and "nothing to do" not in str(text)
    monkeypatch.setitem(render_module._CACHE, "current", vt_renderer)   # its detections are memoised
    for argv in reversed(argvs):
        assert cli.main(argv) == 0
    assert_frames_equal(job.sequence, vt_single_pass, range(span[0], span[1] + 1))
    assert sorted(p.name for p in out.iterdir()) == [Path(job.sequence % i).name for i in range(span[0], span[1] + 1)]


@pytest.mark.parametrize("fmt", ["openjd", "opencue", "flamenco"])
def test_farm_export_says_a_vtoonify_styles_chunks_are_frame_exact(fmt, vt_t, tmp_path, capsys):
    from toon_ofx.cli import main

    clip = fixture_path("single_face.mp4")
    assert main(["farm", "export", str(clip), "--format", fmt, "-o", str(tmp_path / fmt), "--model",
                 str(vt_t["model"]), "--chunk-size", "7", "--keyframe-interval", "0"]) == 0
    err = capsys.readouterr().err
    assert "frame-exact for a VToonify style" in err and "became" not in err and "nothing to do" not in err
    assert "in 11 render task(s) of up to 7 frames" in err, err
