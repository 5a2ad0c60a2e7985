"""Planning a Toonify: what each selected strip asks of the engine (`plan_strips`).

A plan is plain data (safe to hand to a thread): the strip's source file (a
printf pattern for an image sequence), how its content maps to source frame
numbers (`MediaMapping`: file numbering, playback rate), and the source frames
visible on the timeline (see timeline.py for the arithmetic). Strips are named,
not referenced, because a Python reference to a strip does not survive undo or
file reloads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import bpy

from . import compat
from .engine_link import errors as toon_errors
from .engine_link import params as schema
from .timeline import StripTiming, TimelineError, image_sequence_source, playback_rate, real_time_length

SUPPORTED_TYPES = ("MOVIE", "IMAGE")


class ToonifyError(Exception):
    """One clear message for a Blender report (never a traceback)."""


@dataclass(frozen=True)
class MediaMapping:
    """What maps a strip's content to source frame numbers, beyond the strip's own fields."""
    base: int = 0                        # source frame of the strip's first file (image sequences)
    rate: float = 1.0                    # source frames per timeline frame
    source_length: Optional[int] = None  # source frames the content uses (None: content length x rate)


@dataclass
class StripPlan:
    """What one strip asks of the engine (plain data: safe to hand to a thread)."""
    strip_name: str
    scene_name: str
    source: str          # absolute path of the media file (a printf pattern for an image sequence)
    mapping: MediaMapping
    first: int           # first source frame to render (inclusive)
    last: int            # last source frame to render (inclusive)
    fps: float           # the scene's frame rate


def strip_timing(scene, strip, mapping: MediaMapping = MediaMapping()) -> StripTiming:
    """The strip's frame layout (see timeline.py for how Blender maps it to source frames)."""
    return StripTiming(
        content_start=float(strip.frame_start),
        content_length=compat.content_length(strip),
        final_start=int(strip.frame_final_start),
        final_end=int(strip.frame_final_end),
        source_offset=mapping.base + int(getattr(strip, "animation_offset_start", 0)),
        reverse=bool(getattr(strip, "use_reverse_frames", False)),
        rate=mapping.rate,
        source_length=mapping.source_length,
        strobe=float(getattr(strip, "strobe", 1.0) or 1.0),
        cached_keys=compat.source_cache_keys_truncate(scene),
        first_drawn=max([int(scene.frame_start)] + [int(m.frame_final_start) for m in compat.enclosing_metas(strip)]),
    )


def _remaps_time(meta) -> bool:
    """A meta strip that shows its contents reversed, strobed or retimed."""
    return bool(getattr(meta, "use_reverse_frames", False)) or float(getattr(meta, "strobe", 1.0) or 1.0) > 1.0 \
        or compat.is_retimed(meta)


def speed_effects_on(scene, strip) -> List[str]:
    """Names of the unmuted Speed Control strips that play `strip`, or a meta strip holding it.

    Such a strip shows its input at other frames than the input's own (Blender renders the input at
    ``start + frame_index * factor``, fractional frames included, cross-fades two of them with Frame
    Interpolation, and integrates an animated factor), which a placed result cannot follow exactly.
    """
    inputs = {strip.name} | {meta.name for meta in compat.enclosing_metas(strip)}
    return [s.name for s in compat.all_strips(compat.sequence_editor(scene))
            if s.type == "SPEED" and not s.mute and getattr(getattr(s, "input_1", None), "name", None) in inputs]


def scene_fps(scene) -> float:
    return scene.render.fps / (scene.render.fps_base or 1.0)


def _abspath(path: str, strip) -> str:
    library = getattr(strip.id_data, "library", None)
    return os.path.normpath(bpy.path.abspath(path, library=library))


def strip_source(strip) -> Tuple[str, int]:
    """The engine source of a movie or image strip, and the source frame of its first file.

    A movie is its file; an image strip is its one still, or the printf pattern of
    its numbered files (see `timeline.image_sequence_source`).
    """
    if strip.type == "MOVIE":
        return _abspath(strip.filepath, strip), 0
    if strip.type == "IMAGE":
        directory = _abspath(strip.directory, strip)
        files = [e.filename for e in strip.elements]
        if not files:
            raise ToonifyError(f"strip {strip.name!r} has no image files")
        try:
            return image_sequence_source(directory, files, _listdir)
        except TimelineError as exc:
            raise ToonifyError(f"strip {strip.name!r}: {exc}") from None
    raise ToonifyError(f"strip {strip.name!r} is a {strip.type.lower()} strip; only movie and image strips "
                       "can be toonified")


def _first_file(strip) -> str:
    return _abspath(os.path.join(strip.directory, strip.elements[0].filename), strip)


def _listdir(directory: str):
    try:
        return os.listdir(directory)
    except OSError:
        return []


