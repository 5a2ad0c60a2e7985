"""Run one add-on test scenario inside the real `bpy` module (Blender 4.2 LTS or 5.x from PyPI).

    <bpy venv>/bin/python run_scenario.py SCENARIO ARGS_JSON RESULT_JSON

Every scenario first installs and enables the built extension zip the way
Blender's "Install from Disk" does (``bpy.ops.extensions.package_install_files``
into the "user_default" repository; run with ``BLENDER_USER_RESOURCES`` pointing
at a temporary folder so nothing touches the real user's Blender). The result
(plain JSON) is written to RESULT_JSON; pytest asserts on it.

Headless, Blender never calls an operator's invoke()/modal() and never fires
timers, so scenarios call the operator's execute() (``bpy.ops.toon_ofx.toonify()``)
and drive the same plain functions the modal operator uses (``toonify.Run.tick``).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback

import bpy

MODULE = "bl_ext.user_default.toon_ofx"


def install(zip_path: str):
    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}, result
    assert MODULE in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
    return importlib.import_module(MODULE)


def addon_module(name: str):
    return importlib.import_module(f"{MODULE}.{name}")


def set_prefs(args: dict) -> None:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.engine_python = args.get("engine_python", "")
    prefs.output_folder = args.get("output_folder", "")
    prefs.start_timeout = int(args.get("start_timeout", 60))


def new_scene(fps: int = 24, fps_base: float = 1.0):
    scene = bpy.context.scene
    scene.render.fps = fps
    scene.render.fps_base = fps_base
    compat = addon_module("compat")
    sed = compat.sequence_editor(scene, create=True)
    for strip in list(compat.top_level(sed)):
        compat.top_level(sed).remove(strip)
    return scene, sed


STRIP_FIELDS = ("name", "type", "channel", "frame_start", "frame_final_start", "frame_final_end",
                "frame_final_duration", "frame_duration", "frame_offset_start", "frame_offset_end",
                "animation_offset_start", "animation_offset_end", "blend_type", "blend_alpha", "filepath",
                "directory", "use_reverse_frames", "mute", "select")


def describe(strip) -> dict:
    out = {}
    for name in STRIP_FIELDS:
        if hasattr(strip, name):
            value = getattr(strip, name)
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    # frame_duration means the content's timeline length in 5.0, the media's frame count in 4.2
    out["content_length"] = addon_module("compat").content_length(strip)
    if strip.type == "IMAGE":
        out["files"] = [e.filename for e in strip.elements]
        # Blender's own answer for which file shows at each visible timeline frame.
        out["shown"] = {str(t): os.path.basename(strip.strip_elem_from_frame(t).filename)
                        for t in range(strip.frame_final_start, strip.frame_final_end)}
    parent = strip.parent_meta() if hasattr(strip, "parent_meta") else None
    out["parent_meta"] = parent.name if parent is not None else None
    out["transform"] = [strip.transform.offset_x, strip.transform.offset_y, strip.transform.scale_x,
                        strip.transform.scale_y, strip.transform.rotation]
    return out


def all_strips(scene):
    compat = addon_module("compat")
    return {s.name: describe(s) for s in compat.all_strips(scene.sequence_editor)}


def add_movie(scene, args: dict):
    compat = addon_module("compat")
    sed = scene.sequence_editor
    strip = compat.new_movie(compat.top_level(sed), args.get("name", "clip"), args["clip"],
                             int(args.get("channel", 2)), int(args.get("frame_start", 10)))
    strip.animation_offset_start = int(args.get("animation_offset_start", 0))
    strip.animation_offset_end = int(args.get("animation_offset_end", 0))
    strip.frame_offset_start = int(args.get("frame_offset_start", 0))
    strip.frame_offset_end = int(args.get("frame_offset_end", 0))
    strip.use_reverse_frames = bool(args.get("reverse", False))
    strip.transform.offset_x = float(args.get("offset_x", 0.0))
    strip.transform.scale_x = float(args.get("scale_x", 1.0))
    return strip


def selected_movie(args: dict):
    """Preferences from `args`, a 24 fps scene with one movie strip (add_movie), selected: (scene, sed, strip)."""
    set_prefs(args)
    scene, sed = new_scene()
    source = add_movie(scene, args)
    select_only(scene, {source.name})
    return scene, sed, source


def _parameters(rna_function) -> set:
    return {p.identifier for p in rna_function.parameters}


def new_color_strip(collection, name: str, channel: int, start: int, length: int):
    """A colour strip over timeline frames [start, start + length).

    The harness's own strip-API difference (the add-on never adds effect strips):
    ``new_effect`` takes ``length`` in 5.0 and an exclusive ``frame_end`` in 4.2.
    """
    if "length" in _parameters(collection.bl_rna.functions["new_effect"]):
        return collection.new_effect(name=name, type="COLOR", channel=channel, frame_start=start, length=length)
    return collection.new_effect(name=name, type="COLOR", channel=channel, frame_start=start,
                                 frame_end=start + length)


def new_speed_strip(collection, name: str, channel: int, source, start: int, length: int):
    """A Speed Control strip playing `source` over timeline frames [start, start + length).

    The harness's own strip-API difference: 5.0 takes ``input1`` and ``length``, 4.2 ``seq1`` and an
    exclusive ``frame_end``.
    """
    if "input1" in _parameters(collection.bl_rna.functions["new_effect"]):
        return collection.new_effect(name=name, type="SPEED", channel=channel, frame_start=start, length=length,
                                     input1=source)
    return collection.new_effect(name=name, type="SPEED", channel=channel, frame_start=start,
                                 frame_end=start + length, seq1=source)


def add_blockers(scene, blockers) -> None:
    """Colour strips occupying (channel, start, length) so the result must skip those channels."""
    strips = addon_module("compat").top_level(scene.sequence_editor)
    for i, (channel, start, length) in enumerate(blockers or []):
        strip = new_color_strip(strips, f"blocker{i}", channel, start, length)
        assert (strip.frame_final_start, strip.frame_final_end) == (start, start + length), describe(strip)


def select_only(scene, names) -> None:
    compat = addon_module("compat")
    for strip in compat.all_strips(scene.sequence_editor):
        strip.select = strip.name in names


def run_operator(**kwargs) -> dict:
    """Call the Toonify operator's execute(); an ERROR report becomes RuntimeError in bpy."""
    t = time.perf_counter()
    try:
        result = bpy.ops.toon_ofx.toonify(**kwargs)
        return {"result": sorted(result), "error": None, "seconds": time.perf_counter() - t}
    except RuntimeError as exc:
        return {"result": ["ERROR"], "error": str(exc), "seconds": time.perf_counter() - t}


