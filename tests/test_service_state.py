"""The engine's state on disk: full disks, damaged databases, private folders, path rules, and the order of
state changes and file work (issue 16 items 3, 5, 7, 12, 14)."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_jobs import CLIP, REPO, _spec, fake_render, needs_clip  # noqa: E402
from test_server import call, token_of, wait_job  # noqa: E402

from toon_ofx.client import EngineClient, EngineError  # noqa: E402
from toon_ofx.core.errors import UserError  # noqa: E402
from toon_ofx.service.outputs import partial_movie  # noqa: E402
from toon_ofx.service.store import JobStore  # noqa: E402
from toon_ofx.service.server import Server  # noqa: E402

PY = sys.executable
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and mounts")


def _server(tmp_path, **kw):
    kw.setdefault("render_fn", fake_render)
    return Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", model_check=None, **kw).start()


# --------------------------------------------------------------------------- item 3: full disks

class _DiskFull:
    """The store's connection, with writes failing like SQLite's on a full disk while `full` is set."""

    def __init__(self, db, full):
        self._db, self._full = db, full

    def execute(self, sql, *args):
        if self._full.is_set() and sql.lstrip().upper().startswith(("BEGIN", "INSERT", "UPDATE", "DELETE")):
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


@needs_clip
def test_a_full_data_disk_never_leaves_a_job_running(tmp_path):
    gate, full = threading.Event(), threading.Event()

    def gated(request, progress=None, cancel=None):
        gate.wait(60)
        return fake_render(request, progress, cancel, delay=0.0)

    server = _server(tmp_path, render_fn=gated)
    try:
        client = EngineClient(server.url, server.token)
        first = client.submit(str(CLIP), frames=(0, 2), output_folder=str(tmp_path / "out"))
        second = client.submit(str(CLIP), frames=(3, 4), output_folder=str(tmp_path / "out"))
        deadline = time.monotonic() + 30
        while client.job(first["id"])["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        server.store._db = _DiskFull(server.store._db, full)
        full.set()
        gate.set()
        done = client.wait(first["id"], poll=0.02, timeout=30)   # its end is shown although not yet on disk
        assert done["state"] == "done" and done["result"]["last_frame"] == 2
        time.sleep(1.0)   # margin for a worker that (wrongly) moved on
        assert client.job(second["id"])["state"] == "queued", "a job started before the last end was saved"
        assert client.jobs(state="running") == []
        with pytest.raises(EngineError) as err:
            client.submit(str(CLIP), frames=(0, 1), output_folder=str(tmp_path / "out"))
        assert err.value.status == 507 and str(tmp_path / "data" / "jobs.sqlite3") in str(err.value)
        assert client.health()["service"] == "toon-ofx"
        full.clear()                                          # space again
        assert client.wait(second["id"], poll=0.02, timeout=60)["state"] == "done"
    finally:
        gate.set()
        full.clear()
        server.shutdown()
    con = sqlite3.connect(str(tmp_path / "data" / "jobs.sqlite3"))
    assert dict(con.execute("SELECT id, state FROM jobs").fetchall()) == {first["id"]: "done", second["id"]: "done"}
    con.close()


def _unshare_works():
    if not shutil.which("unshare") or os.name != "posix":
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@needs_clip
@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm to mount a small tmpfs")
def test_a_full_output_disk_fails_the_job_naming_the_folder(tmp_path):
    """A real 96 KB tmpfs as the output folder: the job fails with a clear message naming the folder (not
    "internal error"), and the queue goes on."""
    out = tmp_path / "small"
    out.mkdir()
    env = dict(os.environ, TOON_OFX_CONFIG_DIR=str(tmp_path / "config"), TOON_OFX_DATA_DIR=str(tmp_path / "data"),
               FAKE_RENDER_DELAY="0", PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    script = f'mount -t tmpfs -o size=96k tmpfs "{out}" && exec "$@"'
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(["unshare", "-rm", "sh", "-c", script, "sh", PY, "-m", "toon_ofx", "serve", "--port", "0",
                             "--render-fn", "test_jobs:fake_render"], env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        info = tmp_path / "config" / "server.json"
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.05)
        url, token = json.loads(info.read_text())["url"], token_of(tmp_path)
        body = {"source": str(CLIP), "frames": [0, 71], "output": {"folder": str(out)}}
        status, job = call(url, "/v1/jobs", "POST", body, token=token)
        assert status == 201, job
        failed = wait_job(url, token, job["id"])
        assert failed["state"] == "failed", failed
        assert failed["error"].startswith(f"no space left on the disk of {out}"), failed["error"]
        assert 0 < failed["progress"]["frames_done"] < 72
        status, job = call(url, "/v1/jobs", "POST", {**body, "output": {"folder": str(tmp_path / "big")}},
                           token=token)
        assert wait_job(url, token, job["id"])["state"] == "done"
    finally:
        proc.terminate()
        proc.wait(30)


# --------------------------------------------------------------------------- item 5: damaged databases

def _make_jobs(tmp_path, count):
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    (tmp_path / "out").mkdir(exist_ok=True)
    ids = [store.add(_spec(tmp_path, stem=f"job{i:03d}", params={"device": "cpu", "seed": 0, "output_kind": "frame",
                                                                   "pad": "x" * 300}))["id"] for i in range(count)]
    store.close()
    return ids


@pytest.mark.parametrize("damage", ["empty", "garbage header", "bad page"])
def test_a_damaged_database_is_moved_aside_and_rebuilt(tmp_path, damage, caplog):
    ids = _make_jobs(tmp_path, 120)
    db = tmp_path / "data" / "jobs.sqlite3"
    data = bytearray(db.read_bytes())
    assert len(data) > 16 * 4096
    if damage == "empty":
        data = bytearray()
    elif damage == "garbage header":
        data[:100] = os.urandom(100)
    else:  # the table page that holds job 60 (its output record names it; no index does)
        page = data.find(b'"name": "job060"') // 4096
        data[page * 4096:(page + 1) * 4096] = os.urandom(4096)
    db.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        server = _server(tmp_path)
    try:
        aside = sorted((tmp_path / "data").glob("jobs.sqlite3.damaged-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == bytes(data), "the damaged file is kept as it was"
        notices = server.health()["notices"]
        assert len(notices) == 1 and "was damaged" in notices[0] and aside[0].name in notices[0]
        assert [r.message for r in caplog.records if "was damaged" in r.getMessage()] == notices
        jobs = EngineClient(server.url, server.token).jobs()
        recovered = [j["id"] for j in jobs]
        assert f"the {len(recovered)} job(s) that could still be read" in notices[0]
        if damage == "bad page":
            assert 0 < len(recovered) < len(ids) and set(recovered) <= set(ids)
        else:
            assert recovered == []
        assert call(server.url, "/v1/jobs?state=queued", token=server.token)[0] == 200
    finally:
        server.shutdown()
    assert JobStore(db).notice is None, "the rebuilt database is sound"


def test_serve_starts_on_a_garbage_database_with_one_clear_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "jobs.sqlite3").write_bytes(b"this is not a database" * 100)
    env = dict(os.environ, TOON_OFX_CONFIG_DIR=str(tmp_path / "config"), TOON_OFX_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen([PY, "-m", "toon_ofx", "serve", "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "config" / "server.json").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    assert "toon-ofx: the job database" in err and "file is not a database" in err


# --------------------------------------------------------------------------- item 7: private folders

@posix_only
def test_private_folders_are_tightened_and_an_exposed_token_replaced(tmp_path):
    for name in ("config", "data"):
        (tmp_path / name).mkdir(mode=0o777)
        os.chmod(tmp_path / name, 0o777)
    (tmp_path / "config" / "token").write_text("k" * 43 + "\n")
    os.chmod(tmp_path / "config" / "token", 0o644)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for pid in range(os.getpid() - 5, os.getpid() + 50):   # the old predictable temp names, planted as symlinks
        (tmp_path / "config" / f".server.json.{pid}.tmp").symlink_to(victim)
    server = _server(tmp_path)
    try:
        for name in ("config", "data"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o700, name
        assert server.token != "k" * 43 and (tmp_path / "config" / "token").stat().st_mode & 0o777 == 0o600
        assert victim.read_text() == "precious" and not victim.is_symlink()
        info = tmp_path / "config" / "server.json"
        assert not info.is_symlink() and info.stat().st_mode & 0o777 == 0o600
        assert json.loads(info.read_text())["pid"] == os.getpid()
    finally:
        server.shutdown()


@posix_only
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_folder_of_another_user_is_refused(tmp_path):
    (tmp_path / "config").mkdir(mode=0o700)
    os.chown(tmp_path / "config", 65534, 65534)
    with pytest.raises(UserError, match="belongs to another user"):
        _server(tmp_path)


# --------------------------------------------------------------------------- item 12: path rules

@needs_clip
def test_model_paths_follow_the_same_rules_as_every_path(tmp_path, tiny_model_paths, monkeypatch):
    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=fake_render).start()
    try:
        base, toon = tiny_model_paths["base"], tiny_model_paths["toon"]
        for model, words in (("~/tiny-toon.pt", "absolute"), ("models/tiny-toon.pt", "absolute"),
                             ("./tiny-toon.pt", "absolute"), ("tiny-toon.pt", "absolute"),
                             (f"{toon}\x00", "NUL")):
            for path, body in (("/v1/jobs", {"source": str(CLIP), "output": {"folder": str(tmp_path / "o")}}),
                               ("/v1/preview", {"source": str(CLIP)})):
                body["params"] = {"model": model, "base_model": str(base)}
                status, answer = call(server.url, path, "POST", body, token=server.token)
                assert (status, answer["field"]) == (400, "params.model") and words in answer["error"], answer
        # a non-normalised absolute path is normalised before use; the client makes relative ones absolute
        odd = f"{toon.parent}/../{toon.parent.name}/{toon.name}"
        client = EngineClient(server.url, server.token)
        job = client.submit(str(CLIP), frames=(0, 1), params={"model": odd, "base_model": str(base)},
                            output_folder=str(tmp_path / "o"))
        assert job["params"]["model"] == str(toon)
        monkeypatch.chdir(toon.parent)
        job = client.submit(str(CLIP), frames=(0, 1), params={"model": toon.name, "base_model": str(base)},
                            output_folder=str(tmp_path / "o"))
        assert job["params"]["model"] == str(toon)
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- item 14: state after file work

@needs_clip
def test_a_job_is_done_only_after_its_work_folder_is_gone(tmp_path, monkeypatch):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed")
    from toon_ofx.service.runner import JobRunner

    removing, release, seen = threading.Event(), threading.Event(), {}
    original = JobRunner.drop_work_dir

    def slow_drop(self, output):
        if output.get("kind") == "movie":
            seen["work_dir"] = output["work_dir"]
            removing.set()
            release.wait(30)
        return original(self, output)

    monkeypatch.setattr(JobRunner, "drop_work_dir", slow_drop)
    server = _server(tmp_path)
    try:
        client = EngineClient(server.url, server.token)
        job = client.submit(str(CLIP), frames=(0, 2), output_folder=str(tmp_path / "out"), output_kind="movie")
        assert removing.wait(60)
        assert os.path.isdir(seen["work_dir"])
        assert client.job(job["id"])["state"] == "running", "done was recorded before the frames were removed"
        release.set()
        done = client.wait(job["id"], poll=0.02, timeout=30)
        assert done["state"] == "done" and not os.path.exists(seen["work_dir"])
    finally:
        release.set()
        server.shutdown()


def test_a_cancel_interrupted_by_a_crash_ends_cancelled_without_its_partial_movie(tmp_path):
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    (tmp_path / "out").mkdir()
    job = store.add(_spec(tmp_path, kind="movie"))
    store.claim_next("cpu")
    store.request_cancel(job["id"])
    partial = Path(partial_movie(job["output"]["path"]))
    partial.write_bytes(b"half a movie")
    store._db.close()                                     # the engine died while stopping the job
    from toon_ofx.service.workers import JobQueue

    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    queue = JobQueue(store, render_fn=fake_render)
    assert queue.start() == []
    assert store.get(job["id"])["state"] == "cancelled" and not partial.exists()
    queue.stop()
    store.close()


# --------------------------------------------------------------------------- issue 22 item 4: model files

@needs_clip
def test_a_model_file_that_is_not_a_checkpoint_is_a_422_naming_its_field(tmp_path, tiny_model_paths):
    """params.model / base_model / encoder naming a file that is no checkpoint (a text file, a zip that is not
    a torch file, an empty file, a folder, a pipe) is refused at submit, for jobs and previews alike; any
    torch file passes (a VToonify style is a torch zip with `g_ema`, not a StyleGAN2 generator)."""
    import torch
    import zipfile

    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=fake_render).start()
    bad = tmp_path / "bad"
    bad.mkdir()
    with zipfile.ZipFile(bad / "archive.pt", "w") as zf:
        zf.writestr("notes.txt", "not a checkpoint")
    (bad / "empty.pt").write_bytes(b"")
    (bad / "folder.pt").mkdir()
    os.mkfifo(bad / "pipe.pt")
    not_checkpoints = {"/etc/passwd": "not a model checkpoint", str(bad / "archive.pt"): "not a model checkpoint",
                       str(bad / "empty.pt"): "empty", str(bad / "folder.pt"): "folder",
                       str(bad / "pipe.pt"): "not a regular file"}
    base, toon = str(tiny_model_paths["base"]), str(tiny_model_paths["toon"])
    try:
        for name in ("model", "base_model", "encoder"):
            for path, words in not_checkpoints.items():
                for endpoint, body in (("/v1/jobs", {"source": str(CLIP), "output": {"folder": str(tmp_path / "o")}}),
                                       ("/v1/preview", {"source": str(CLIP)})):
                    body["params"] = dict({"model": toon, "base_model": base}, **{name: path})
                    status, answer = call(server.url, endpoint, "POST", body, token=server.token, timeout=30)
                    assert (status, answer["field"]) == (422, f"params.{name}"), (name, path, answer)
                    assert words in answer["error"] and os.path.basename(path) in answer["error"], answer
        style = tmp_path / "vtoonify_style.pt"
        torch.save({"g_ema": {"weight": torch.zeros(2)}}, style)
        status, answer = call(server.url, "/v1/jobs", "POST",
                              {"source": str(CLIP), "frames": [0, 1], "output": {"folder": str(tmp_path / "o")},
                               "params": {"model": str(style), "base_model": base, "inversion": "projection"}},
                              token=server.token, timeout=30)
        assert status == 201, answer
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- issue 22 item 5: files and folders

@posix_only
@needs_clip
def test_the_job_database_and_its_journal_are_private(tmp_path):
    """jobs.sqlite3, -wal and -shm are 0600 whatever the umask, and an older 0644 database is closed at start."""
    old = os.umask(0o022)
    try:
        server = _server(tmp_path)
        try:
            EngineClient(server.url, server.token).submit(str(CLIP), frames=(0, 1),
                                                          output_folder=str(tmp_path / "o"))
            files = [tmp_path / "data" / f"jobs.sqlite3{suffix}" for suffix in ("", "-wal", "-shm")]
            assert all(f.exists() for f in files)
            assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: "0o600" for f in files}
        finally:
            server.shutdown()
        for f in (tmp_path / "data").glob("jobs.sqlite3*"):
            os.chmod(f, 0o644)
        server = _server(tmp_path)
        try:
            for f in (tmp_path / "data").glob("jobs.sqlite3*"):
                assert f.stat().st_mode & 0o777 == 0o600, f
        finally:
            server.shutdown()
    finally:
        os.umask(old)


SECRET_FOLDERS = [".ssh", ".gnupg", ".config/autostart", ".aws", ".kube", ".docker", ".password-store",
                  ".local/share/keyrings"]


@posix_only
@needs_clip
def test_output_folders_inside_the_users_secret_folders_are_refused(tmp_path, monkeypatch):
    """The engine user's own key, credential and configuration folders are no place for renders (an output
    there could plant files such as an autostart entry): 422 naming output.folder, also through a symlink,
    and nothing is created."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    server = _server(tmp_path)
    try:
        (tmp_path / "innocent").symlink_to(home / ".ssh")
        for folder in [home / name / "renders" for name in SECRET_FOLDERS] + [tmp_path / "innocent" / "r"]:
            status, answer = call(server.url, "/v1/jobs", "POST",
                                  {"source": str(CLIP), "output": {"folder": str(folder)}}, token=server.token)
            assert (status, answer["field"]) == (422, "output.folder") and "private" in answer["error"], answer
        assert sorted(p.name for p in home.iterdir()) == []
        status, answer = call(server.url, "/v1/jobs", "POST",
                              {"source": str(CLIP), "frames": [0, 0], "output": {"folder": str(home / "renders")}},
                              token=server.token)
        assert status == 201, answer
    finally:
        server.shutdown()


@posix_only
@needs_clip
def test_created_output_folders_follow_the_umask(tmp_path):
    """Output folders are made with the engine user's umask, as any program of theirs would make them."""
    server = _server(tmp_path)
    old = os.umask(0o022)
    try:
        client = EngineClient(server.url, server.token)
        for umask, mode in ((0o022, 0o755), (0o077, 0o700)):
            os.umask(umask)
            folder = tmp_path / f"out{umask:o}" / "shot"
            client.submit(str(CLIP), frames=(0, 0), output_folder=str(folder))
            assert folder.stat().st_mode & 0o777 == mode and folder.parent.stat().st_mode & 0o777 == mode
    finally:
        os.umask(old)
        server.shutdown()
