"""The engine's lifecycle: stops that requeue, cancellation inside a projection, abandoned previews,
retry, the idle stop and client sessions, and the `toon-ofx jobs` command (issue 16 items 1, 2, 11;
issue 15's engine side)."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_jobs import CLIP, REPO, fake_render, needs_clip  # noqa: E402
from test_server import call, start_subprocess_server, token_of, wait_job  # noqa: E402

from toon_ofx.client import EngineClient, EngineError  # noqa: E402
from toon_ofx.core.errors import Cancelled  # noqa: E402
from toon_ofx.service.server import Server  # noqa: E402

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


def _db_row(tmp_path, job_id):
    con = sqlite3.connect(str(tmp_path / "data" / "jobs.sqlite3"))
    try:
        return con.execute("SELECT state, crashes, attempts FROM jobs WHERE id=?", (job_id,)).fetchone()
    finally:
        con.close()


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


# --------------------------------------------------------------------------- item 1: stops

@posix_only
@needs_clip
def test_stops_during_an_uninterruptible_frame_requeue_without_counting_a_crash(tmp_path):
    """SIGTERM while a frame keeps torch busy past the stop timeout: a clean exit (no abort), the job back
    in the queue with no crash counted, three times in a row; then it renders."""
    mark = tmp_path / "in-frame"
    env = {"FAKE_STUCK_MARK": str(mark)}
    job_id = None
    for stop in range(3):
        mark.unlink(missing_ok=True)
        proc, url = start_subprocess_server(tmp_path, "--render-fn", "test_jobs:stuck_render",
                                            "--stop-timeout", "1", env=env)
        try:
            if job_id is None:
                status, job = call(url, "/v1/jobs", "POST", {"source": str(CLIP), "frames": [0, 3],
                                   "output": {"folder": str(tmp_path / "out")}}, token=token_of(tmp_path))
                assert status == 201, job
                job_id = job["id"]
            _wait_for(mark.exists, 60, "the stuck frame")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, f"stop {stop + 1}: the engine did not exit cleanly"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert _db_row(tmp_path, job_id) == ("queued", 0, stop + 1), f"after stop {stop + 1}"
    logs = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    assert "terminate called" not in logs and "Traceback" not in logs
    assert logs.count("back in the queue") == 3
    proc, url = start_subprocess_server(tmp_path, "--render-fn", "test_jobs:fake_render")
    try:
        done = wait_job(url, token_of(tmp_path), job_id)
        assert done["state"] == "done" and done["attempts"] == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# --------------------------------------------------------------------------- item 11: cancel inside a projection

def test_cancel_takes_effect_inside_the_projection(tmp_path, monkeypatch, tiny_model_paths):
    """The real renderer, a first frame of 5000 projection steps: cancel stops it within a step, the
    answer says "cancelling" or "cancelled", and no frame is written."""
    from engine.pipeline import ToonPipeline

    steps_taken, projecting = [], threading.Event()
    original = ToonPipeline._step_callback

    def spy(self, steps):
        hook = original(self, steps)

        def after_step(step, losses):
            steps_taken.append(step)
            projecting.set()
            return hook(step, losses)
        return after_step

    monkeypatch.setattr(ToonPipeline, "_step_callback", spy)
    params = {"base_model": str(tiny_model_paths["base"]), "model": str(tiny_model_paths["toon"]),
              "steps": 5000, "warm_steps": 1, "device": "cpu", "swap_res": 8}
    with Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data") as server:
        client = EngineClient(server.url, server.token)
        job = client.submit(str(CLIP), frames=(2, 4), params=params, output_folder=str(tmp_path / "out"))
        assert projecting.wait(600), "the projection never started"
        answer = client.cancel(job["id"])
        assert answer["state"] in ("cancelling", "cancelled") and answer["cancel_requested"]
        final = client.wait(job["id"], poll=0.05, timeout=120)
    assert final["state"] == "cancelled" and final["progress"]["frames_done"] == 0
    assert 0 < len(steps_taken) < 5000, "the projection ran to its end before stopping"
    assert not list((tmp_path / "out").glob("*.png"))


def test_cancel_answers_cancelling_until_the_worker_stops(tmp_path):
    """A renderer that only notices the cancel later: the answer is honest ("cancelling"), then "cancelled"."""
    release = threading.Event()

    def slow_to_notice(request, progress=None, cancel=None):
        cancel.wait(30)
        release.wait(30)   # the frame in flight has to finish first
        raise Cancelled("stopped")

    with Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=slow_to_notice,
                model_check=None) as server:
        client = EngineClient(server.url, server.token)
        job = client.submit(str(CLIP), frames=(0, 1), output_folder=str(tmp_path / "out"))
        _wait_for(lambda: client.job(job["id"])["state"] == "running", 30, "the job start")
        assert client.cancel(job["id"])["state"] == "cancelling"
        assert [j["id"] for j in client.jobs(state="cancelling")] == [job["id"]]
        assert client.cancel(job["id"])["state"] == "cancelling"   # asking again is fine
        release.set()
        assert client.wait(job["id"], poll=0.02, timeout=30)["state"] == "cancelled"
        assert client.cancel(job["id"])["state"] == "cancelled"    # and after it ended too


# --------------------------------------------------------------------------- item 11: abandoned previews

class _SteppedPreview:
    """A stand-in preview of `steps` steps that stops at the first step after `cancel` is set."""

    def __init__(self, steps=2000):
        self.steps, self.started, self.stopped_at, self.finished = steps, threading.Event(), [], []

    def __call__(self, source, frame, params, cancel=None, on_step=None):
        import numpy as np

        self.started.set()
        for step in range(self.steps):
            if cancel is not None and cancel.is_set():
                self.stopped_at.append(step)
                raise Cancelled("preview cancelled")
            time.sleep(0.01)
            if on_step is not None:
                on_step(step + 1)
        self.finished.append(frame)
        return np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), 1


def _raw_post(port, token, body):
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST /v1/preview HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@needs_clip
def test_an_abandoned_preview_stops_and_does_not_block_the_next(tmp_path):
    fake = _SteppedPreview()
    with Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", preview_fn=fake,
                model_check=None) as server:
        sock = _raw_post(server.port, server.token, {"source": str(CLIP), "frame": 1})
        assert fake.started.wait(30)
        sock.close()                                     # the client went away
        _wait_for(lambda: fake.stopped_at, 30, "the abandoned preview's stop")
        assert fake.stopped_at[0] < fake.steps and not fake.finished
        fake.steps = 3
        answer = EngineClient(server.url, server.token).preview(str(CLIP), 2, timeout=60)
        assert answer["frame"] == 2 and fake.finished == [2]


@needs_clip
def test_a_newer_preview_replaces_the_one_computing(tmp_path):
    fake = _SteppedPreview()
    with Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", preview_fn=fake,
                model_check=None) as server:
        client = EngineClient(server.url, server.token)
        first = {}

        def ask_first():
            try:
                client.preview(str(CLIP), 1, timeout=60)
            except EngineError as exc:
                first["error"] = exc

        thread = threading.Thread(target=ask_first)
        thread.start()
        assert fake.started.wait(30)
        fake.steps = 3
        assert client.preview(str(CLIP), 5, timeout=60)["frame"] == 5
        thread.join(30)
        assert first["error"].status == 409 and "newer preview" in str(first["error"])
        assert fake.finished == [5] and len(fake.stopped_at) == 1


# --------------------------------------------------------------------------- retry (issue 16 item 2, issue 15)

@needs_clip
def test_retry_resumes_a_cancelled_job_from_its_frames(tmp_path):
    log = tmp_path / "frames.log"
    delay = {"seconds": 0.1}

    def render(request, progress=None, cancel=None):
        return fake_render(request, progress, cancel, delay=delay["seconds"], log=str(log))

    with Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=render,
                model_check=None) as server:
        client = EngineClient(server.url, server.token)
        job = client.submit(str(CLIP), frames=(10, 29), output_folder=str(tmp_path / "out"), name="shot")
        _wait_for(lambda: client.job(job["id"])["progress"]["frames_done"] >= 3, 60, "three frames")
        client.cancel(job["id"])
        cancelled = client.wait(job["id"], poll=0.02, timeout=30)
        assert cancelled["state"] == "cancelled"
        kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("shot.*.png")}
        assert 3 <= len(kept) < 20
        delay["seconds"] = 0.0
        again = client.retry(job["id"])
        assert again["id"] == job["id"] and again["state"] in ("queued", "running") and not again["cancel_requested"]
        done = client.wait(job["id"], poll=0.02, timeout=60)
        assert done["state"] == "done" and done["error"] is None and done["output"]["name"] == "shot"
        final = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("shot.*.png")}
        assert sorted(final) == [f"shot.{i:06d}.png" for i in range(10, 30)]
        assert all(final[name] == mtime for name, mtime in kept.items()), "a kept frame was rendered again"
        rendered = [int(line.split()[1]) for line in log.read_text().splitlines()]
        assert sorted(rendered) == list(range(10, 30)), "every frame rendered exactly once"
        for state_job, status in ((done, 409), ):
            with pytest.raises(EngineError) as err:
                client.retry(state_job["id"])
            assert err.value.status == status and "done" in str(err.value)
        with pytest.raises(EngineError) as err:
            client.retry("nope")
        assert err.value.status == 404


@needs_clip
def test_retry_resumes_a_failed_movie_into_the_same_file(tmp_path):
    import shutil

    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed")
    fail = {"at": 4}

    def render(request, progress=None, cancel=None):
        def failing_progress(event):
            if progress is not None:
                progress(event)
            if fail["at"] is not None and event.frames_done >= fail["at"]:
                raise OSError(28, "No space left on device", str(request.work_dir / "x.png"))
        return fake_render(request, failing_progress, cancel, delay=0.0)

    with Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=render,
                model_check=None) as server:
        client = EngineClient(server.url, server.token)
        job = client.submit(str(CLIP), frames=(0, 9), output_folder=str(tmp_path / "out"), output_kind="movie")
        failed = client.wait(job["id"], poll=0.02, timeout=60)
        assert failed["state"] == "failed" and "no space left" in failed["error"]
        assert str(tmp_path / "data" / "work" / job["id"]) in failed["error"]
        work = tmp_path / "data" / "work" / job["id"]
        assert len(list(work.glob("*.png"))) == 4, "the failed job's frames are kept for a retry"
        fail["at"] = None
        client.retry(job["id"])
        done = client.wait(job["id"], poll=0.02, timeout=60)
        assert done["state"] == "done", done["error"]
        assert done["result"]["path"] == str(tmp_path / "out" / "single_face_toon.mp4") == job["output"]["path"]
        assert not work.exists()


# --------------------------------------------------------------------------- idle stop and sessions (issue 15)

def _server(tmp_path, **kw):
    kw.setdefault("render_fn", fake_render)
    return Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", model_check=None, **kw).start()


def test_an_idle_engine_stops_only_when_started_with_an_idle_timeout(tmp_path):
    server = _server(tmp_path, idle_timeout=0.3)
    assert server.stopped.wait(15), "the idle engine did not stop"
    assert not (tmp_path / "config" / "server.json").exists()
    manual = _server(tmp_path)                        # started by hand: never idles out
    try:
        assert not manual.stopped.wait(1.5)
        assert EngineClient(manual.url, manual.token).health()["idle_timeout"] is None
    finally:
        manual.shutdown()


@needs_clip
def test_work_keeps_an_idle_engine_up(tmp_path):
    gate = threading.Event()

    def gated(request, progress=None, cancel=None):
        gate.wait(60)
        return fake_render(request, progress, cancel, delay=0.0)

    server = _server(tmp_path, idle_timeout=0.3, render_fn=gated)
    try:
        client = EngineClient(server.url, server.token)
        job = client.submit(str(CLIP), frames=(0, 1), output_folder=str(tmp_path / "out"))
        assert not server.stopped.wait(1.5), "stopped with a job running"
        gate.set()
        assert server.stopped.wait(15), "did not stop after the job"
        assert job["id"]
    finally:
        gate.set()
        server.shutdown()


def test_sessions_keep_the_engine_up_until_the_last_goodbye(tmp_path):
    server = _server(tmp_path, idle_timeout=0.3)
    try:
        a = EngineClient(server.url, server.token)
        b = EngineClient(server.url, server.token)
        a.hello(lease=30, name="blender")
        with b:
            assert b.health()["sessions"] == 2
            assert not server.stopped.wait(1.0)
        assert a.health()["sessions"] == 1
        assert not server.stopped.wait(1.0), "one session is still open"
        a.goodbye()
        assert server.stopped.wait(15), "the last goodbye did not stop the engine"
    finally:
        server.shutdown()


def test_a_crashed_clients_session_ends_with_its_lease(tmp_path):
    server = _server(tmp_path, idle_timeout=0.3)
    try:
        client = EngineClient(server.url, server.token)
        client.hello(lease=1)
        assert not server.stopped.wait(0.6)
        # the client "crashes": no goodbye, no more requests
        assert server.stopped.wait(15), "an unrenewed lease kept the engine up"
    finally:
        server.shutdown()


def test_session_requests_are_checked(tmp_path):
    with _server(tmp_path) as server:
        token = server.token
        for body, field in (({"lease_seconds": 0}, "lease_seconds"), ({"lease_seconds": "x"}, "lease_seconds"),
                            ({"client": 5}, "client")):
            status, answer = call(server.url, "/v1/sessions", "POST", body, token=token)
            assert 400 <= status < 500 and answer["field"] == field, answer
        assert call(server.url, "/v1/sessions/nope", "POST", {}, token=token)[0] == 404
        assert call(server.url, "/v1/sessions/nope", "DELETE", {}, token=token)[0] == 200
        assert call(server.url, "/v1/sessions", "POST", {}, token=None)[0] == 401


@posix_only
@needs_clip
def test_an_engine_started_on_demand_stops_after_goodbye(tmp_path, monkeypatch):
    monkeypatch.setenv("TOON_OFX_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TOON_OFX_DATA_DIR", str(tmp_path / "data"))
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    with EngineClient.connect(python=sys.executable, server_args=["--render-fn", "test_jobs:fake_render"],
                              env=env, wait=90, idle_timeout=600) as client:
        health = client.health()
        assert health["idle_timeout"] == 600 and health["sessions"] == 1
        pid = health["pid"]
    _wait_for(lambda: not _alive(pid), 60, "the on-demand engine's exit")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


# --------------------------------------------------------------------------- `toon-ofx jobs`

@needs_clip
def test_jobs_command_talks_to_the_running_engine(tmp_path):
    gate = threading.Event()

    def gated(request, progress=None, cancel=None):
        if request.params["seed"] == 1:
            gate.wait(60)
        return fake_render(request, progress, cancel, delay=0.0)

    env = dict(os.environ, TOON_OFX_CONFIG_DIR=str(tmp_path / "config"), TOON_OFX_DATA_DIR=str(tmp_path / "data"))

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "toon_ofx", "jobs", *args], capture_output=True, text=True,
                              env=env, timeout=60)
        assert "Traceback" not in proc.stderr
        return proc

    with _server(tmp_path, render_fn=gated) as server:
        client = EngineClient(server.url, server.token)
        first = client.submit(str(CLIP), frames=(0, 1), params={"seed": 1}, output_folder=str(tmp_path / "o"))
        second = client.submit(str(CLIP), frames=(0, 1), output_folder=str(tmp_path / "o"))
        listed = cli("list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [j["id"] for j in json.loads(listed.stdout)] == [first["id"], second["id"]]
        table = cli("list").stdout
        assert first["id"] in table and "queued" in table
        cancelled = cli("cancel", second["id"])
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
        gate.set()
        client.wait(first["id"], poll=0.02, timeout=60)
        shown = cli("show", first["id"], "--json")
        assert json.loads(shown.stdout)["state"] == "done"
        retried = cli("retry", second["id"])
        assert retried.returncode == 0 and second["id"] in retried.stdout
        assert client.wait(second["id"], poll=0.02, timeout=60)["state"] == "done"
        refused = cli("retry", first["id"])
        assert refused.returncode == 2 and "only failed or cancelled" in refused.stderr
        missing = cli("show", "nope")
        assert missing.returncode == 2 and "no job" in missing.stderr
    gone = cli("list")
    assert gone.returncode == 2 and "no toon-ofx engine is running" in gone.stderr


@needs_clip
def test_an_abandoned_preview_is_one_quiet_line_not_an_error(tmp_path, caplog):
    """The answer to a preview whose client went away cannot be written (broken pipe): that is one INFO
    line, never an ERROR with a traceback (issue 22 item 5)."""
    import logging

    caplog.set_level(logging.DEBUG, logger="toon_ofx")
    fake = _SteppedPreview()
    with Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", preview_fn=fake,
                model_check=None) as server:
        for _ in range(3):
            fake.started.clear()
            sock = _raw_post(server.port, server.token, {"source": str(CLIP), "frame": 1})
            assert fake.started.wait(30)
            sock.close()
            _wait_for(lambda: server._http.open_connections() == 0, 30, "the abandoned request's end")
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [(r.levelname, r.getMessage()) for r in loud]
    assert any("went away" in r.getMessage() or "abandoned" in r.getMessage() for r in caplog.records)


class _ReportingPreview(_SteppedPreview):
    """A stepped stand-in preview that reports each step as a "projecting" ProgressEvent with an ETA."""

    def __call__(self, source, frame, params, cancel=None, progress=None):
        from toon_ofx.core.progress import ProgressEvent

        def step_hook(step):
            if progress is not None:
                progress(ProgressEvent("projecting", 0, 1, 0, (self.steps - step) * 0.01, step=step, steps=self.steps))

        return super().__call__(source, frame, params, cancel=cancel, on_step=step_hook)


@needs_clip
def test_a_polled_preview_reports_progress_and_stops_on_cancel_or_when_nobody_polls(tmp_path):
    """POST /v1/previews (issue 22 item 7): the client polls the preview's progress (projection step, ETA);
    Cancel stops it at the next projection step; one nobody polls stops after its lease; a finished one
    carries both images."""
    fake = _ReportingPreview()
    with Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", preview_fn=fake,
                model_check=None) as server:
        client = EngineClient(server.url, server.token)
        seen, cancel = [], threading.Event()

        def progress(state):
            seen.append(state)
            if state["step"] >= 5:
                cancel.set()

        with pytest.raises(EngineError) as err:
            client.preview(str(CLIP), 1, progress=progress, cancel=cancel, poll=0.02, timeout=60)
        assert err.value.status == 409 and "cancelled" in str(err.value)
        assert seen[-1]["stage"] == "projecting" and seen[-1]["steps"] == fake.steps and seen[-1]["eta_seconds"] > 0
        assert len(fake.stopped_at) == 1 and not fake.finished

        server.previews.lease = 0.3
        status, started = call(server.url, "/v1/previews", "POST", {"source": str(CLIP), "frame": 2},
                               token=server.token)
        assert status == 202 and started["state"] == "running" and started["result"] is None
        _wait_for(lambda: len(fake.stopped_at) == 2, 30, "the unpolled preview's stop")
        _wait_for(lambda: call(server.url, f"/v1/previews/{started['id']}", token=server.token)[1]["state"]
                  == "cancelled", 10, "its end")
        state = call(server.url, f"/v1/previews/{started['id']}", token=server.token)[1]
        assert "nobody asked" in state["error"] and not fake.finished
        assert call(server.url, "/v1/previews/nope", token=server.token)[0] == 404

        fake.steps = 3
        answer = client.preview(str(CLIP), 4, timeout=60, poll=0.02)
        assert answer["frame"] == 4 and answer["stylised_png"].startswith(b"\x89PNG") and fake.finished == [4]