def movie_frame_count(path: str) -> Optional[int]:
    """The movie's frame count as Blender reads it (through a temporary MovieClip), or None."""
    before = set(bpy.data.movieclips)
    try:
        clip = bpy.data.movieclips.load(path, check_existing=True)
    except (RuntimeError, OSError):
        return None
    try:
        return int(clip.frame_duration)
    finally:
        if clip not in before:
            bpy.data.movieclips.remove(clip)


def media_mapping(scene, strip) -> MediaMapping:
    """How the strip's content maps to source frames (file numbering, playback rate)."""
    source, base = strip_source(strip)
    if strip.type != "MOVIE":
        return MediaMapping(base=base)
    movie_fps = float(getattr(strip, "fps", 0.0) or 0.0)
    rate = playback_rate(movie_fps, scene.render.fps, scene.render.fps_base) if movie_fps > 0 else 1.0
    if rate == 1.0:
        return MediaMapping()
    # A movie whose rate differs from the scene's plays in real time when it was added with "Adjust
    # Playback Rate" (Blender's default), else 1:1; no property says which, its length does. When both
    # lengths agree (rates a hair apart, short clips), the default wins.
    total = movie_frame_count(source)
    if total is None:
        return MediaMapping()
    used = total - int(strip.animation_offset_start) - int(strip.animation_offset_end)
    length = compat.content_length(strip)
    if length == real_time_length(used, rate):
        return MediaMapping(rate=rate, source_length=used)
    if length == used:
        return MediaMapping(source_length=used)
    raise ToonifyError(f"strip {strip.name!r} spans {length} frames but its movie has {used} "
                       f"frames at {movie_fps:g} fps in a {scene_fps(scene):g} fps scene; toonify cannot tell "
                       "which movie frame shows where")


def plan_strip(scene, strip) -> StripPlan:
    """What to render for one strip: its source and the source frames visible on the timeline."""
    source, _ = strip_source(strip)
    if compat.is_retimed(strip):
        raise ToonifyError(f"strip {strip.name!r} has retiming (speed) keys, which toonify cannot follow; "
                           "reset its retiming first (Strip > Retiming > Reset)")
    speeds = speed_effects_on(scene, strip)
    if speeds:
        raise ToonifyError(f"strip {strip.name!r} plays through speed control strip {speeds[0]!r}, whose retiming "
                           "toonify cannot follow; mute or remove the speed strip to toonify the clip itself, or "
                           "render the speed change into a new clip and toonify that")
    first_file = _first_file(strip) if strip.type == "IMAGE" else source
    if not os.path.isfile(first_file):
        raise ToonifyError(f"strip {strip.name!r}: source file not found: {first_file}")
    mapping = media_mapping(scene, strip)
    timing = strip_timing(scene, strip, mapping)
    remapping = [m.name for m in compat.enclosing_metas(strip) if _remaps_time(m)]
    if timing.order_matters and remapping:
        raise ToonifyError(f"strip {strip.name!r} is a movie slower than the scene inside meta strip "
                           f"{remapping[0]!r}, which reverses, strobes or retimes it: Blender {bpy.app.version_string} "
                           "then shows frames that depend on the playback order, so toonify cannot tell which frame "
                           "shows where. Turn off the sequencer's Raw cache, or toonify it outside the meta")
    try:
        first, last = timing.visible_source_range()
    except TimelineError as exc:
        raise ToonifyError(f"strip {strip.name!r}: {exc}") from None
    return StripPlan(strip.name, scene.name, source, mapping, first, last, scene_fps(scene))


def _with_meta_contents(strips: Sequence) -> Tuple[List, List[str]]:
    """The strips, with each selected meta strip replaced by the unmuted strips inside it (at any depth)."""
    out, metas = [], []
    for strip in strips:
        if strip.type == "META":
            metas.append(strip.name)
            inner, _ = _with_meta_contents([s for s in compat.children(strip) if not s.mute])
            out += inner
        else:
            out.append(strip)
    return out, metas


def plan_strips(scene, strips: Sequence) -> List[StripPlan]:
    """Plans for the movie and image strips among `strips` and inside selected meta strips.

    Sound, effect, scene and other strips are ignored; a result is placed beside its source, inside
    the same meta strip, so the meta's own trims, transform and blending apply to it as well.
    """
    expanded, metas = _with_meta_contents(strips)
    usable, seen = [], set()
    for strip in expanded:
        if strip.type in SUPPORTED_TYPES and strip.name not in seen:
            seen.add(strip.name)
            usable.append(strip)
    if not usable:
        if metas:
            names = ", ".join(repr(m) for m in metas)
            raise ToonifyError(f"meta strip {names} holds no unmuted movie or image strip to toonify")
        raise ToonifyError("select one or more movie or image strips (or meta strips holding them) to toonify")
    return [plan_strip(scene, s) for s in usable]


def engine_params(values: Dict[str, Any]) -> Dict[str, Any]:
    """The panel's values checked against the schema (a bad value becomes a ToonifyError)."""
    try:
        return schema.validate(values)
    except toon_errors.UserError as exc:
        raise ToonifyError(exc.message) from None