# ----------------------------------------------------------------------------- scenarios

def scenario_toonify(args: dict) -> dict:
    """Build a scene with a (trimmed) movie strip, Toonify it against a running/startable engine."""
    set_prefs(args)
    scene, sed = new_scene(int(args.get("fps", 24)))
    if args.get("sequence"):
        files = args["sequence"]
        compat = addon_module("compat")
        source = compat.new_image(compat.top_level(sed), "shot", files[0], int(args.get("channel", 2)),
                                  int(args.get("frame_start", 10)))
        for path in files[1:]:
            source.elements.append(os.path.basename(path))
    elif args.get("ui_add"):
        source = add_movie_like_the_ui(scene, args["clip"], int(args.get("channel", 2)),
                                       int(args.get("frame_start", 10)))
        source.frame_offset_start = int(args.get("frame_offset_start", 0))
        source.frame_offset_end = int(args.get("frame_offset_end", 0))
    else:
        source = add_movie(scene, args)
    add_blockers(scene, args.get("blockers"))
    settings = scene.toon_ofx
    for name, value in (args.get("params") or {}).items():
        setattr(settings, name, str(value) if name == "swap_res" else value)
    select_only(scene, {source.name})
    before = all_strips(scene)
    op = run_operator(timeout=float(args.get("timeout", 600)))
    after = all_strips(scene)
    new = [name for name in after if name not in before]
    out = {"op": op, "before": before, "after": after, "new": new, "source": source.name,
           "scene_fps": scene.render.fps}
    if args.get("render") and len(new) == 1:
        setup_render(scene)
        strip = addon_module("compat").find_strip(scene, new[0])
        for other in addon_module("compat").all_strips(sed):
            other.mute = other.name not in (source.name, strip.name)
        frames = range(source.frame_final_start, source.frame_final_end)
        folder = os.path.join(args["output_folder"], "_render")
        strip.mute = True
        out["rendered_source"] = [rendered_code(scene, t, os.path.join(folder, f"s{t}.png")) for t in frames]
        strip.mute = False
        out["rendered_result"] = [rendered_code(scene, t, os.path.join(folder, f"r{t}.png")) for t in frames]
    return out


