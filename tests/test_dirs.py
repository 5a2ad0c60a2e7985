"""toon_ofx.core.dirs must answer exactly what platformdirs answers (stdlib only)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import platformdirs
import pytest

from toon_ofx.core import dirs

KINDS = ("config", "data", "cache")
ENV = {"config": dirs.ENV_CONFIG, "data": dirs.ENV_DATA, "cache": dirs.ENV_CACHE}


def _ours(kind):
    return getattr(dirs, "user_%s_dir" % kind)()


def _theirs(kind, cls=None):
    if cls is None:
        return getattr(platformdirs, "user_%s_dir" % kind)(appname="toon-ofx", appauthor=False)
    return getattr(cls(appname="toon-ofx", appauthor=False), "user_%s_dir" % kind)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in list(ENV.values()) + ["XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


@pytest.mark.parametrize("kind", KINDS)
def test_same_as_platformdirs_default(clean_env, kind):
    assert _ours(kind) == _theirs(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_same_as_platformdirs_with_xdg(clean_env, tmp_path, kind):
    var = {"config": "XDG_CONFIG_HOME", "data": "XDG_DATA_HOME", "cache": "XDG_CACHE_HOME"}[kind]
    clean_env.setenv(var, str(tmp_path / "xdg"))
    assert _ours(kind) == _theirs(kind)
    clean_env.setenv(var, "relative/path")  # ignored by platformdirs: must be ignored by us too
    assert _ours(kind) == _theirs(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_env_override(clean_env, tmp_path, kind):
    target = tmp_path / ("my-" + kind)
    clean_env.setenv(ENV[kind], str(target))
    assert _ours(kind) == str(target)
    assert getattr(dirs, "user_%s_path" % kind)() == target
    assert not target.exists()
    assert Path(getattr(dirs, "user_%s_dir" % kind)(ensure=True)).is_dir()


@pytest.mark.parametrize("kind", KINDS)
def test_macos_rules(clean_env, kind):
    from platformdirs.macos import MacOS

    clean_env.setattr(sys, "platform", "darwin")
    assert _ours(kind) == _theirs(kind, MacOS)


@pytest.mark.parametrize("kind", KINDS)
def test_windows_rules(clean_env, kind):
    from platformdirs.windows import Windows

    clean_env.setenv("WIN_PD_OVERRIDE_LOCAL_APPDATA", "C:\\Users\\me\\AppData\\Local")
    expected = _theirs(kind, Windows)
    clean_env.setattr(sys, "platform", "win32")
    assert _ours(kind) == expected


def test_stdlib_only():
    tree = ast.parse(Path(dirs.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    assert names <= allowed, names - allowed
