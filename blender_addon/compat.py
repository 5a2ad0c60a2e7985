"""Strip API differences between Blender 4.2 LTS and 5.x, in one place.

Blender 4.2/4.3 call strips "sequences" (``SequenceEditor.sequences``,
``sequences_all``, ``bpy.types.Sequence``, ``context.selected_sequences``,
``MetaSequence.sequences``). 4.4 added the "strips" names beside them and 5.0
dropped the old ones (``strips``, ``strips_all``, ``bpy.types.Strip``,
``context.selected_strips``). 5.0 also lets the sequencer show a scene other
than the window's (``context.sequencer_scene``). ``frame_duration`` changed
meaning: see `content_length`. And 4.5 rewrote the sequencer's caches: see
`source_cache_keys_truncate`.

Nothing outside this module may touch those names.
"""
from __future__ import annotations

import bpy


def _first_attr(obj, *names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    raise AttributeError(f"{type(obj).__name__} has none of {', '.join(names)}")


def sequencer_scene(context):
    """The scene whose sequencer the user works in (5.0+: the workspace's sequencer scene)."""
    return getattr(context, "sequencer_scene", None) or context.scene


def sequence_editor(scene, create: bool = False):
    """The scene's sequence editor, or None (created when `create`)."""
    if create:
        return scene.sequence_editor_create()
    return scene.sequence_editor


def top_level(sed):
    """The editor's top-level strip collection (has new_movie/new_image/...)."""
    return _first_attr(sed, "strips", "sequences")


def all_strips(sed):
    """Every strip, including those inside meta strips."""
    return _first_attr(sed, "strips_all", "sequences_all")


def find_strip(scene, name: str):
    """The strip called `name` in `scene`'s sequencer (at any depth), or None."""
    sed = sequence_editor(scene)
    if sed is None:
        return None
    return all_strips(sed).get(name)


def children(meta):
    """A meta strip's own strip collection."""
    return _first_attr(meta, "strips", "sequences")


def enclosing_metas(strip) -> list:
    """The meta strips `strip` sits in, innermost first."""
    metas = []
    parent_meta = getattr(strip, "parent_meta", None)
    meta = parent_meta() if callable(parent_meta) else None
    while meta is not None:
        metas.append(meta)
        meta = meta.parent_meta() if callable(getattr(meta, "parent_meta", None)) else None
    return metas


def parent_collection(sed, strip):
    """The collection that holds `strip`: its meta strip's, or the top level."""
    parent_meta = getattr(strip, "parent_meta", None)
    meta = parent_meta() if callable(parent_meta) else None
    return children(meta) if meta is not None else top_level(sed)


def selected_strips(context, scene=None) -> list:
    """The selected strips, from the context when it has them, else by each strip's flag.

    Headless (``bpy`` as a module, scripts) the context has no selected-strips
    member; the strips' ``select`` flags still say what is selected.
    """
    for name in ("selected_strips", "selected_sequences"):
        value = getattr(context, name, None)
        if value is not None:
            return list(value)
    scene = scene or sequencer_scene(context)
    sed = sequence_editor(scene) if scene is not None else None
    if sed is None:
        return []
    # Only strips of the level being edited: the top level unless inside a meta.
    meta_stack = list(getattr(sed, "meta_stack", []) or [])
    level = children(meta_stack[-1]) if meta_stack else top_level(sed)
    return [s for s in level if s.select]


def new_image(collection, name: str, filepath: str, channel: int, frame_start: int):
    """Add an image strip (4.2: ``new_image`` on the sequences collection; same call on 5.x)."""
    return collection.new_image(name=name, filepath=filepath, channel=channel, frame_start=frame_start)


def new_movie(collection, name: str, filepath: str, channel: int, frame_start: int):
    """Add a movie strip."""
    return collection.new_movie(name=name, filepath=filepath, channel=channel, frame_start=frame_start)


def content_length(strip) -> int:
    """Timeline frames the strip's content spans, before its handles (trims or hold frames) apply.

    5.0's ``frame_duration`` is that length. 4.2's is the media's frame count, even
    for a movie that "Adjust Playback Rate" stretches or squeezes on the timeline
    (a 72-frame 30 fps movie spans 57 frames of a 24 fps scene; 4.2 says 72). The
    handles give the same number on both: the content runs from
    ``frame_final_start - frame_offset_start`` to ``frame_final_end + frame_offset_end``.
    """
    span = (strip.frame_final_end + strip.frame_offset_end) - (strip.frame_final_start - strip.frame_offset_start)
    return int(round(span))


def source_cache_keys_truncate(scene) -> bool:
    """True when a slowed-down movie's frames depend on the raw (source image) cache.

    Blender 4.5 replaced the sequencer caches; its source image cache
    (sequencer/intern/cache/source_image_cache.cc) files a decoded movie frame
    under the truncated frame index while render.cc decodes the rounded one
    (see timeline.py). Checked on 5.0.1 against its renderer; 4.2 has no such
    cache. Only while the raw cache is on (``SequenceEditor.use_cache_raw``).
    """
    sed = sequence_editor(scene)
    return bpy.app.version >= (4, 5, 0) and bool(getattr(sed, "use_cache_raw", False))


def is_retimed(strip) -> bool:
    """True when the strip has retiming keys (a speed change may be in effect).

    4.0+ keeps speed changes as retiming keys; without keys frames play 1:1.
    """
    keys = getattr(strip, "retiming_keys", None)
    return keys is not None and len(keys) > 0


def redraw_sequencer(context) -> None:
    """Ask every sequencer area (and the status bar) to redraw."""
    wm = getattr(context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type in ("SEQUENCE_EDITOR", "STATUSBAR"):
                area.tag_redraw()
