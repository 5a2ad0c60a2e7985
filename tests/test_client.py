"""toon_ofx/client.py: stdlib only, vendorable as one file, starts the engine on demand."""
from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_jobs import CLIP, REPO, make_fake_render, needs_clip  # noqa: E402

from toon_ofx.client import EngineBusy, EngineClient, EngineError, EngineUnavailable  # noqa: E402
from toon_ofx.service.server import Server  # noqa: E402

CLIENT = REPO / "toon_ofx" / "client.py"
HEAVY = ("numpy", "torch", "cv2", "scipy", "PIL", "engine", "platformdirs")


def run_py(code, *, python=sys.executable, flags=("-S", "-I"), env=None, cwd=None):
    """Run `code` in a fresh interpreter without site-packages; returns its stdout (asserts exit 0)."""
    proc = subprocess.run([python, *flags, "-c", code], capture_output=True, text=True, timeout=60,
                          env=env if env is not None else _clean_env(), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOON_OFX_", "XDG_", "PYTHON"))}
    env.update(extra)
    return env


def _pythons():
    """This interpreter plus an installed Python 3.9 (the oldest the client supports), if there is one."""
    found = [sys.executable]
    for pattern in ("~/.pyenv/versions/3.9*/bin/python3.9", "/usr/bin/python3.9", "/usr/local/bin/python3.9"):
        found += sorted(glob.glob(os.path.expanduser(pattern)))[:1]
    return list(dict.fromkeys(found))


# --------------------------------------------------------------------------- stdlib only

IMPORT_CHECK = """
import json, sys
sys.path.insert(0, {root!r})
import {module} as c
assert c.EngineClient and c.EngineError and c.EngineUnavailable
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})
mine = sorted(m for m in sys.modules if m.split('.')[0] in ('toon_ofx', 'toon_client'))
site = [p for p in sys.path if 'site-packages' in p or 'dist-packages' in p]
print(json.dumps({{"heavy": heavy, "mine": mine, "site": site, "config": c.config_dir(), "data": c.data_dir(),
                  "inline": c._dirs is None, "version": list(sys.version_info[:2])}}))
"""


@pytest.mark.parametrize("python", _pythons())
def test_client_imports_without_site_packages(python):
    """`python -S -I`: no site-packages at all, so numpy/torch could not be imported even if asked for."""
    out = json.loads(run_py(IMPORT_CHECK.format(root=str(REPO), module="toon_ofx.client", heavy=HEAVY),
                            python=python))
    assert out["site"] == [] and out["heavy"] == []
    assert out["mine"] == ["toon_ofx", "toon_ofx.client", "toon_ofx.core", "toon_ofx.core.dirs"]
    assert not out["inline"]


@pytest.mark.parametrize("python", _pythons())
def test_client_works_vendored_as_one_file(tmp_path, python):
    """Copied alone next to an add-on's code: the inline folder lookup agrees with toon_ofx.core.dirs."""
    addon = tmp_path / "addon"
    addon.mkdir()
    shutil.copy(CLIENT, addon / "toon_client.py")
    home = tmp_path / "home"
    home.mkdir()
    envs = [_clean_env(HOME=str(home)),
            _clean_env(HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xc"), XDG_DATA_HOME=str(tmp_path / "xd")),
            _clean_env(HOME=str(home), XDG_CONFIG_HOME="relative/ignored"),
            _clean_env(HOME=str(home), TOON_OFX_CONFIG_DIR=str(tmp_path / "c"), TOON_OFX_DATA_DIR="~/d")]
    for env in envs:
        vendored = json.loads(run_py(IMPORT_CHECK.format(root=str(addon), module="toon_client", heavy=HEAVY),
                                     python=python, env=env))
        assert vendored["inline"] and vendored["heavy"] == [] and vendored["mine"] == ["toon_client"]
        reference = json.loads(run_py(
            "import json, sys; sys.path.insert(0, %r); from toon_ofx.core import dirs; "
            "print(json.dumps([dirs.user_config_dir(), dirs.user_data_dir()]))" % str(REPO), env=env))
        assert [vendored["config"], vendored["data"]] == reference, env
        import platformdirs  # the reference the dirs module follows (no override set)

        if "TOON_OFX_CONFIG_DIR" not in env:
            theirs = json.loads(run_py(
                "import json, platformdirs as p; print(json.dumps([p.user_config_dir('toon-ofx', False), "
                "p.user_data_dir('toon-ofx', False)]))", flags=(), env=env))
            assert reference == theirs, platformdirs.__version__


def test_importtime_shows_no_numpy_or_torch():
    """Even where numpy and torch are installed, importing the client does not pull them in."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import toon_ofx.client"],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    modules = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "toon_ofx" in modules
    assert not modules & set(HEAVY), modules & set(HEAVY)


def test_client_source_is_python39_syntax():
    for path in (CLIENT, REPO / "toon_ofx" / "core" / "dirs.py"):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))
    tree = ast.parse(CLIENT.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." + (node.module or "") if node.level else node.module.split(".")[0])
    allowed_local = {".core"}  # `from .core import dirs` only
    local = {m for m in imported if m.startswith(".")}
    assert local <= allowed_local, local
    assert all(m in sys.stdlib_module_names or m == "__future__" for m in imported - local), imported


# --------------------------------------------------------------------------- talking to an engine

@pytest.fixture
def dirs_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TOON_OFX_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TOON_OFX_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def engine(dirs_env):
    server = Server(render_fn=make_fake_render(delay=0.01), device_resolver=lambda name: "cpu",
                    model_check=None).start()
    yield server
    server.shutdown()


def test_client_finds_engine_via_server_json(engine):
    client = EngineClient()
    assert client.url == engine.url and client.token == engine.token
    assert client.health()["pid"] == os.getpid()
    assert EngineClient.connect(start=False).url == engine.url


@needs_clip
def test_errors_name_the_field(engine, tmp_path):
    client = EngineClient()
    with pytest.raises(EngineError) as err:
        client.submit(str(tmp_path / "missing.mp4"), output_folder=str(tmp_path / "o"))
    assert err.value.status == 400 and err.value.field == "source" and "does not exist" in str(err.value)
    with pytest.raises(EngineError) as err:
        client.submit(str(CLIP), params={"swap_res": 3}, output_folder=str(tmp_path / "o"))
    assert (err.value.status, err.value.field) == (422, "params.swap_res")
    with pytest.raises(EngineError) as err:
        client.job("nope")
    assert err.value.status == 404
    with pytest.raises(EngineError) as err:
        EngineClient(engine.url, "wrong-token").jobs()
    assert err.value.status == 401 and not isinstance(err.value, EngineUnavailable)


@needs_clip
def test_relative_paths_are_made_absolute_and_wait_times_out(engine, tmp_path, monkeypatch):
    monkeypatch.chdir(CLIP.parent)
    client = EngineClient()
    job = client.submit(CLIP.name, frames=(0, 40), output_folder=os.path.relpath(tmp_path / "o"))
    # chdir() lands in the real folder, so compare without symlinks in the way.
    assert job["source"] == str(CLIP.resolve()) and job["output"]["folder"] == str((tmp_path / "o").resolve())
    with pytest.raises(EngineError, match="still"):
        client.wait(job["id"], poll=0.01, timeout=0.05)
    assert client.wait(job["id"], poll=0.05, timeout=60)["state"] == "done"


def test_proxy_settings_are_ignored(engine, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert EngineClient().health()["service"] == "toon-ofx"


def test_unreachable_engine(dirs_env):
    import socket

    with pytest.raises(EngineUnavailable, match="no toon-ofx engine is running"):
        EngineClient()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(EngineUnavailable):
        EngineClient(f"http://127.0.0.1:{port}", "t", timeout=2).health()
    (dirs_env / "config").mkdir()
    (dirs_env / "config" / "server.json").write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": 1}))
    with pytest.raises(EngineUnavailable, match="token"):
        EngineClient()
    with pytest.raises(EngineUnavailable):
        EngineClient.connect(start=False)


@pytest.mark.skipif(os.name != "posix", reason="pid liveness is checked on POSIX")
def test_token_never_sent_to_a_dead_engines_port(dirs_env):
    """After kill -9, server.json still names the old port; whoever listens there now must not get the token."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    try:
        (dirs_env / "config").mkdir()
        (dirs_env / "config" / "token").write_text("x" * 43)
        (dirs_env / "config" / "server.json").write_text(json.dumps(
            {"url": f"http://127.0.0.1:{listener.getsockname()[1]}", "pid": dead.pid}))
        with pytest.raises(EngineUnavailable, match="is not running"):
            EngineClient()
        with pytest.raises(EngineUnavailable):
            EngineClient.connect(start=False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_connect_reports_a_token_mismatch(engine, dirs_env):
    (dirs_env / "config" / "token").write_text("y" * 43)
    with pytest.raises(EngineError) as err:
        EngineClient.connect(python=sys.executable, wait=5)
    assert err.value.status == 401 and "token" in str(err.value)


# --------------------------------------------------------------------------- starting the engine

def _stop(pid):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of this process counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


SERVER_ENV = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}


@needs_clip
@pytest.mark.skipif(os.name != "posix", reason="uses POSIX sessions and signals")
def test_connect_starts_the_engine_on_demand(dirs_env, tmp_path):
    pids = set()
    try:
        client = EngineClient.connect(python=sys.executable, server_args=["--render-fn", "test_jobs:fake_render"],
                                      env=SERVER_ENV, wait=90)
        pid = client.health()["pid"]
        pids.add(pid)
        assert pid != os.getpid() and os.getsid(pid) == pid, "the engine runs detached in its own session"
        assert client.url.startswith("http://127.0.0.1:")
        log = tmp_path / "data" / "logs" / "server.log"
        assert "listening on" in log.read_text()
        job = client.submit(str(CLIP), frames=(0, 3), output_folder=str(tmp_path / "out"))
        assert client.wait(job["id"], poll=0.05, timeout=60)["state"] == "done"
        again = EngineClient.connect(python=sys.executable, wait=30)
        assert again.health()["pid"] == pid, "a running engine is reused, not started twice"
        client.shutdown()
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
        with pytest.raises(EngineUnavailable):
            EngineClient.connect(start=False)
        # several add-ons asking at once still end up with one engine
        clients, errors = [], []

        def connect():
            try:
                clients.append(EngineClient.connect(python=sys.executable, env=SERVER_ENV, wait=90))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=connect) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        started = {c.health()["pid"] for c in clients}
        pids |= started
        assert len(started) == 1
        # the job finished before the restart is still there
        assert clients[0].job(job["id"])["state"] == "done"
    finally:
        for pid in pids:
            _stop(pid)


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as the engine's Python")
def test_connect_reports_an_engine_that_cannot_start(dirs_env, tmp_path):
    fake = tmp_path / "python-without-toon-ofx"
    fake.write_text("#!/bin/sh\necho 'No module named toon_ofx' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(EngineUnavailable, match="No module named toon_ofx") as err:
        EngineClient.connect(python=str(fake), wait=20)
    assert "exit code 1" in str(err.value)
    with pytest.raises(EngineUnavailable, match="cannot start"):
        EngineClient.connect(python=str(tmp_path / "no-such-python"), wait=5)


# --------------------------------------------------------------------------- the token goes only to the engine

class _Impostor:
    """An HTTP server on a loopback port that records every request; `relay_to` forwards challenges there."""

    def __init__(self, relay_to=None, host="127.0.0.1", port=0):
        import http.server
        import socket

        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append((self.command, self.path, dict(self.headers)))
                answer = {"service": "toon-ofx", "proof": "0" * 64, "jobs": [], "params": []}
                if self.path == "/v1/challenge" and relay_to is not None:
                    import urllib.request

                    req = urllib.request.Request(relay_to + self.path, data=body, method="POST",
                                                 headers={"Content-Type": "application/json"})
                    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                    answer = json.loads(opener.open(req, timeout=10).read())
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("ImpostorServer", (http.server.ThreadingHTTPServer,), {"address_family": family})
        self.server = server_class((host, port), Handler)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_token_never_sent_to_an_impostor_on_a_stale_port(dirs_env):
    """server.json names a port some other program now holds while the recorded pid is alive (pid reuse):
    the client asks it to prove it holds the token and never sends the token."""
    (dirs_env / "config").mkdir(mode=0o700)
    (dirs_env / "config" / "token").write_text("s" * 43)
    impostor = _Impostor()
    try:
        (dirs_env / "config" / "server.json").write_text(json.dumps({"url": impostor.url, "pid": os.getpid()}))
        for attempt in (lambda: EngineClient().health(), lambda: EngineClient().jobs(),
                        lambda: EngineClient.connect(start=False)):
            with pytest.raises(EngineError) as err:
                attempt()
            assert err.value.status == 401 and "could not prove" in str(err.value)
        assert impostor.requests and all(path == "/v1/challenge" for _, path, _ in impostor.requests)
        assert not any("s" * 43 in json.dumps(headers) for _, _, headers in impostor.requests)
    finally:
        impostor.close()


def test_a_relayed_proof_is_refused(engine, dirs_env):
    """An impostor that forwards the challenge to the real engine gets a proof for the engine's port, not its own."""
    impostor = _Impostor(relay_to=engine.url)
    try:
        with pytest.raises(EngineError) as err:
            EngineClient(impostor.url, engine.token).health()
        assert err.value.status == 401
        assert not any(engine.token in json.dumps(headers) for _, _, headers in impostor.requests)
        assert EngineClient(engine.url, engine.token).health()["service"] == "toon-ofx"
    finally:
        impostor.close()


def test_non_loopback_urls_need_allow_remote(dirs_env):
    for url in ("http://192.0.2.1:8080", "http://example.com:80", "http://[2001:db8::1]:80"):
        with pytest.raises(EngineUnavailable, match="not a loopback address"):
            EngineClient(url, "t" * 43)
        assert EngineClient(url, "t" * 43, allow_remote=True).url == url
    for url in ("ftp://127.0.0.1:21", "127.0.0.1:80"):
        with pytest.raises(EngineUnavailable):
            EngineClient(url, "t" * 43)
    (dirs_env / "config").mkdir(mode=0o700)
    (dirs_env / "config" / "token").write_text("t" * 43)
    (dirs_env / "config" / "server.json").write_text(json.dumps({"url": "http://192.0.2.1:80", "pid": os.getpid()}))
    with pytest.raises(EngineUnavailable, match="not a loopback address"):
        EngineClient()
    assert EngineClient("http://localhost:1", "t" * 43).url == "http://localhost:1"


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_the_client_creates_private_folders(dirs_env, tmp_path):
    """Starting an engine creates the data and log folders 0700 and the log 0600 (they name the user's media)."""
    fake = tmp_path / "python-that-fails"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(EngineUnavailable):
        EngineClient.connect(python=str(fake), wait=20)
    for folder in (tmp_path / "data", tmp_path / "data" / "logs"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert (tmp_path / "data" / "logs" / "server.log").stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- models

def test_models_lists_the_installed_models(engine, tmp_path, monkeypatch):
    """GET /v1/models: every manifest model with kind, resolution, licence and whether it is installed."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "ffhq-cartoon-blended-64.pkl").write_bytes(b"x")   # the toonify file (content is not checked)
    monkeypatch.setenv("TOON_OFX_MODELS", str(folder))
    models = {m["name"]: m for m in EngineClient().models()}
    toonify = models["toonify"]
    assert toonify["installed"] and toonify["path"] == str(folder / "ffhq-cartoon-blended-64.pkl")
    assert (toonify["kind"], toonify["resolution"]) == ("blended", 1024) and "Nvidia" in toonify["licence"]
    assert not models["toon-cartoon"]["installed"] and models["toon-cartoon"]["path"] is None
    assert {m["kind"] for m in models.values()} >= {"base", "toon", "blended", "perceptual", "landmarks"}


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.2", pytest.param("::1", marks=pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback"))])
def test_a_proof_relayed_from_another_address_on_the_engines_port_is_refused(engine, dirs_env, host):
    """An impostor on 127.0.0.2:P or [::1]:P (P: the engine's own port) forwards the nonce to the real engine:
    the proof names the address the engine was reached at, not the one the client connected to, so the client
    never sends the token."""
    impostor = _Impostor(relay_to=engine.url, host=host, port=engine.port)
    try:
        with pytest.raises(EngineError) as err:
            EngineClient(impostor.url, engine.token).health()
        assert err.value.status == 401 and "could not prove" in str(err.value)
        assert [path for _, path, _ in impostor.requests] == ["/v1/challenge"]   # relayed, then nothing more
        assert not any(engine.token in json.dumps(headers) for _, _, headers in impostor.requests)
        assert EngineClient(engine.url, engine.token).health()["service"] == "toon-ofx"
        assert EngineClient(engine.url.replace("127.0.0.1", "localhost"), engine.token).health()["pid"] == os.getpid()
    finally:
        impostor.close()


class _Silent:
    """A loopback port that accepts connections and never answers (an engine too busy to reply)."""

    def __init__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as the engine's Python")
def test_a_slow_engine_is_never_taken_for_no_engine(dirs_env, tmp_path):
    """server.json names a live engine whose port takes connections but answers nothing in time: the client
    says the engine is busy; it never calls it "not a toon-ofx engine", and connect() starts no second one."""
    (dirs_env / "config").mkdir(mode=0o700)
    (dirs_env / "config" / "token").write_text("s" * 43)
    silent = _Silent()
    started = tmp_path / "second-engine-started"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\ntouch {started}\nexit 1\n")
    python.chmod(0o755)
    try:
        (dirs_env / "config" / "server.json").write_text(json.dumps({"url": silent.url, "pid": os.getpid()}))
        for attempt in (lambda: EngineClient(timeout=0.5).health(),
                        lambda: EngineClient.connect(python=str(python), wait=1.5, timeout=0.5)):
            with pytest.raises(EngineBusy) as err:
                attempt()
            assert "busy" in str(err.value) and "not a toon-ofx engine" not in str(err.value)
            assert not isinstance(err.value, EngineUnavailable)
        assert not started.exists()
    finally:
        silent.close()
