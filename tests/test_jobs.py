"""The job model without HTTP: request checks, the SQLite queue, workers, output naming.

Also home of `fake_render`, a stand-in for toon_ofx.core.render.render with the same contract
(frames named by SOURCE frame number, existing frames skipped, each frame written atomically,
a movie encoded from the frames at the end). It copies real frames of the source clip slowly, so
queueing, cancel and kill -9 can be tested without models. The server tests and the subprocess
servers (`--render-fn test_jobs:fake_render`) use it too.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from toon_ofx.core.errors import Cancelled, UserError
from toon_ofx.service.errors import Conflict, RequestError
from toon_ofx.service.outputs import check_name, is_system_folder, partial_movie
from toon_ofx.service.requests import JobSpec, parse_preview, parse_submission
from toon_ofx.service.store import MAX_CRASHES, JobStore
from toon_ofx.service.workers import JobQueue

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("TOON_OFX_FIXTURES", REPO.parent / "shared" / "fixtures"))
CLIP = FIXTURES / "single_face.mp4"   # 72 frames, 30 fps, 640x360

needs_clip = pytest.mark.skipif(not CLIP.exists(), reason=f"test media {CLIP} missing")

# --------------------------------------------------------------------------- the stand-in renderer

INTERVALS = []          # (output, start, end) of every fake render in this process
_INTERVALS_LOCK = threading.Lock()
FAIL_USER_SEED = 666    # params["seed"] that makes the fake fail with a UserError
FAIL_CRASH_SEED = 667   # ... with a RuntimeError


def fake_render(request, progress=None, cancel=None, *, delay=None, log=None):
    """Copy (inverted, shrunk) source frames into the output like render() would, `delay` s per frame.

    Env (for subprocess servers): FAKE_RENDER_DELAY seconds per frame, FAKE_RENDER_LOG file that gets
    "<pid> <frame>" for every frame written.
    """
    import cv2
    import numpy as np

    from toon_ofx.core import media

    delay = float(os.environ.get("FAKE_RENDER_DELAY", "0.02")) if delay is None else delay
    log = log or os.environ.get("FAKE_RENDER_LOG")
    seed = request.params.get("seed", 0)
    if seed == FAIL_USER_SEED:
        raise UserError("the fake renderer was told to fail", field="seed")
    if seed == FAIL_CRASH_SEED:
        raise RuntimeError("fake crash")
    out = Path(request.output)
    movie = "%" not in out.name
    pattern = str(Path(request.work_dir) / f"{Path(request.source).stem}.%06d.png") if movie else str(out)
    first, last = request.frames
    total = last - first + 1
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    todo = {i for i in range(first, last + 1) if not os.path.exists(pattern % i)}
    done = total - len(todo)

    def emit(stage, eta=None):
        if progress is not None:
            progress(SimpleNamespace(stage=stage, frames_done=done, frames_total=total, faces=done, eta_seconds=eta))

    start = time.monotonic()
    emit("loading")
    emit("rendering")
    try:
        if todo:
            cap = cv2.VideoCapture(str(request.source))
            cap.set(cv2.CAP_PROP_POS_FRAMES, first)
            for index in range(first, last + 1):
                ok, frame = cap.read()
                if index not in todo:
                    continue
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"cancelled after {done} of {total} frames")
                time.sleep(delay)
                if not ok:
                    frame = np.zeros((36, 64, 3), np.uint8)
                image = cv2.resize(255 - frame, (64, 36))
                media.write_frame(Path(pattern % index), image[..., ::-1], fsync=False)  # the real atomic writer
                if log:
                    with open(log, "a") as fh:
                        fh.write(f"{os.getpid()} {index}\n")
                done += 1
                emit("rendering")
            cap.release()
        if movie:
            emit("encoding")
            tmp = out.with_name(".tmp-" + out.name)
            cmd = ["ffmpeg", "-v", "error", "-y", "-framerate", "30", "-start_number", str(first), "-i", pattern,
                   "-frames:v", str(total), "-c:v", "mpeg4" if out.suffix == ".mp4" else "png", str(tmp)]
            subprocess.run(cmd, check=True, capture_output=True)
            os.replace(tmp, out)
            if not request.keep_frames:
                shutil.rmtree(request.work_dir, ignore_errors=True)
        emit("done", 0.0)
    finally:
        with _INTERVALS_LOCK:
            INTERVALS.append((str(out), start, time.monotonic()))
    return SimpleNamespace(output=out if movie else out.parent, kind="movie" if movie else "sequence",
                           pattern=pattern, first_frame=first, last_frame=last, written=len(todo),
                           skipped=total - len(todo), fps=30.0)


def stuck_render(request, progress=None, cancel=None):
    """A render whose first frame keeps torch busy for FAKE_STUCK_SECONDS (default 120) and never looks at
    `cancel` (a model load or face detection), like a real frame that outlasts a stop's patience; it touches
    FAKE_STUCK_MARK when the frame starts. For subprocess servers (`--render-fn test_jobs:stuck_render`)."""
    import torch

    first, last = request.frames
    if progress is not None:
        progress(SimpleNamespace(stage="rendering", frames_done=0, frames_total=last - first + 1, faces=0,
                                 eta_seconds=None))
    Path(os.environ["FAKE_STUCK_MARK"]).write_text(str(os.getpid()))
    a = torch.randn(128, 128)
    end = time.monotonic() + float(os.environ.get("FAKE_STUCK_SECONDS", "120"))
    while time.monotonic() < end:
        a = torch.tanh(a @ a)
    raise RuntimeError("the stuck frame ended: nobody stopped the engine")


def make_fake_render(delay=0.02, log=None):
    def render(request, progress=None, cancel=None):
        return fake_render(request, progress, cancel, delay=delay, log=log)
    return render


# --------------------------------------------------------------------------- helpers

def cpu(_name):
    return "cpu"


def submission(tmp_path, **over):
    body = {"source": str(CLIP), "frames": [0, 4], "params": {"device": "cpu"},
            "output": {"folder": str(tmp_path / "out"), "kind": "sequence"}}
    for key, value in over.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def wait_state(store, job_id, states, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {store.get(job_id)['state']} after {timeout}s")


# --------------------------------------------------------------------------- request checks

@needs_clip
def test_parse_submission_defaults(tmp_path):
    spec = parse_submission({"source": str(CLIP), "output": {"folder": str(tmp_path)}})
    assert spec.frames == (0, 71)
    assert spec.kind == "sequence" and spec.stem == "single_face_toon" and not spec.explicit_name
    assert spec.params["swap_res"] == 64 and spec.device == "auto"   # resolved later, by the queue
    assert parse_submission({"source": str(CLIP), "params": {"device": "cuda"}, "output": {"folder": str(tmp_path)}},
                            device_check=lambda name: name).device == "cuda"
    assert spec.fps == pytest.approx(30.0)
    out = spec.output_for(spec.stem, tmp_path / "work", "abc")
    assert out["pattern"] == str(tmp_path / "single_face_toon.%06d.png")
    movie = JobSpec(**{**spec.__dict__, "kind": "movie"}).output_for("x", tmp_path / "work", "abc")
    assert movie["path"] == str(tmp_path / "x.mp4") and movie["work_dir"] == str(tmp_path / "work" / "abc")


@needs_clip
@pytest.mark.parametrize("change, field, status", [
    ({"colour": 1}, "colour", 400),
    ({"source": ...}, "source", 400),
    ({"source": 5}, "source", 400),
    ({"source": "relative/clip.mp4"}, "source", 400),
    ({"source": "/no/such/clip.mp4"}, "source", 400),
    ({"frames": [0]}, "frames", 400),
    ({"frames": [0, "9"]}, "frames", 400),
    ({"frames": [True, 3]}, "frames", 400),
    ({"frames": [5, 2]}, "frames", 422),
    ({"frames": [0, 72]}, "frames", 422),
    ({"frames": [-1, 3]}, "frames", 422),
    ({"params": []}, "params", 400),
    ({"params": {"swap_res": 48}}, "params.swap_res", 422),
    ({"params": {"steps": 0}}, "params.steps", 422),
    ({"params": {"feather": 0.9}}, "params.feather", 422),
    ({"params": {"wobble": 1}}, "params.wobble", 422),
    ({"params": {"device": "tpu"}}, "params.device", 422),
    ({"output": []}, "output", 400),
    ({"output": {"folder": "/tmp/x", "format": "exr"}}, "output.format", 400),
    ({"output": {"folder": "/tmp/x", "kind": "gif"}}, "output.kind", 400),
    ({"output": {"folder": "rel/out"}}, "output.folder", 400),
    ({"output": {"folder": "/"}}, "output.folder", 400),
    ({"output": {"folder": "/etc/toon"}}, "output.folder", 400),
    ({"output": {"folder": "/usr/local/share/toon"}}, "output.folder", 400),
    ({"output": {"folder": str(CLIP)}}, "output.folder", 400),
    ({"output": {"folder": "/tmp/x", "name": "../escape"}}, "output.name", 400),
    ({"output": {"folder": "/tmp/x", "name": "a%06d"}}, "output.name", 400),
    ({"output": {"folder": "/tmp/x", "name": ""}}, "output.name", 400),
    ({"output": {"folder": "/tmp/x", "name": 7}}, "output.name", 400),
])
def test_parse_submission_rejects(tmp_path, change, field, status):
    with pytest.raises(RequestError) as err:
        parse_submission(submission(tmp_path, **change), device_check=cpu, default_folder=str(tmp_path))
    assert err.value.field == field, err.value.message
    assert err.value.http_status == status
    assert err.value.message


def test_parse_submission_rejects_non_media(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a movie at all\n")
    with pytest.raises(RequestError) as err:
        parse_submission(submission(tmp_path, source=str(text)), device_check=cpu)
    assert err.value.field == "source" and err.value.http_status < 500
    assert text.read_text() == "not a movie at all\n"


@needs_clip
def test_output_movie_equal_to_source_refused(tmp_path):
    src = tmp_path / "clip.mp4"
    shutil.copy(CLIP, src)
    body = submission(tmp_path, source=str(src), output={"folder": str(tmp_path), "kind": "movie", "name": "clip"})
    with pytest.raises(RequestError) as err:
        parse_submission(body, device_check=cpu)
    assert err.value.field == "output.name"


def test_output_inside_source_sequence_refused(tmp_path):
    import cv2
    import numpy as np

    seq = tmp_path / "plate"
    seq.mkdir()
    for i in range(3):
        cv2.imwrite(str(seq / f"plate.{i:04d}.png"), np.full((16, 16, 3), i * 40, np.uint8))
    for folder in (seq, seq / "sub"):
        with pytest.raises(RequestError) as err:
            parse_submission({"source": str(seq), "output": {"folder": str(folder)}}, device_check=cpu)
        assert err.value.field == "output.folder"
    with pytest.raises(RequestError) as err:  # a frame of a sequence: its folder is off limits too
        parse_submission({"source": str(seq / "plate.0000.png"), "output": {"folder": str(seq)}},
                         device_check=cpu)
    assert err.value.field == "output.folder"


def test_system_folders():
    for folder in ("/", "/etc", "/etc/", "/usr/bin/x", "/bin", "/proc/1", "/System/Library", "/var"):
        assert is_system_folder(folder), folder
    for folder in ("/tmp/renders", "/home/someone/renders", os.path.expanduser("~/renders")):
        assert not is_system_folder(folder), folder


def test_check_name():
    assert check_name("shot 010_toon") == "shot 010_toon"
    for bad in ("a/b", "..", ".hidden", "x:y", "con", "a\x00b", "trailing.", " x"):
        with pytest.raises(RequestError):
            check_name(bad)


@needs_clip
def test_parse_preview(tmp_path):
    assert parse_preview({"source": str(CLIP), "frame": 3})[1] == 3
    for body, field in (({"source": str(CLIP), "frame": 72}, "frame"), ({"source": str(CLIP), "frame": 1.5}, "frame"),
                        ({"source": str(CLIP), "params": {"steps": -1}}, "params.steps"),
                        ({"source": str(CLIP), "extra": 1}, "extra")):
        with pytest.raises(RequestError) as err:
            parse_preview(body)
        assert err.value.field == field


# --------------------------------------------------------------------------- the store

def _spec(tmp_path, **over):
    base = dict(source=str(CLIP), frames=(0, 4), params={"device": "cpu", "seed": 0, "output_kind": "frame"},
                kind="sequence", folder=str(tmp_path / "out"), stem="clip_toon", explicit_name=False, device="cpu",
                fps=30.0, frame_count=72)
    base.update(over)
    return JobSpec(**base)


def test_store_unique_names_and_conflicts(tmp_path):
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    (tmp_path / "out").mkdir()
    a = store.add(_spec(tmp_path))
    b = store.add(_spec(tmp_path))
    assert a["output"]["name"] == "clip_toon" and b["output"]["name"] == "clip_toon_2"
    (tmp_path / "out" / "clip_toon_3.000000.png").write_bytes(b"x")  # a file on disk claims the name too
    assert store.add(_spec(tmp_path))["output"]["name"] == "clip_toon_4"
    with pytest.raises(Conflict) as err:
        store.add(_spec(tmp_path, explicit_name=True))
    assert err.value.field == "output.name" and err.value.http_status == 409
    assert store.add(_spec(tmp_path, stem="mine", explicit_name=True))["output"]["name"] == "mine"
    assert [j["state"] for j in store.list()] == ["queued"] * 4
    store.close()


def test_store_recover_after_crash(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    ids = [store.add(_spec(tmp_path, stem=f"s{i}"))["id"] for i in range(3)]
    for _ in ids:
        store.claim_next("cpu")
    store.request_cancel(ids[1])                      # running + cancel asked, then the process died
    store._db.execute("UPDATE jobs SET crashes=? WHERE id=?", (MAX_CRASHES - 1, ids[2]))
    store._db.close()                                 # no clean shutdown
    store = JobStore(path)
    assert store.recover() == [ids[0]]
    assert [store.get(i)["state"] for i in ids] == ["queued", "cancelled", "failed"]
    assert "giving up" in store.get(ids[2])["error"]
    assert store.claim_next("cpu")["id"] == ids[0]
    assert store.get(ids[0])["attempts"] == 2
    store.close()


def test_store_is_wal(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    con = sqlite3.connect(str(tmp_path / "jobs.sqlite3"))
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    con.close()


# --------------------------------------------------------------------------- the queue

@needs_clip
def test_queue_fifo_one_at_a_time_per_device(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    resolved = []

    def resolver(name):
        resolved.append(name)
        return {"auto": "cpu"}.get(name, name)

    queue = JobQueue(store, render_fn=make_fake_render(delay=0.03), device_resolver=resolver)
    queue.start()
    before = len(INTERVALS)
    # "auto" resolves to the cpu here, so it shares the cpu's queue
    ids = [queue.submit(_spec(tmp_path, stem=f"cpu{i}", device=d))["id"] for i, d in enumerate(("cpu", "auto", "cpu"))]
    other = queue.submit(_spec(tmp_path, stem="gpu", device="cuda:7"))["id"]   # another device: runs alongside
    jobs = [wait_state(store, i, {"done"}) for i in ids + [other]]
    queue.stop()
    mine = {Path(o).name.split(".")[0]: (s, e) for o, s, e in INTERVALS[before:]}
    cpu_runs = [mine[f"cpu{i}"] for i in range(3)]
    assert all(cpu_runs[i][1] <= cpu_runs[i + 1][0] for i in range(2)), "cpu jobs overlapped or ran out of order"
    gs, ge = mine["gpu"]
    assert any(s < ge and gs < e for s, e in cpu_runs), "jobs on different devices should run side by side"
    assert sorted(resolved) == ["auto", "cpu", "cuda:7"], "each device name is resolved once"
    for job in jobs:
        assert job["progress"]["frames_done"] == 5 and job["progress"]["stage"] == "done"
        assert job["result"]["first_frame"] == 0 and job["result"]["last_frame"] == 4
        for i in range(5):
            assert os.path.exists(job["result"]["pattern"] % i)
    store.close()


@needs_clip
def test_queue_failures_are_reported(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")

    def resolver(name):
        if name == "cuda:9":
            raise RequestError("device 'cuda:9' does not exist", field="params.device", status=422)
        return name

    queue = JobQueue(store, render_fn=make_fake_render(delay=0), device_resolver=resolver)
    queue.start()
    gone = queue.submit(_spec(tmp_path, stem="gone", device="cuda:9"))["id"]
    assert wait_state(store, gone, {"failed"})["error"] == "device 'cuda:9' does not exist"
    user = queue.submit(_spec(tmp_path, stem="a", params={"seed": FAIL_USER_SEED, "output_kind": "frame"}))["id"]
    crash = queue.submit(_spec(tmp_path, stem="b", params={"seed": FAIL_CRASH_SEED, "output_kind": "frame"}))["id"]
    ok = queue.submit(_spec(tmp_path, stem="c"))["id"]
    assert wait_state(store, user, {"failed"})["error"] == "the fake renderer was told to fail"
    assert wait_state(store, crash, {"failed"})["error"] == "internal error: RuntimeError: fake crash"
    assert wait_state(store, ok, {"done"})["result"]["kind"] == "sequence"
    queue.stop()
    store.close()


@needs_clip
def test_queue_cancel_and_shutdown_requeue(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(store, render_fn=make_fake_render(delay=0.1))
    queue.start()
    a = queue.submit(_spec(tmp_path, stem="a", frames=(0, 40)))["id"]
    b = queue.submit(_spec(tmp_path, stem="b", frames=(0, 40)))["id"]
    wait_state(store, a, {"running"})
    previous, job = queue.cancel(b)                   # queued: cancelled at once
    assert previous == "queued" and job["state"] == "cancelled"
    deadline = time.monotonic() + 10
    while store.get(a)["progress"]["frames_done"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    queue.stop()                                      # shutdown: the running job goes back to the queue
    job = store.get(a)
    assert job["state"] == "queued" and 2 <= job["progress"]["frames_done"] < 41
    queue = JobQueue(store, render_fn=make_fake_render(delay=0.0))
    queue.start()
    assert wait_state(store, a, {"done"})["attempts"] == 2
    assert store.get(b)["state"] == "cancelled"
    queue.stop()
    store.close()


@needs_clip
def test_queue_movie_is_moved_into_place_and_never_overwritten(tmp_path):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed")
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    queue = JobQueue(store, render_fn=make_fake_render(delay=0))
    queue.start()
    (tmp_path / "out").mkdir()
    job = wait_state(store, queue.submit(_spec(tmp_path, kind="movie"))["id"], {"done", "failed"})
    assert job["state"] == "done", job["error"]
    movie = Path(job["result"]["path"])
    assert movie == tmp_path / "out" / "clip_toon.mp4" and movie.stat().st_size > 0
    assert not Path(partial_movie(str(movie))).exists()
    assert not (tmp_path / "data" / "work" / job["id"]).exists(), "frames of a finished movie are cleaned up"
    stat = movie.stat()
    again = wait_state(store, queue.submit(_spec(tmp_path, kind="movie"))["id"], {"done", "failed"})
    assert again["result"]["path"] == str(tmp_path / "out" / "clip_toon_2.mp4")
    assert (movie.stat().st_ino, movie.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    # a file that appears at the output name while the job waits is not overwritten
    store_only = store.add(_spec(tmp_path, kind="movie", stem="late"))
    (tmp_path / "out" / "late.mp4").write_bytes(b"someone else's")
    queue._ensure_worker("cpu")
    with queue._cond:
        queue._cond.notify_all()
    late = wait_state(store, store_only["id"], {"done", "failed"})
    assert late["state"] == "failed" and "never overwritten" in late["error"]
    assert (tmp_path / "out" / "late.mp4").read_bytes() == b"someone else's"
    queue.stop()
    store.close()
