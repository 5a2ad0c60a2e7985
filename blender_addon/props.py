"""Blender properties generated from toon-ofx's parameter schema (``toon_ofx/params.py``).

Nothing here re-types a name, default, range or choice list: each schema
parameter becomes one Blender property of the same name, and `values()` turns
the property group back into the dict the engine validates.
"""
from __future__ import annotations

import bpy

from .engine_link import params as schema

#: Parameters that take a model: a name the engine knows, or a file (drawn with a file browser).
MODEL_FIELDS = ("model", "base_model")

#: Shown in the panel's main section, in this order; everything else goes under "Advanced".
MAIN = ("model", "inversion", "swap_res", "steps", "refine_steps", "warm_steps", "output_kind")
#: Integer parameters drawn as sliders.
SLIDERS = ("steps", "refine_steps", "warm_steps")
#: Friendlier labels for a few choice values (the value sent stays the schema's).
_CHOICE_LABELS = {"frame": "Full frame", "overlay": "Overlay (RGBA)", "w": "W", "w+": "W+", "projection": "Projection",
                  "encoder": "Encoder (one pass, fast)", "encoder+projection": "Encoder + refinement"}


def _enum_items(param):
    return [(str(v), _CHOICE_LABELS.get(str(v), str(v)), f"{param.label}: {v}") for v in param.choices]


def property_for(param):
    """The bpy property definition for one schema parameter."""
    common = {"name": param.label, "description": param.help}
    if param.choices is not None:
        return bpy.props.EnumProperty(items=_enum_items(param), default=str(param.default), **common)
    if param.type is bool:
        return bpy.props.BoolProperty(default=bool(param.default), **common)
    if param.type is int:
        limits = {}
        if param.minimum is not None:
            limits["min"] = int(param.minimum)
        if param.maximum is not None:
            limits["max"] = int(param.maximum)
        return bpy.props.IntProperty(default=int(param.default), **limits, **common)
    if param.type is float:
        limits = {}
        if param.minimum is not None:
            limits["min"] = float(param.minimum)
        if param.maximum is not None:
            limits["max"] = float(param.maximum)
        return bpy.props.FloatProperty(default=float(param.default), **limits, **common)
    if param.name in MODEL_FIELDS:
        return bpy.props.StringProperty(default=str(param.default), subtype="FILE_PATH", **common)
    return bpy.props.StringProperty(default=str(param.default), **common)


def make_property_group():
    """A PropertyGroup class with one property per schema parameter."""
    annotations = {p.name: property_for(p) for p in schema.PARAMS}
    return type("TOONOFX_PG_params", (bpy.types.PropertyGroup,), {
        "__annotations__": annotations,
        "__doc__": "toon-ofx effect parameters (generated from toon_ofx.core.params)",
    })


def values(group) -> dict:
    """The property group's values as schema types (enum strings back to ints etc.)."""
    out = {}
    for p in schema.PARAMS:
        value = getattr(group, p.name)
        if p.choices is not None:
            # EnumProperty holds the identifier string; map it back to the schema's value.
            value = {str(c): c for c in p.choices}[value]
        elif p.type is float:
            # Blender stores floats in single precision: 0.1 reads back as 0.10000000149011612.
            # Its 7 significant digits are what the user set.
            value = float(f"{value:.7g}")
        elif p.name in MODEL_FIELDS and value.startswith("//"):
            value = bpy.path.abspath(value)  # the file browser's path relative to the .blend file
        out[p.name] = value
    return out


def advanced_names():
    return [p.name for p in schema.PARAMS if p.name not in MAIN]