def scenario_errors(args: dict) -> dict:
    """Error paths: each must be one clear report (RuntimeError from bpy), never a traceback, no new strips."""
    set_prefs(args)
    scene, sed = new_scene()
    source = add_movie(scene, args)
    add_blockers(scene, [(5, 1, 30)])
    out = {}

    def attempt(label):
        before = all_strips(scene)
        op = run_operator(timeout=60)
        out[label] = {"op": op, "unchanged": all_strips(scene) == before}

    select_only(scene, set())
    attempt("nothing_selected")
    select_only(scene, {"blocker0"})
    attempt("no_media_selected")

    select_only(scene, {source.name})
    good_config = os.environ.get("TOON_OFX_CONFIG_DIR", "")
    os.environ["TOON_OFX_CONFIG_DIR"] = args["empty_config_dir"]  # no engine running here
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.engine_python = args.get("bad_engine_python", "/nonexistent/python3")
    prefs.start_timeout = 5
    attempt("no_engine")
    prefs.engine_python = ""
    attempt("no_engine_python")
    os.environ["TOON_OFX_CONFIG_DIR"] = good_config
    set_prefs(args)

    source.filepath = args["bad_media"]  # exists, but is not a video
    attempt("bad_media")
    source.filepath = args["clip"]

    scene.toon_ofx.seed = 4242  # the stand-in renderer fails the job
    attempt("render_failed")
    scene.toon_ofx.seed = 0
    return out


def scenario_speed(args: dict) -> dict:
    """A strip played through a Speed Control strip (multiply 0.5), directly or as part of a meta strip: the
    operator refuses it by name and changes nothing; with the speed strip muted it plans as usual."""
    planning, compat = addon_module("planning"), addon_module("compat")
    set_prefs(args)
    scene, sed = new_scene()
    top = compat.top_level(sed)
    source = add_movie(scene, args)
    speed = new_speed_strip(top, "slow motion", 3, source, source.frame_final_start, source.frame_final_duration)
    speed.speed_control = "MULTIPLY"
    speed.speed_factor = 0.5
    out = {}
    select_only(scene, {source.name})
    before = all_strips(scene)
    out["direct"] = {"op": run_operator(timeout=60), "unchanged": all_strips(scene) == before}
    speed.mute = True
    plan = planning.plan_strip(scene, source)
    out["muted"] = [plan.first, plan.last]
    top.remove(speed)
    meta = make_meta(scene, [source.name], "meta")
    speed = new_speed_strip(top, "meta speed", 4, meta, meta.frame_final_start, meta.frame_final_duration)
    speed.speed_control = "MULTIPLY"
    speed.speed_factor = 0.5
    select_only(scene, {"meta"})
    before = all_strips(scene)
    out["meta"] = {"op": run_operator(timeout=60), "unchanged": all_strips(scene) == before}
    return out


def scenario_cancel(args: dict) -> dict:
    """The modal operator's plain path: Run on a worker thread, tick, cancel (what Esc does)."""
    scene, sed, source = selected_movie(args)
    names = ("planning", "toonify", "operators", "props", "compat")
    planning, toonify, operators, props, compat = (addon_module(n) for n in names)
    plans = planning.plan_strips(scene, compat.selected_strips(bpy.context, scene))
    params = planning.engine_params(props.values(scene.toon_ofx))
    before = all_strips(scene)
    run = toonify.Run(plans, params, operators.output_root(bpy.context), operators.connector(bpy.context))
    run.start(background=True)
    statuses, progress = [], []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run.tick()
        statuses.append(run.status)
        progress.append(run.progress)
        if run.pending and run.pending[0].frames_done >= 2:
            break
        time.sleep(0.05)
    run.request_cancel()
    run.tick()
    job_id = run.pending[0].job_id if run.pending else None
    time.sleep(0.3)
    engine_state = run.client.job(job_id)["state"] if job_id else None
    reports = [toonify.finish_message(m) for m in run.finals]
    return {"done": run.done, "cancelled": run.cancelled, "error": run.error, "statuses": statuses,
            "progress": progress, "engine_state": engine_state, "reports": reports,
            "unchanged": all_strips(scene) == before}


