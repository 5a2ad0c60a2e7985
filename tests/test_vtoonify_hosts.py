"""Hosts pass a VToonify style and its parameters through: Resolve's `--set` (validated by the schema the
bridge reads), the engine process's JSON (through the client's submit) — Blender's properties are generated from
the same schema (tests/test_blender_addon.py checks every parameter there, these included)."""
from __future__ import annotations

from test_resolve_script import FakeEngine, edit, private_config, sequence_frames  # noqa: F401
from toon_ofx.core import params as schema
from toon_ofx.hosts.resolve.script import script_main

VT = {"model": "vtoonify-d-cartoon", "style_id": 4, "style_degree": 0.3, "color_transfer": True}


def test_resolve_sends_the_vtoonify_parameters(edit, tmp_path):
    resolve, *_ = edit
    engine = FakeEngine()
    sets = []
    for name, value in VT.items():
        sets += ["--set", f"{name}={str(value).lower() if isinstance(value, bool) else value}"]
    code = script_main({"resolve": resolve}, argv=["--direct", "--track", "1", *sets, "--output-dir",
                                                    str(tmp_path / "out"), "--no-report"],
                       log=lambda line: None, client=engine)
    assert code == 0
    for job in engine.jobs.values():
        assert {k: job["params"][k] for k in VT} == VT


def test_the_schema_offers_the_vtoonify_parameters_to_every_host():
    names = [p["name"] for p in schema.schema()]
    assert {"style_id", "style_degree", "color_transfer"} <= set(names)
    degree = schema.BY_NAME["style_degree"]
    assert (degree.default, degree.minimum, degree.maximum) == (0.5, 0.0, 1.0)
    assert "VToonify-D" in degree.help
