"""The models the engine knows, for the panel's Style and Base model pickers (like the Qt panel's list).

The engine answers `GET /v1/models` (the model manifest, with what is installed); `refresh()` keeps
that list here, and a menu next to each field offers it (ui.py; each entry runs
`toon_ofx.pick_model`). A model file anywhere on disk is chosen with the field's own file browser
(the property is a file path; a name from the list works too). The list is filled by the refresh
button and by Check Engine (both start the engine if needed); until then the menu says so.
"""
from __future__ import annotations

from typing import Any, Dict, List

#: model kinds each field offers
KINDS = {"model": ("toon", "blended"), "base_model": ("base",)}

_MODELS: List[Dict[str, Any]] = []


def refresh(client) -> List[Dict[str, Any]]:
    """Ask the engine for its models and keep them for the pickers; returns them."""
    global _MODELS
    models = client.models()
    _MODELS = [m for m in models if isinstance(m, dict) and m.get("name")]
    return list(_MODELS)


def listed() -> List[Dict[str, Any]]:
    return list(_MODELS)


def describe(model: Dict[str, Any]) -> str:
    """A tooltip: title, resolution, licence, and how to get it when it is not installed."""
    parts = [str(model.get("title") or model["name"])]
    if model.get("resolution"):
        parts.append(f"{model['resolution']} px")
    if model.get("licence"):
        parts.append(f"licence: {model['licence']}")
    if not model.get("installed", True):
        parts.append(f"not installed: toon-ofx models pull {model['name']}")
    return "; ".join(parts)


def for_field(target: str) -> List[Dict[str, Any]]:
    """The listed models a field (`model`, `base_model`) can take."""
    kinds = KINDS.get(target, ())
    return [m for m in _MODELS if m.get("kind") in kinds]


def find(name: str) -> Dict[str, Any]:
    return next((m for m in _MODELS if m.get("name") == name), {"name": name})