def _write_gray_frames(folder: str, name: str, first: int, last: int, size=(64, 36), first_number: int = 0,
                       digits: int = 6) -> str:
    """Result frames whose grey level codes their source frame (3 * n), like the test clip.

    Frame n is file `pattern % (first_number + n)`, as the engine names an image sequence's results.
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from png import png_bytes
    os.makedirs(folder, exist_ok=True)
    pattern = os.path.join(folder, f"{name}.%0{digits}d.png")
    for f in range(first, last + 1):
        with open(pattern % (first_number + f), "wb") as fh:
            fh.write(png_bytes(size[0], size[1], (3 * f % 256,) * 3))
    return pattern


def setup_render(scene, size=(64, 36)) -> None:
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.use_sequencer = True
    scene.view_settings.view_transform = "Standard"  # grey levels pass through unchanged


def rendered_code(scene, frame: int, path: str) -> int:
    """Render the sequencer at `frame` and decode the grey level (3 * source frame number)."""
    scene.frame_set(frame)
    scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(path)
    try:
        w, h = image.size
        i = ((h // 2) * w + w // 2) * image.channels
        value = image.pixels[i] * 255.0
    finally:
        bpy.data.images.remove(image)
    return int(round(value / 3.0))


def _sequencer_override(scene) -> dict:
    window = bpy.context.window
    area = window.screen.areas[0]
    area.type = "SEQUENCE_EDITOR"
    region = next(r for r in area.regions if r.type == "WINDOW")
    if hasattr(bpy.context.workspace, "sequencer_scene"):  # 5.0+
        bpy.context.workspace.sequencer_scene = scene
    return dict(window=window, area=area, region=region, scene=scene)


def make_meta(scene, names, name: str):
    """Group the named strips into a meta strip the way Strip > Make Meta Strip does (sized to its contents)."""
    select_only(scene, set(names))
    with bpy.context.temp_override(**_sequencer_override(scene)):
        result = bpy.ops.sequencer.meta_make()
    assert result == {"FINISHED"}, result
    meta = scene.sequence_editor.active_strip
    meta.name = name
    return meta


def add_movie_like_the_ui(scene, path: str, channel: int, frame_start: int):
    """Add a movie the way the Add > Movie menu does, with "Adjust Playback Rate" on (Blender's default)."""
    override = _sequencer_override(scene)
    folder, name = os.path.split(path)
    compat = addon_module("compat")
    before = {s.name for s in compat.all_strips(scene.sequence_editor)}
    options = dict(filepath=path, directory=folder + os.sep, files=[{"name": name}], frame_start=frame_start,
                   channel=channel, adjust_playback_rate=True, use_framerate=False, sound=False)
    operator = bpy.ops.sequencer.movie_strip_add
    if "move_strips" in {p.identifier for p in operator.get_rna_type().properties}:  # 5.0+
        options["move_strips"] = False   # keep the strip where asked, overlapping or not
    with bpy.context.temp_override(**override):
        result = operator(**options)
    assert result == {"FINISHED"}, result
    (strip,) = [s for s in compat.all_strips(scene.sequence_editor) if s.name not in before]
    return strip


def scenario_engine_dies(args: dict) -> dict:
    """The engine process is killed mid-render: the run ends with one clear failure, nothing placed."""
    import signal
    scene, sed, source = selected_movie(args)
    names = ("planning", "toonify", "operators", "props", "compat")
    planning, toonify, operators, props, compat = (addon_module(n) for n in names)
    plans = planning.plan_strips(scene, compat.selected_strips(bpy.context, scene))
    run = toonify.Run(plans, planning.engine_params(props.values(scene.toon_ofx)),
                      operators.output_root(bpy.context), operators.connector(bpy.context)).start(background=True)
    before = all_strips(scene)
    deadline = time.monotonic() + 60
    killed = False
    while not run.done and time.monotonic() < deadline:
        run.tick()
        if not killed and run.pending and run.pending[0].frames_done >= 1:
            with open(os.path.join(os.environ["TOON_OFX_CONFIG_DIR"], "server.json")) as fh:
                os.kill(json.load(fh)["pid"], signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    return {"done": run.done, "killed": killed, "reports": [toonify.finish_message(m) for m in run.finals],
            "unchanged": all_strips(scene) == before}


def scenario_placement(args: dict) -> dict:
    """plan_strip + place_result on many strip layouts, checked with Blender's renderer.

    The test clip's frame n is grey level 3n, and so is result frame n: rendering each
    timeline frame with the new strip muted and unmuted must decode the same number.
    """
    planning, placement, compat = (addon_module(n) for n in ("planning", "placement", "compat"))
    out = {}
    for case in args["cases"]:
        scene, sed = new_scene(int(case.get("fps", args.get("fps", 24))), float(case.get("fps_base", 1.0)))
        sed.use_cache_raw = bool(case.get("cache_raw", True))
        clip = case.get("clip", args.get("clip"))
        setup_render(scene)
        top = compat.top_level(sed)
        if case.get("image"):
            source = compat.new_image(top, "still", case["image"], case.get("channel", 1), case.get("frame_start", 1))
            source.frame_final_end = case["frame_final_end"]
        elif case.get("sequence"):
            files = case["sequence"]
            source = compat.new_image(top, "seq", files[0], case.get("channel", 1), case.get("frame_start", 1))
            for path in files[1:]:
                source.elements.append(os.path.basename(path))
        elif case.get("ui_add"):
            source = add_movie_like_the_ui(scene, clip, case.get("channel", 2), case.get("frame_start", 10))
        else:
            source = compat.new_movie(top, "clip", clip, case.get("channel", 2), case.get("frame_start", 10))
        for key, attr in (("animation_offset_start", "animation_offset_start"),
                          ("animation_offset_end", "animation_offset_end"),
                          ("frame_offset_start", "frame_offset_start"), ("frame_offset_end", "frame_offset_end"),
                          ("reverse", "use_reverse_frames"), ("strobe", "strobe")):
            if key in case:
                setattr(source, attr, case[key])
        source.transform.offset_x = float(case.get("offset_x", 0.0))
        if case.get("meta"):
            meta = make_meta(scene, [source.name], "meta")
            meta.use_reverse_frames = bool(case.get("meta_reverse", False))
            source = compat.children(meta)[0]
        add_blockers(scene, case.get("blockers"))
        try:
            plan = planning.plan_strip(scene, source)
        except planning.ToonifyError as exc:
            out[case["label"]] = {"error": str(exc)}
            continue
        source_before = describe(source)
        number = int(case.get("first_number", 0))
        pattern = _write_gray_frames(os.path.join(args["folder"], case["label"]), "res", plan.first, plan.last,
                                     first_number=number, digits=4 if number else 6)
        result = {"kind": "sequence", "pattern": pattern, "first_frame": plan.first, "last_frame": plan.last,
                  "first_number": number}
        strip = placement.place_result(scene, source, result, case.get("output_kind", "frame"))
        entry = {"plan": [plan.first, plan.last], "plan_source": plan.source, "rate": plan.mapping.rate,
                 "source_before": source_before, "source_after": describe(source), "new": describe(strip)}
        if args.get("render", True) and not case.get("no_render"):
            for other in compat.all_strips(sed):   # only the source (and its meta) and the result render
                if other.name.startswith("blocker"):
                    other.mute = True
            frames = range(source.frame_final_start, source.frame_final_end)
            folder = os.path.join(args["folder"], case["label"] + "_render")
            strip.mute = True
            entry["rendered_source"] = [rendered_code(scene, t, os.path.join(folder, f"s{t}.png")) for t in frames]
            strip.mute = False
            entry["rendered_result"] = [rendered_code(scene, t, os.path.join(folder, f"r{t}.png")) for t in frames]
        out[case["label"]] = entry
    return out


def scenario_meta(args: dict) -> dict:
    """A selected meta strip: its movie and image strips are toonified and placed inside it.

    The meta holds a trimmed movie (channel 1), a color strip above part of it (channel 2), an image
    sequence later on (channel 2), and a muted movie (channel 4, skipped); the meta itself is trimmed.
    Rendered with the new strips muted and unmuted (color strip muted), every frame decodes the same.
    """
    set_prefs(args)
    compat = addon_module("compat")
    scene, sed = new_scene(24)
    top = compat.top_level(sed)
    movie = compat.new_movie(top, "clip", args["clip"], 1, 1)
    movie.frame_offset_start, movie.frame_offset_end = 3, 40
    color = new_color_strip(top, "title", 2, 1, 10)
    files = args["sequence"]
    seq = compat.new_image(top, "seq", files[0], 2, 40)
    for path in files[1:]:
        seq.elements.append(os.path.basename(path))
    hidden = compat.new_movie(top, "hidden", args["clip"], 4, 1)
    hidden.mute = True
    meta = make_meta(scene, ["clip", "title", "seq", "hidden"], "meta")
    meta.frame_final_start = meta.frame_final_start + 2           # the meta hides its first frames
    new_color_strip(top, "lonely", 8, 1, 5)
    make_meta(scene, ["lonely"], "empty")
    out = {}
    select_only(scene, {"meta"})
    before = all_strips(scene)
    out["op"] = run_operator(timeout=120)
    after = all_strips(scene)
    out["new"] = {n: after[n] for n in after if n not in before}
    out["unchanged"] = all(after[n] == before[n] for n in before if n not in ("meta",))
    setup_render(scene)
    meta = compat.find_strip(scene, "meta")
    compat.find_strip(scene, "title").mute = True
    compat.find_strip(scene, "empty").mute = True
    new = [compat.find_strip(scene, n) for n in out["new"]]
    frames = range(meta.frame_final_start, meta.frame_final_end)
    folder = os.path.join(args["output_folder"], "_render")
    for strip in new:
        strip.mute = True
    out["rendered_source"] = [rendered_code(scene, t, os.path.join(folder, f"s{t}.png")) for t in frames]
    for strip in new:
        strip.mute = False
    out["rendered_result"] = [rendered_code(scene, t, os.path.join(folder, f"r{t}.png")) for t in frames]
    select_only(scene, {"empty"})
    out["empty"] = run_operator(timeout=30)
    return out


def _engine_alive() -> bool:
    """The engine still runs (a stopping engine removes its server.json first)."""
    try:
        with open(os.path.join(os.environ["TOON_OFX_CONFIG_DIR"], "server.json")) as fh:
            pid = json.load(fh)["pid"]
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def _wait_engine_gone(limit: float) -> float:
    """Seconds until the engine process is gone (or -1 after `limit`)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if not _engine_alive():
            return time.monotonic() - start
        time.sleep(0.2)
    return -1.0


def scenario_session(args: dict) -> dict:
    """The add-on holds an engine session while enabled; disabling it (or Blender exiting) says goodbye.

    The engine runs with a short idle timeout: it must outlive that timeout while the add-on holds it,
    and stop soon after the add-on lets go.
    """
    import addon_utils
    set_prefs(args)
    out = {"check": sorted(bpy.ops.toon_ofx.check_engine())}
    with open(args["connected"], "w") as fh:               # the test lets go of its own session now
        fh.write("1")
    time.sleep(float(args["idle_timeout"]) + 4)
    out["alive_while_held"] = _engine_alive()
    if args.get("disable"):
        addon_utils.disable(MODULE, default_set=True, handle_error=None)
        out["gone_after"] = _wait_engine_gone(15)
    return out


def scenario_retry(args: dict) -> dict:
    """Retry: a cancelled render resumes and is placed; a render that fails again is reported again."""
    scene, sed, source = selected_movie(args)
    operators = addon_module("operators")
    out = {"nothing": run_operator_named("retry", timeout=10)}
    out["first"] = run_operator(timeout=1.5)                  # cancelled by the timeout: still rendering
    out["retryable"] = [job.strip_name for job in operators.retryable()]
    job_id = operators.retryable()[0].job_id if operators.retryable() else None
    before = all_strips(scene)
    out["retry"] = run_operator_named("retry", timeout=120)
    after = all_strips(scene)
    out["new"] = [describe(addon_module("compat").find_strip(scene, n)) for n in after if n not in before]
    out["after_retry"] = [job.strip_name for job in operators.retryable()]
    out["job_id"] = job_id
    scene.toon_ofx.seed = 4242                                 # the stand-in renderer fails this one
    out["failing"] = run_operator(timeout=60)
    out["retry_failing"] = run_operator_named("retry", timeout=60)
    out["still_retryable"] = [job.strip_name for job in operators.retryable()]
    return out


def run_operator_named(name: str, **kwargs) -> dict:
    try:
        result = getattr(bpy.ops.toon_ofx, name)(**kwargs)
        return {"result": sorted(result), "error": None}
    except RuntimeError as exc:
        return {"result": ["ERROR"], "error": str(exc)}


class _RecordingLayout:
    """What a panel or menu draw() asks of its layout, recorded (headless Blender never draws)."""

    def __init__(self, calls):
        self.calls = calls

    def __getattr__(self, name):
        def call(*args, **kwargs):
            entry = [name, [a if isinstance(a, (str, int, float, bool)) else type(a).__name__ for a in args],
                     {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}]
            self.calls.append(entry)
            if name in ("operator",):
                return _RecordedOperator(entry)
            if name in ("row", "column", "box", "split"):
                return self
            return None
        return call


class _RecordedOperator:
    def __init__(self, entry):
        self.__dict__["entry"] = entry

    def __setattr__(self, name, value):
        self.entry[2][f"op.{name}"] = value


def scenario_models(args: dict) -> dict:
    """The Style and Base model pickers: the engine's model list, picking one, and a file from the browser."""
    import types
    set_prefs(args)
    scene, sed = new_scene()
    ui, models, props = (addon_module(n) for n in ("ui", "models", "props"))
    out = {"before": [m["name"] for m in models.for_field("model")]}
    menu_calls = []
    ui.MODEL_MENUS["model"].draw(types.SimpleNamespace(layout=_RecordingLayout(menu_calls)), bpy.context)
    out["empty_menu"] = menu_calls
    out["check"] = sorted(bpy.ops.toon_ofx.check_engine())
    out["styles"] = models.for_field("model")
    out["bases"] = [m["name"] for m in models.for_field("base_model")]
    menu_calls = []
    ui.MODEL_MENUS["model"].draw(types.SimpleNamespace(layout=_RecordingLayout(menu_calls)), bpy.context)
    out["menu"] = menu_calls
    panel_calls = []
    ui.TOONOFX_PT_toonify.draw(types.SimpleNamespace(layout=_RecordingLayout(panel_calls)), bpy.context)
    out["panel"] = panel_calls
    name = out["styles"][0]["name"]
    pick = addon_module("operators").TOONOFX_OT_pick_model
    out["description"] = pick.description(bpy.context, types.SimpleNamespace(name=name))
    out["pick"] = sorted(bpy.ops.toon_ofx.pick_model(target="model", name=name))
    out["picked"] = scene.toon_ofx.model
    bpy.ops.wm.save_as_mainfile(filepath=args["blend"])
    scene.toon_ofx.model = "//models/my_toon.pt"            # what the file browser writes for a file beside it
    out["from_browser"] = props.values(scene.toon_ofx)["model"]
    out["refresh"] = sorted(bpy.ops.toon_ofx.refresh_models())
    return out


class _FakeWindowManager:
    """What the modal operator asks of context.window_manager, recorded."""

    def __init__(self, calls):
        self.calls, self.windows = calls, []

    def event_timer_add(self, step, window=None):
        self.calls.append(("timer_add", step))
        return "timer"

    def event_timer_remove(self, timer):
        self.calls.append(("timer_remove",))

    def modal_handler_add(self, op):
        self.calls.append(("modal_handler_add",))

    def progress_begin(self, a, b):
        self.calls.append(("progress_begin", a, b))

    def progress_update(self, value):
        self.calls.append(("progress_update", value))

    def progress_end(self):
        self.calls.append(("progress_end",))


class _FakeWorkspace:
    def __init__(self, calls):
        self.calls = calls

    def status_text_set(self, text):
        self.calls.append(("status", text))


def scenario_modal(args: dict) -> dict:
    """The interactive path (invoke + modal), which Blender never calls headless.

    The operator's own invoke()/modal() functions run with a stand-in context whose
    window manager and workspace record the calls; events are fed as Blender would
    (timer ticks, Esc). Everything else is real: the scene, the strips, the engine.
    """
    import types
    scene, sed, source = selected_movie(args)
    operators = addon_module("operators")
    cls = operators.TOONOFX_OT_toonify

    class Op:
        invoke, modal, cancel, _show, _stop, _make_run = cls.invoke, cls.modal, cls.cancel, cls._show, cls._stop, \
            cls._make_run

        def __init__(self):
            self.reports = []

        def report(self, level, text):
            self.reports.append([sorted(level)[0], text])

    def drive(esc_after_frames=None, limit=60.0):
        calls = []
        context = types.SimpleNamespace(scene=scene, preferences=bpy.context.preferences, window=None,
                                        window_manager=_FakeWindowManager(calls), workspace=_FakeWorkspace(calls))
        op = Op()
        before = all_strips(scene)
        first = op.invoke(context, types.SimpleNamespace(type="LEFTMOUSE", value="PRESS"))
        states = [sorted(first)]
        poll_while_running = cls.poll(context)
        passthrough = sorted(op.modal(context, types.SimpleNamespace(type="MOUSEMOVE", value="NOTHING")))
        deadline = time.monotonic() + limit
        result = first
        while result == {"RUNNING_MODAL"} and time.monotonic() < deadline:
            time.sleep(0.05)
            job = op._run.pending[0] if op._run.pending else None
            if esc_after_frames is not None and job is not None and job.frames_done >= esc_after_frames:
                event = types.SimpleNamespace(type="ESC", value="PRESS")
            else:
                event = types.SimpleNamespace(type="TIMER", value="NOTHING")
            result = op.modal(context, event)
            states.append(sorted(result))
        job = op._run.pending[0] if op._run.pending else None
        engine_state = None
        for _ in range(50):  # a cancelled job stops after the frame in hand
            engine_state = op._run.client.job(job.job_id)["state"] if job else None
            if engine_state in ("done", "failed", "cancelled"):
                break
            time.sleep(0.1)
        after = all_strips(scene)
        return {"first": sorted(first), "final": sorted(result), "passthrough": passthrough,
                "poll_while_running": poll_while_running, "poll_after": cls.poll(context),
                "reports": op.reports, "calls": calls, "engine_state": engine_state,
                "new": [describe(addon_module("compat").find_strip(scene, n)) for n in after if n not in before],
                "source_unchanged": before[source.name] == after[source.name]}

    full = drive()
    cancelled = drive(esc_after_frames=2)
    return {"full": full, "cancelled": cancelled}


def scenario_checkout(args: dict) -> dict:
    """The unbuilt add-on from a checkout (a local extension repository holding a symlink to
    blender_addon/) loads toon-ofx's modules from ../toon_ofx; disabling unregisters cleanly."""
    import addon_utils
    out = {"vendored_source": sys.modules[MODULE + ".engine_link"].SOURCE}
    addon_utils.disable(MODULE, default_set=True, handle_error=None)   # one copy at a time
    out["after_disable_zip"] = hasattr(bpy.types.Scene, "toon_ofx") or hasattr(bpy.types, "TOONOFX_PT_toonify")
    bpy.context.preferences.extensions.repos.new(name="dev", module="dev", custom_directory=args["repo_dir"],
                                                 source="USER")
    addon_utils.enable("bl_ext.dev.toon_ofx", default_set=True, handle_error=None)
    link = importlib.import_module("bl_ext.dev.toon_ofx.engine_link")
    out.update(source=link.SOURCE, client_file=link.client_module().__file__,
               registered=hasattr(bpy.types.Scene, "toon_ofx") and hasattr(bpy.types, "TOONOFX_PT_toonify"))
    addon_utils.disable("bl_ext.dev.toon_ofx", default_set=True, handle_error=None)
    out["after_disable"] = hasattr(bpy.types.Scene, "toon_ofx") or hasattr(bpy.types, "TOONOFX_PT_toonify")
    return out


def scenario_schema(args: dict) -> dict:
    """The panel's properties as Blender registered them, and what else the extension registered."""
    scene, sed = new_scene()
    props = {}
    for prop in scene.toon_ofx.bl_rna.properties:
        if prop.identifier in ("rna_type", "name"):
            continue
        entry = {"type": prop.type, "name": prop.name}
        if prop.type == "ENUM":
            entry["items"] = [item.identifier for item in prop.enum_items]
            entry["default"] = prop.default
        else:
            entry["default"] = prop.default
            if prop.type in ("INT", "FLOAT"):
                entry["min"], entry["max"] = prop.hard_min, prop.hard_max
        props[prop.identifier] = entry
    panels = [name for name in ("TOONOFX_PT_toonify", "TOONOFX_PT_advanced") if hasattr(bpy.types, name)]
    panel = getattr(bpy.types, "TOONOFX_PT_toonify")
    prefs = bpy.context.preferences.addons[MODULE].preferences
    return {"props": props, "values": addon_module("props").values(scene.toon_ofx), "panels": panels,
            "panel_category": panel.bl_category, "space": panel.bl_space_type,
            "prefs_idname": type(prefs).bl_idname, "operators": [n for n in dir(bpy.ops.toon_ofx) if not n.startswith("_")]}


SCENARIOS = {name[len("scenario_"):]: fn for name, fn in globals().items() if name.startswith("scenario_")}


def main() -> int:
    scenario, args_json, result_path = sys.argv[-3:]
    args = json.loads(args_json)
    try:
        install(args["zip"])
        result = {"ok": True, "blender": bpy.app.version_string, "data": SCENARIOS[scenario](args)}
    except BaseException:
        result = {"ok": False, "traceback": traceback.format_exc()}
    with open(result_path, "w") as fh:
        json.dump(result, fh, indent=1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
