"""The `toon-ofx` command itself: sub-commands, blend, missing optional packages."""
from __future__ import annotations

import importlib

import pytest
import torch

from toon_ofx import cli

from tiny_models import tiny_generator


def test_every_subcommand_has_help(capsys):
    parser = cli.build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert {"render", "blend", "models", "serve", "farm", "assemble", "panel", "install-resolve-script",
            "dataset", "train"} <= commands
    for command in commands:
        with pytest.raises(SystemExit) as exc:
            cli.main([command, "--help"])
        assert exc.value.code == 0, command
    capsys.readouterr()


def test_missing_optional_package_gives_a_clear_error(monkeypatch, capsys):
    real_import = importlib.import_module

    def fake_import(name, package=None):
        if name == ".panel.app":
            raise ModuleNotFoundError("No module named 'PySide6'", name="PySide6")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    assert cli.main(["panel", "clip.mp4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("toon-ofx: error: `toon-ofx panel` needs the PySide6 package") and err.count("\n") == 1


def test_blend_writes_a_loadable_checkpoint_and_never_overwrites(tmp_path, capsys):
    from engine.generator.checkpoints import load_generator, save_generator

    save_generator(tmp_path / "base.pt", tiny_generator(32, seed=0))
    save_generator(tmp_path / "toon.pt", tiny_generator(32, seed=1))
    out = tmp_path / "blended.pt"
    assert cli.main(["blend", str(tmp_path / "base.pt"), str(tmp_path / "toon.pt"), "-o", str(out),
                     "--swap-res", "8"]) == 0
    blended, toon, base = (load_generator(tmp_path / n) for n in ("blended.pt", "toon.pt", "base.pt"))
    assert torch.equal(blended.conv1.conv.weight, toon.conv1.conv.weight)       # 4x4: toon
    assert torch.equal(blended.convs[2].conv.weight, base.convs[2].conv.weight)  # 16x16: base
    before = out.read_bytes()
    assert cli.main(["blend", str(tmp_path / "base.pt"), str(tmp_path / "toon.pt"), "-o", str(out)]) == 2
    assert out.read_bytes() == before
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("swap_res", ["3", "64"])
def test_blend_bad_swap_resolution(tmp_path, capsys, swap_res):
    from engine.generator.checkpoints import save_generator

    save_generator(tmp_path / "base.pt", tiny_generator(32, seed=0))
    code = cli.main(["blend", str(tmp_path / "base.pt"), str(tmp_path / "base.pt"), "-o",
                     str(tmp_path / "x.pt"), "--swap-res", swap_res])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("toon-ofx: error:") and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()
