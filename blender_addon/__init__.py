"""toon-ofx for Blender's Video Sequencer: toonify the faces in movie and image strips.

A Blender 4.2+ extension (see blender_manifest.toml). It talks to the local
toon-ofx engine process over HTTP with toon-ofx's stdlib client and imports
nothing heavier.
"""
from __future__ import annotations

import atexit

import bpy

from . import connection, operators, props, ui

_classes = []


def register():
    group = props.make_property_group()
    for cls in (group, *operators.CLASSES, *ui.CLASSES):
        bpy.utils.register_class(cls)
        _classes.append(cls)
    bpy.types.Scene.toon_ofx = bpy.props.PointerProperty(type=group)
    atexit.register(connection.goodbye)  # Blender exiting: let the engine go


def unregister():
    active = operators.active_run()
    if active is not None:
        active.request_cancel()
    atexit.unregister(connection.goodbye)
    connection.goodbye()
    del bpy.types.Scene.toon_ofx
    while _classes:
        bpy.utils.unregister_class(_classes.pop())
