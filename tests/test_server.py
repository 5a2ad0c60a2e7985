"""The engine process over real HTTP on a free loopback port.

In-process servers (threads) with the stand-in renderer from test_jobs for auth, bad input,
queueing, cancel and preview; real subprocesses for `python -m toon_ofx serve`, kill -9 and
resume, and SIGTERM; one end-to-end job through the real toon_ofx.core.render with tiny models.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_jobs import CLIP, INTERVALS, REPO, fake_render, needs_clip  # noqa: E402

from toon_ofx.client import EngineClient, EngineError  # noqa: E402
from toon_ofx.core.errors import UserError  # noqa: E402
from toon_ofx.service.instance import AlreadyRunning, ensure_token  # noqa: E402
from toon_ofx.service.preview import encode_png  # noqa: E402
from toon_ofx.service.server import Server  # noqa: E402

PY = sys.executable
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- helpers

def call(url, path, method="GET", body=None, token=None, headers=None, raw=None, timeout=10):
    """(status, JSON answer) for one request with exactly the headers given."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs.setdefault("Authorization", f"Bearer {token}")
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url + path, data=data, headers=hdrs, method=method)
    try:
        with NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def dirs_env(tmp_path):
    return {"TOON_OFX_CONFIG_DIR": str(tmp_path / "config"), "TOON_OFX_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def engine(tmp_path):
    fake = {"delay": 0.03}   # seconds per frame of the stand-in renderer; tests may change it

    def render(request, progress=None, cancel=None):
        return fake_render(request, progress, cancel, delay=fake["delay"])

    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=render,
                    preview_fn=_fake_preview, model_check=None)
    server.fake = fake
    server.start()
    server.client = EngineClient(server.url, server.token)
    yield server
    server.shutdown()


@pytest.fixture
def clip(tmp_path):
    """A private copy of the test clip, so tests can prove it is never written."""
    if not CLIP.exists():
        pytest.skip(f"test media {CLIP} missing")
    src = tmp_path / "media" / "clip.mp4"
    src.parent.mkdir()
    shutil.copy(CLIP, src)
    return src


def _fake_preview(source, frame, params):
    import numpy as np

    if params["swap_res"] == 1024:
        raise UserError("swap_res 1024 is above the model's resolution 256", field="swap_res")

    original = np.zeros((8, 12, 3), np.uint8)
    original[..., 0] = frame
    stylised = np.full((8, 12, 4), 200, np.uint8)
    return original, stylised, 1


def fingerprint(path):
    st = os.stat(path)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size


