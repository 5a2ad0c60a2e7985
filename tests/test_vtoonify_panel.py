"""The panel with VToonify styles: what they do not take is greyed with the reason, VToonify-D's own
parameters only for VToonify-D, and the new parameters pass through (offscreen, fake engine)."""
from __future__ import annotations

import pytest

from test_panel import QtWidgets, app, wait_until, FakeBackend  # noqa: F401
from toon_ofx.panel.param_form import VTOONIFY_D_TIP, VTOONIFY_TIP
from toon_ofx.panel.window import ToonPanel
from tiny_vtoonify import save_vtoonify, tiny_vtoonify

MODELS = [{"name": "toonify", "kind": "blended", "size": 1024, "swap_res": 64},
          {"name": "vt-t", "kind": "vtoonify", "backbone": "toonify", "size": 1024},
          {"name": "vt-d", "kind": "vtoonify", "backbone": "dualstylegan", "size": 1024}]


def enabled(panel, name):
    form = panel.form
    widget = form.steps_slider if name == "steps" else form.param_widgets[name]["widget"]
    return widget.isEnabled(), widget.toolTip()


def test_vtoonify_styles_grey_what_they_do_not_take_and_say_why(app):
    w = ToonPanel(FakeBackend(), models=MODELS)
    w.form.advanced_box.setChecked(True)   # "More settings" open (a closed box disables what is in it)
    try:
        w.set_params({"model": "vt-t"})
        for name in ("swap_res", "inversion", "steps", "warm_steps", "keyframe_interval", "base_model", "encoder"):
            assert enabled(w, name) == (False, VTOONIFY_TIP), name
        for name in ("style_id", "style_degree", "color_transfer"):
            assert enabled(w, name) == (False, VTOONIFY_D_TIP), name
        assert enabled(w, "feather")[0] and enabled(w, "smoothing")[0] and enabled(w, "batch_size")[0]
        assert w.form.swap_note.text() == VTOONIFY_TIP
        w.set_params({"model": "vt-d", "style_id": 3, "style_degree": 0.25, "color_transfer": True})
        assert all(enabled(w, name)[0] for name in ("style_id", "style_degree", "color_transfer"))
        assert not enabled(w, "steps")[0]
        params = w.params()
        assert (params["model"], params["style_id"], params["style_degree"], params["color_transfer"]) == \
            ("vt-d", 3, 0.25, True)
        w.set_params({"model": "toonify"})
        assert enabled(w, "inversion")[0] and enabled(w, "steps")[0] and enabled(w, "keyframe_interval")[0]
        assert not enabled(w, "swap_res")[0]                    # baked into the blended model, as before
        assert enabled(w, "style_degree") == (False, VTOONIFY_D_TIP)
    finally:
        w.close()


def test_a_browsed_vtoonify_file_is_recognised_off_the_ui_thread(app, tmp_path):
    path = save_vtoonify(tmp_path / "mine_d.pt", tiny_vtoonify("dualstylegan"))
    w = ToonPanel(FakeBackend(), models=MODELS[:1])
    w.form.advanced_box.setChecked(True)
    try:
        w.set_params({"model": str(path)})
        assert wait_until(app, lambda: enabled(w, "style_degree")[0])
        assert enabled(w, "swap_res") == (False, VTOONIFY_TIP)
    finally:
        w.close()
