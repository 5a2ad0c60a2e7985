"""The add-on's one connection to the engine: a session while Blender holds it, goodbye when it goes.

`connect()` hands out the connected client, reusing it while its engine answers, and otherwise finds
the running engine or starts one with the Engine Python preference (`EngineClient.connect`, with the
idle stop from the preferences). It then opens a session (`hello`): an engine started on demand
stays up while Blender holds one (every request renews it) and stops on its own once no session and
no job is left and it has been idle for its timeout. `goodbye()` ends the session at once: the
add-on calls it when it is disabled (unregister) and when Blender exits (atexit). No bpy here: the
submit thread calls `connect()`.
"""
from __future__ import annotations

import os
import threading
from typing import Optional

from .engine_link import client_module

SESSION_NAME = "Blender"

_lock = threading.Lock()
_client = None


def connect(python: Optional[str], wait: float, idle_timeout: Optional[float]):
    """The connected EngineClient (starting the engine with `python` when none runs and one is given)."""
    global _client
    client = client_module()
    with _lock:
        if _client is not None:
            try:
                _client.hello(name=SESSION_NAME)  # a fresh session: the last one may have lapsed while idle
                return _client
            except client.EngineError:  # the engine stopped (idle) or went away: find or start another
                _client = None
        if not python and not os.environ.get("TOON_OFX_PYTHON"):
            # Without an engine Python the client would try Blender's own Python, which has no toon-ofx.
            try:
                engine = client.EngineClient.connect(start=False)
            except client.EngineUnavailable:
                raise client.EngineUnavailable(
                    "no toon-ofx engine is running, and no Engine Python is set to start one: set it in "
                    "Preferences > Add-ons > toon-ofx (a Python with toon-ofx installed), or run "
                    "'toon-ofx serve'") from None
        else:
            engine = client.EngineClient.connect(python=python, start=True, wait=wait, idle_timeout=idle_timeout)
        try:
            engine.hello(name=SESSION_NAME)
        except client.EngineError:  # an engine without sessions: it just stays up
            pass
        _client = engine
        return engine


def goodbye() -> None:
    """End the session (an engine started on demand then stops once it has no work)."""
    global _client
    with _lock:
        engine, _client = _client, None
    if engine is not None:
        try:
            engine.goodbye()
        except Exception:  # the engine is gone already: nothing to end
            pass