def start_subprocess_server(tmp_path, *extra, env=None, module="toon_ofx"):
    """`python -m toon_ofx serve --port 0` with the stand-in renderer; returns (process, url)."""
    full_env = dict(os.environ, **dirs_env(tmp_path), PYTHONPATH=os.pathsep.join(
        [str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    info = tmp_path / "config" / "server.json"
    old = info.stat().st_mtime_ns if info.exists() else None
    log = open(tmp_path / f"server-{time.monotonic_ns()}.log", "wb")
    args = [PY, "-m", module] + (["serve"] if module == "toon_ofx" else []) + ["--port", "0", *extra]
    proc = subprocess.Popen(args, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {Path(log.name).read_text()}")
        if info.exists() and info.stat().st_mtime_ns != old:
            data = json.loads(info.read_text())
            if data["pid"] == proc.pid:
                return proc, data["url"]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start: " + Path(log.name).read_text())


def token_of(tmp_path):
    return (tmp_path / "config" / "token").read_text().strip()


def wait_job(url, token, job_id, states=("done", "failed", "cancelled"), timeout=60, until=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = call(url, f"/v1/jobs/{job_id}", token=token)
        assert status == 200, job
        if job["state"] in states or (until is not None and until(job)):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck: {job}")


# --------------------------------------------------------------------------- token, discovery, binding

def test_token_and_server_json(engine, tmp_path):
    token_file = tmp_path / "config" / "token"
    assert token_file.read_text().strip() == engine.token and len(engine.token) >= 40
    if os.name == "posix":
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "config").stat().st_mode & 0o077 == 0
    info = json.loads((tmp_path / "config" / "server.json").read_text())
    assert info["url"] == engine.url and info["pid"] == os.getpid() and info["version"]
    assert engine.url.startswith("http://127.0.0.1:") and not engine.url.endswith(":0")
    assert (tmp_path / "data" / "jobs.sqlite3").exists()
    status, health = call(engine.url, "/v1/health", token=engine.token)
    assert status == 200 and health["service"] == "toon-ofx" and health["pid"] == os.getpid()


def test_token_is_reused_and_repaired(tmp_path):
    folder = tmp_path / "cfg"
    first = ensure_token(folder)
    assert ensure_token(folder) == first
    (folder / "token").write_text("")
    second = ensure_token(folder)
    assert second not in ("", first)
    if os.name == "posix":  # others could have copied a readable token: it is replaced, not just hidden
        os.chmod(folder / "token", 0o644)
        third = ensure_token(folder)
        assert third not in (first, second) and (folder / "token").stat().st_mode & 0o777 == 0o600


def test_refuses_non_loopback_bind(tmp_path):
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        with pytest.raises(UserError) as err:
            Server(host, 0, config_dir=tmp_path / "c", data_dir=tmp_path / "d")
        assert "--allow-remote" in err.value.message
    Server("0.0.0.0", 0, allow_remote=True, config_dir=tmp_path / "c", data_dir=tmp_path / "d")  # allowed, not started
    proc = subprocess.run([PY, "-m", "toon_ofx.service.server", "--host", "0.0.0.0"], capture_output=True, text=True,
                          env=dict(os.environ, **dirs_env(tmp_path)), timeout=60)
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr and "Traceback" not in proc.stderr


def test_one_server_per_queue(engine, tmp_path):
    with pytest.raises(AlreadyRunning) as err:
        Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data").start()
    assert engine.url in err.value.message
    status, _ = call(engine.url, "/v1/health", token=engine.token)
    assert status == 200


# --------------------------------------------------------------------------- auth and browsers

def test_auth_required_everywhere(engine):
    for method, path, body in (("GET", "/v1/health", None), ("GET", "/v1/params", None), ("GET", "/v1/jobs", None),
                               ("GET", "/v1/jobs/abc", None), ("POST", "/v1/jobs", {}),
                               ("POST", "/v1/jobs/abc/cancel", {}), ("POST", "/v1/preview", {}),
                               ("POST", "/v1/shutdown", {}), ("GET", "/nope", None)):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": engine.token},
                        {"Authorization": f"Basic {engine.token}"}, {"Authorization": "Bearer "}):
            status, answer = call(engine.url, path, method, body=body, headers=headers)
            assert status == 401, (method, path, headers, answer)
            assert "token" in answer["error"] and answer["field"] is None
    status, _ = call(engine.url, "/v1/health", token=engine.token)
    assert status == 200  # and the server still runs (shutdown without token did nothing)


def test_browser_requests_refused(engine):
    port = engine.port
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://127.0.0.1:{port}"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Host": "evil.example"}, {"Host": f"evil.example:{port}"}, {"Host": "127.0.0.1:1"}):
        for token in (engine.token, None):
            status, answer = call(engine.url, "/v1/health", token=token, headers=headers)
            assert status == 403, (headers, answer)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert call(engine.url, "/v1/health", token=engine.token, headers={"Host": host})[0] == 200
    status, answer = call(engine.url, "/v1/health", "OPTIONS", token=engine.token,
                          headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 403
    # a form post (text/plain) can't submit jobs even with the token
    status, answer = call(engine.url, "/v1/jobs", "POST", raw=b'{"source": "/x"}', token=engine.token,
                          headers={"Content-Type": "text/plain"})
    assert status == 415


def test_params_endpoint(engine):
    from toon_ofx.core.params import schema

    assert engine.client.params() == schema()


def test_unknown_endpoints_and_methods(engine):
    assert call(engine.url, "/v2/health", token=engine.token)[0] == 404
    assert call(engine.url, "/v1/jobs/nope", token=engine.token) == (404, {"error": "no job 'nope'", "field": "id"})
    assert call(engine.url, "/v1/jobs/nope/cancel", "POST", {}, token=engine.token)[0] == 404
    status, answer = call(engine.url, "/v1/jobs", "DELETE", token=engine.token)
    assert status == 405 and answer["error"]


# --------------------------------------------------------------------------- bad input

def _body(tmp_path, clip, **over):
    body = {"source": str(clip), "frames": [0, 3], "params": {},
            "output": {"folder": str(tmp_path / "renders"), "kind": "sequence"}}
    body.update(over)
    return body


@needs_clip
def test_bad_input_is_4xx_naming_the_field(engine, tmp_path, clip):
    text = tmp_path / "media" / "notes.mov"
    text.write_text("hello")
    seq = tmp_path / "plate"
    seq.mkdir()
    cases = [
        (dict(raw=b'{"source": '), 400, None),
        (dict(raw=b"[1, 2"), 400, None),
        (dict(raw=b"\xff\xfe"), 400, None),
        (dict(raw=b'{"source": NaN}'), 400, None),
        (dict(raw=b""), 400, None),
        (dict(raw=b'{"source": "/a", "source": "/b"}'), 400, "source"),
        (dict(body=[1, 2]), 400, None),
        (dict(body=_body(tmp_path, clip, priority=9)), 400, "priority"),
        (dict(body=_body(tmp_path, clip, output={"folder": str(tmp_path), "overwrite": True})), 400, "output.overwrite"),
        (dict(body=_body(tmp_path, clip, params={"swap_res": 7})), 422, "params.swap_res"),
        (dict(body=_body(tmp_path, clip, params={"steps": 100000})), 422, "params.steps"),
        (dict(body=_body(tmp_path, clip, params={"colour": True})), 422, "params.colour"),
        (dict(body=_body(tmp_path, clip, params={"device": "cuda:0"})), None, "params.device"),
        (dict(body=_body(tmp_path, clip, source=str(tmp_path / "missing.mp4"))), 400, "source"),
        (dict(body=_body(tmp_path, clip, source=str(text))), 400, "source"),
        (dict(body=_body(tmp_path, clip, source="clip.mp4")), 400, "source"),
        (dict(body=_body(tmp_path, clip, source=str(seq))), 400, "source"),
        (dict(body=_body(tmp_path, clip, frames=[0, 72])), 422, "frames"),
        (dict(body=_body(tmp_path, clip, frames=[10, 2])), 422, "frames"),
        (dict(body=_body(tmp_path, clip, frames="0-3")), 400, "frames"),
        (dict(body=_body(tmp_path, clip, output={"folder": "/"})), 400, "output.folder"),
        (dict(body=_body(tmp_path, clip, output={"folder": "/etc"})), 400, "output.folder"),
        (dict(body=_body(tmp_path, clip, output={"folder": "/usr/share/toon"})), 400, "output.folder"),
        (dict(body=_body(tmp_path, clip, output={"folder": str(clip)})), 400, "output.folder"),
        (dict(body=_body(tmp_path, clip, output={"folder": str(clip.parent), "kind": "movie", "name": "clip"})),
         400, "output.name"),
        (dict(body=_body(tmp_path, clip, output={"folder": str(tmp_path), "kind": "exr"})), 400, "output.kind"),
        (dict(body=_body(tmp_path, clip, output={"folder": str(tmp_path), "name": "../up"})), 400, "output.name"),
    ]
    before = fingerprint(clip)
    for kwargs, status, field in cases:
        got, answer = call(engine.url, "/v1/jobs", "POST", token=engine.token, **kwargs)
        if status is None:  # cuda:0 on this machine: refused unless it really has a GPU
            import torch

            if torch.cuda.is_available():
                continue
            status = 422
        assert (got, answer["field"]) == (status, field), (kwargs, answer)
        assert isinstance(answer["error"], str) and answer["error"] and "Traceback" not in answer["error"]
    assert call(engine.url, "/v1/jobs", token=engine.token)[1]["jobs"] == []   # nothing was queued
    assert not (tmp_path / "renders").exists()
    assert fingerprint(clip) == before
    assert text.read_text() == "hello"
    big = b'{"source": "' + b"x" * (2 << 20) + b'"}'
    assert call(engine.url, "/v1/jobs", "POST", raw=big, token=engine.token)[0] == 413


@needs_clip
def test_models_must_be_installed(tmp_path, clip, tiny_model_paths):
    """A style or base model that is not installed is a 422 at submission, not a failed job later."""
    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=fake_render,
                    preview_fn=_fake_preview)
    with server:
        base, toon = str(tiny_model_paths["base"]), str(tiny_model_paths["toon"])
        for params, field in (({"model": "no-such-style", "base_model": base}, "params.model"),
                              ({"model": toon}, "params.base_model"),   # the default ffhq-1024 is not installed
                              ({"model": toon, "base_model": str(tmp_path / "missing.pt")}, "params.base_model"),
                              ({"model": toon, "base_model": str(tmp_path)}, "params.base_model"),
                              ({"model": toon, "base_model": base, "inversion": "encoder"}, "params.encoder"),
                              ({"model": toon, "base_model": base, "encoder": str(tmp_path / "e.pt")},
                               "params.encoder")):
            for path, body in (("/v1/jobs", _body(tmp_path, clip, params=params)),
                               ("/v1/preview", {"source": str(clip), "params": params})):
                status, answer = call(server.url, path, "POST", body, token=server.token)
                assert (status, answer["field"]) == (422, field), answer
        params = {"model": toon, "base_model": base}
        status, job = call(server.url, "/v1/jobs", "POST", _body(tmp_path, clip, params=params), token=server.token)
        assert status == 201, job


def test_missing_models_are_all_named_in_one_422(tmp_path, clip, tiny_model_paths, monkeypatch):
    """Base and style given as files, the LPIPS weights not installed: one 422 lists both missing files."""
    for var in ("TOON_OFX_MODELS", "TOON_OFX_CACHE_DIR", "TORCH_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=fake_render,
                    preview_fn=_fake_preview)
    params = {"model": str(tiny_model_paths["toon"]), "base_model": str(tiny_model_paths["base"])}
    with server:
        status, answer = call(server.url, "/v1/jobs", "POST", _body(tmp_path, clip, params=params),
                              token=server.token)
    assert status == 422 and answer["field"] is None          # no parameter is at fault
    lines = answer["error"].splitlines()
    assert lines[0] == "2 model files are missing:"
    assert lines[1].startswith("  - vgg16-397923af.pth (model vgg16, 527.8 MiB, licence: ")
    assert lines[2].startswith("  - lpips-vgg-v0.1.pth (model lpips-vgg, 7.1 KiB, licence: ")
    assert str(tmp_path / "toon_ofx_models") in lines[-1]


def test_job_progress_names_the_model_loading_and_the_projection_step(tmp_path, clip):
    """What the renderer reports while loading and projecting reaches the job's JSON (hosts show it)."""
    from toon_ofx.core.progress import ProgressEvent

    release = threading.Event()

    def render(request, progress=None, cancel=None):
        for event in (ProgressEvent("loading", 0, 15, 0, None, model="toonify", step=2, steps=4),
                      ProgressEvent("projecting", 0, 15, 1, None, step=37, steps=500)):
            progress(event)
            release.wait(10)
            release.clear()
        return fake_render(request, progress, cancel, delay=0)

    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=render,
                    preview_fn=_fake_preview, model_check=None)
    with server:
        status, job = call(server.url, "/v1/jobs", "POST", _body(tmp_path, clip, frames=[5, 19]), token=server.token)
        for stage, extra in (("loading", {"model": "toonify", "step": 2, "steps": 4}),
                             ("projecting", {"step": 37, "steps": 500})):
            running = wait_job(server.url, server.token, job["id"], until=lambda j: j["progress"]["stage"] == stage)
            assert {k: running["progress"].get(k) for k in ("model", "step", "steps")} == dict(
                {"model": None}, **extra)
            release.set()
        done = wait_job(server.url, server.token, job["id"])
    assert done["state"] == "done" and not {"model", "step", "steps"} & set(done["progress"])


# --------------------------------------------------------------------------- jobs

def test_job_lifecycle_and_result(engine, tmp_path, clip):
    before = fingerprint(clip)
    status, job = call(engine.url, "/v1/jobs", "POST", _body(tmp_path, clip, frames=[5, 19]), token=engine.token)
    assert status == 201, job
    assert job["state"] in ("queued", "running") and job["frames"] == [5, 19]
    assert job["progress"]["frames_total"] == 15 and job["params"]["swap_res"] == 64
    assert job["output"]["pattern"] == str(tmp_path / "renders" / "clip_toon.%06d.png")
    seen = []
    done = engine.client.wait(job["id"], poll=0.02, callback=lambda j: seen.append(j["progress"]))
    assert done["state"] == "done" and done["error"] is None
    assert done["result"] == {"kind": "sequence", "path": str(tmp_path / "renders"),
                              "pattern": str(tmp_path / "renders" / "clip_toon.%06d.png"),
                              "first_frame": 5, "last_frame": 19, "fps": 30.0, "first_number": 0}
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == [f"clip_toon.{i:06d}.png" for i in range(5, 20)]
    assert done["progress"] == {"frames_done": 15, "frames_total": 15, "stage": "done", "eta_seconds": 0.0,
                                "faces": 15}
    middle = [p for p in seen if p["stage"] == "rendering" and 0 < p["frames_done"] < 15]
    assert middle, seen
    assert all(p["eta_seconds"] is not None and p["eta_seconds"] >= 0 for p in middle)
    assert [j["id"] for j in engine.client.jobs()] == [job["id"]]
    assert fingerprint(clip) == before, "the source was written"
    # cancelling a finished job is a conflict; the output stays
    with pytest.raises(EngineError) as err:
        engine.client.cancel(job["id"])
    assert err.value.status == 409


def test_default_output_folder_and_movie(engine, tmp_path, clip):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed")
    job = engine.client.submit(str(clip), frames=(0, 2), output_kind="movie")
    assert job["output"]["folder"] == str(tmp_path / "data" / "renders")
    done = engine.client.wait(job["id"], poll=0.02)
    assert done["state"] == "done", done["error"]
    assert done["result"]["path"] == str(tmp_path / "data" / "renders" / "clip_toon.mp4")
    assert done["result"]["pattern"] is None and os.path.getsize(done["result"]["path"]) > 0


def test_concurrent_submissions_from_several_clients(engine, tmp_path, clip):
    before = len(INTERVALS)
    clients = [EngineClient(engine.url, engine.token) for _ in range(4)]
    jobs, errors = [None] * 4, []
    barrier = threading.Barrier(4)

    def submit(i):
        try:
            barrier.wait()
            jobs[i] = clients[i].submit(str(clip), frames=(i, i + 5), output_folder=str(tmp_path / "renders"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({j["id"] for j in jobs}) == 4
    names = sorted(j["output"]["name"] for j in jobs)
    assert names == ["clip_toon", "clip_toon_2", "clip_toon_3", "clip_toon_4"]
    states = {j["state"] for j in clients[0].jobs()}
    assert states <= {"queued", "running", "done"}
    running_seen = 0
    while True:
        now = clients[0].jobs()
        running_seen = max(running_seen, sum(j["state"] == "running" for j in now))
        assert running_seen <= 1, "two jobs ran at once on one device"
        if all(j["state"] == "done" for j in now):
            break
        time.sleep(0.02)
    runs = sorted(INTERVALS[before:], key=lambda r: r[1])
    assert len(runs) == 4 and all(runs[i][2] <= runs[i + 1][1] for i in range(3)), "renders overlapped"
    for job in clients[1].jobs():
        first, last = job["frames"]
        files = sorted(p.name for p in (tmp_path / "renders").glob(job["output"]["name"] + ".*.png"))
        assert files == [f"{job['output']['name']}.{i:06d}.png" for i in range(first, last + 1)], job["id"]


def test_cancel_running_and_queued(engine, tmp_path, clip):
    engine.fake["delay"] = 0.15
    a = engine.client.submit(str(clip), frames=(0, 71), output_folder=str(tmp_path / "r"), name="a")
    b = engine.client.submit(str(clip), frames=(0, 71), output_folder=str(tmp_path / "r"), name="b")
    wait_job(engine.url, engine.token, a["id"], until=lambda j: j["progress"]["frames_done"] >= 2)
    cancelled_b = engine.client.cancel(b["id"])
    assert cancelled_b["state"] == "cancelled"
    cancelled_a = engine.client.cancel(a["id"])
    assert cancelled_a["state"] in ("cancelling", "cancelled") and cancelled_a["cancel_requested"]
    a_final = engine.client.wait(a["id"], poll=0.02, timeout=10)
    assert a_final["state"] == "cancelled" and a_final["result"] is None
    kept = sorted((tmp_path / "r").glob("a.*.png"))
    assert 2 <= len(kept) < 72, "finished frames of a cancelled job are kept"
    assert not list((tmp_path / "r").glob("b.*.png"))
    assert engine.client.cancel(b["id"])["state"] == "cancelled"     # idempotent
    # the queue goes on after a cancel
    engine.fake["delay"] = 0.0
    c = engine.client.submit(str(clip), frames=(0, 1), output_folder=str(tmp_path / "r"), name="c")
    assert engine.client.wait(c["id"], poll=0.02, timeout=20)["state"] == "done"


def test_explicit_name_collision_is_409(engine, tmp_path, clip):
    job = engine.client.submit(str(clip), frames=(0, 1), output_folder=str(tmp_path / "r"), name="shot")
    engine.client.wait(job["id"], poll=0.02)
    frame = tmp_path / "r" / "shot.000000.png"
    stat = frame.stat()
    with pytest.raises(EngineError) as err:
        engine.client.submit(str(clip), frames=(0, 1), output_folder=str(tmp_path / "r"), name="shot")
    assert err.value.status == 409 and err.value.field == "output.name"
    assert (frame.stat().st_ino, frame.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_failed_job_reports_message(engine, tmp_path, clip):
    from test_jobs import FAIL_USER_SEED

    job = engine.client.submit(str(clip), frames=(0, 1), params={"seed": FAIL_USER_SEED},
                               output_folder=str(tmp_path / "r"))
    done = engine.client.wait(job["id"], poll=0.02)
    assert done["state"] == "failed" and done["error"] == "the fake renderer was told to fail"


def test_preview(engine, clip):
    import cv2

    status, answer = call(engine.url, "/v1/preview", "POST", {"source": str(clip), "frame": 7, "params": {}},
                          token=engine.token)
    assert status == 200 and answer["frame"] == 7 and answer["faces"] == 1
    original = cv2.imdecode(__import__("numpy").frombuffer(base64.b64decode(answer["original_png"]), "uint8"),
                            cv2.IMREAD_UNCHANGED)
    assert original.shape == (8, 12, 3) and int(original[0, 0, 2]) == 7   # cv2 is BGR: red = frame
    stylised = engine.client.preview(str(clip), 3)["stylised_png"]
    assert cv2.imdecode(__import__("numpy").frombuffer(stylised, "uint8"), cv2.IMREAD_UNCHANGED).shape == (8, 12, 4)
    for body, field in (({"source": str(clip), "frame": 999}, "frame"), ({"source": str(clip), "params": {"r": 1}},
                                                                        "params.r"), ({"frame": 1}, "source"),
                        ({"source": str(clip), "params": {"swap_res": 1024}}, "params.swap_res")):
        status, answer = call(engine.url, "/v1/preview", "POST", body, token=engine.token)
        assert 400 <= status < 500 and answer["field"] == field


def test_encode_png_roundtrip():
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for shape in ((5, 7), (5, 7, 3), (6, 3, 4)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        back = cv2.imdecode(np.frombuffer(encode_png(image), np.uint8), cv2.IMREAD_UNCHANGED)
        if len(shape) == 3:
            back = cv2.cvtColor(back, cv2.COLOR_BGR2RGB if shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
        assert np.array_equal(back, image)


# --------------------------------------------------------------------------- real processes

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


@posix_only
@needs_clip
def test_python_m_toon_ofx_serve_and_sigterm(tmp_path):
    proc, url = start_subprocess_server(tmp_path, "--render-fn", "test_jobs:fake_render")
    try:
        token = token_of(tmp_path)
        assert call(url, "/v1/health", token=token)[1]["pid"] == proc.pid
        assert call(url, "/v1/health")[0] == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not (tmp_path / "config" / "server.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


@posix_only
@needs_clip
def test_sigterm_mid_job_requeues_and_resumes(tmp_path, clip):
    env = {"FAKE_RENDER_DELAY": "0.1"}
    proc, url = start_subprocess_server(tmp_path, "--render-fn", "test_jobs:fake_render", env=env)
    try:
        token = token_of(tmp_path)
        status, job = call(url, "/v1/jobs", "POST", _body(tmp_path, clip, frames=[0, 30]), token=token)
        assert status == 201, job
        wait_job(url, token, job["id"], until=lambda j: j["progress"]["frames_done"] >= 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, url = start_subprocess_server(tmp_path, "--render-fn", "test_jobs:fake_render",
                                        env={"FAKE_RENDER_DELAY": "0"})
    try:
        done = wait_job(url, token, job["id"])
        assert done["state"] == "done" and done["attempts"] == 2
    finally:
        proc.kill()
        proc.wait()


@posix_only
@needs_clip
def test_kill_9_mid_job_resumes_without_losing_or_repeating_frames(tmp_path, clip):
    """SIGKILL the engine mid-job, start it again: the job resumes from the last finished frame."""
    log = tmp_path / "frames.log"
    out = tmp_path / "renders"
    first, last = 10, 49
    env = {"FAKE_RENDER_DELAY": "0.15", "FAKE_RENDER_LOG": str(log)}
    before = fingerprint(clip)
    proc, url = start_subprocess_server(tmp_path, "--render-fn", "test_jobs:fake_render", env=env)
    token = token_of(tmp_path)
    try:
        status, job = call(url, "/v1/jobs", "POST", _body(tmp_path, clip, frames=[first, last]), token=token)
        assert status == 201, job
        # a second client's job waits behind the first, and survives the kill too
        status, queued = call(url, "/v1/jobs", "POST", _body(tmp_path, clip, frames=[0, 4]), token=token)
        assert status == 201 and queued["state"] == "queued"
        wait_job(url, token, job["id"], until=lambda j: j["progress"]["frames_done"] >= 6, timeout=60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    on_disk = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("clip_toon.*.png")}
    written_before = {int(line.split()[1]) for line in log.read_text().splitlines()}
    assert 6 <= len(on_disk) < last - first + 1, "kill came too late to test a resume"
    assert {f"clip_toon.{i:06d}.png" for i in written_before} <= set(on_disk)

    # the server.json left behind names a dead server: the client does not hang on it
    with pytest.raises(EngineError):
        EngineClient(url, token, timeout=2).health()

    lines_before = len(log.read_text().splitlines())
    proc, url = start_subprocess_server(tmp_path, "--render-fn", "test_jobs:fake_render",
                                        env={"FAKE_RENDER_DELAY": "0.01", "FAKE_RENDER_LOG": str(log)})
    try:
        done = wait_job(url, token, job["id"], timeout=60)
        assert done["state"] == "done" and done["attempts"] == 2, done
        second = wait_job(url, token, queued["id"], timeout=60)
        assert second["state"] == "done" and second["output"]["name"] == "clip_toon_2"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    expected = {f"clip_toon.{i:06d}.png" for i in range(first, last + 1)}
    final = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("clip_toon.*.png")}
    assert set(final) == expected, "a frame was lost"
    for name, ident in on_disk.items():
        assert final[name] == ident, f"{name} was rendered again after the restart"
    after = [line.split() for line in log.read_text().splitlines()[lines_before:]]
    resumed_frames = [int(i) for pid, i in after if int(pid) == proc.pid and first <= int(i) <= last]
    missing = {int(n.split(".")[1]) for n in expected - set(on_disk)}
    assert sorted(resumed_frames) == sorted(missing), "the resumed run rendered other frames than the missing ones"
    assert len(resumed_frames) == len(set(resumed_frames))
    assert fingerprint(clip) == before


# --------------------------------------------------------------------------- the real renderer

def test_real_render_end_to_end(tmp_path, clip, tiny_model_paths):
    """One job through the real toon_ofx.core.render (tiny models from tests/conftest.py), over HTTP."""
    base, toon = tiny_model_paths["base"], tiny_model_paths["toon"]
    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data")
    with server:
        client = EngineClient(server.url, server.token)
        params = {"base_model": str(base), "model": str(toon), "steps": 2, "warm_steps": 1, "device": "cpu",
                  "swap_res": 8}
        before = fingerprint(clip)
        job = client.submit(str(clip), frames=(2, 4), params=params, output_folder=str(tmp_path / "out"))
        done = client.wait(job["id"], poll=0.2, timeout=600)
        assert done["state"] == "done", done["error"]
        result = done["result"]
        assert (result["kind"], result["first_frame"], result["last_frame"]) == ("sequence", 2, 4)
        assert result["fps"] == pytest.approx(30.0)
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"clip_toon.{i:06d}.png" for i in (2, 3, 4)]
        assert done["progress"]["frames_done"] == 3 and done["progress"]["faces"] >= 1
        # a movie: frames in the data folder, encoded under a hidden name, moved into place when complete
        job = client.submit(str(clip), frames=(2, 4), params=params, output_folder=str(tmp_path / "out"),
                            output_kind="movie")
        done = client.wait(job["id"], poll=0.2, timeout=600)
        assert done["state"] == "done", done["error"]
        movie = tmp_path / "out" / "clip_toon_2.mp4"   # clip_toon.* is taken by the sequence above
        assert done["result"]["path"] == str(movie) and movie.stat().st_size > 0
        assert not list((tmp_path / "out").glob(".*")), "no partial movie or frame folder is left behind"
        assert not (tmp_path / "data" / "work" / job["id"]).exists()
        assert fingerprint(clip) == before
