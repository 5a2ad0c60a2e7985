"""The engine's HTTP front under crowds, slow and malformed clients, and --allow-remote (issue 16 items 4,
8, 9, 13). Loopback only; every loop bounded."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_jobs import CLIP, needs_clip  # noqa: E402
from slow_clients import trickling_headers  # noqa: E402
from test_server import call, start_subprocess_server  # noqa: E402

from toon_ofx.client import EngineClient, proof  # noqa: E402
from toon_ofx.service.server import Server  # noqa: E402


def _hold(request, progress=None, cancel=None):
    """A renderer that holds its job until cancelled (keeps the queue busy without using the CPU)."""
    from toon_ofx.core.errors import Cancelled

    cancel.wait(120)
    raise Cancelled("stopped")


@pytest.fixture
def engine(tmp_path):
    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=_hold,
                    model_check=None, head_timeout=1.0, body_timeout=1.0)
    server.start()
    yield server
    server.shutdown()


def raw(port, data, *, shut=False, timeout=15):
    """Send `data` on a fresh connection and read the whole answer: (status, JSON body or None, raw head)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else None
    try:
        return status, json.loads(body), head
    except ValueError:
        return status, None, head


def request(engine, method, path, body=b"", headers=(), version="HTTP/1.0"):
    lines = [f"{method} {path} {version}", f"Host: 127.0.0.1:{engine.port}", f"Authorization: Bearer {engine.token}",
             *headers]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


# --------------------------------------------------------------------------- item 4: crowds

@needs_clip
def test_one_hundred_simultaneous_clients_lose_nothing(engine, tmp_path):
    clients = 100
    barrier = threading.Barrier(clients)
    jobs, errors = [None] * clients, []

    def one(i):
        try:
            client = EngineClient(engine.url, engine.token, timeout=120)
            barrier.wait(60)
            jobs[i] = client.submit(str(CLIP), frames=(i % 70, i % 70 + 1), output_folder=str(tmp_path / "out"))
        except Exception as exc:  # reported below
            errors.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:5]
    ids = {job["id"] for job in jobs}
    listed = EngineClient(engine.url, engine.token).jobs()
    assert len(ids) == clients and {job["id"] for job in listed} == ids
    assert len({job["output"]["name"] for job in listed}) == clients


# --------------------------------------------------------------------------- item 8: malformed requests

@pytest.mark.parametrize("body, words", [
    (b'{"source": "/x", "frames": [0, 1e999]}', "out of range"),
    (b'{"source": "/x", "frames": [0, -1e999]}', "out of range"),
    (b'{"source": "/x", "frames": [0, 100000000000000000000000]}', "out of range"),
    (b'{"source": "/x", "params": {"feather": 1e400}}', "out of range"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b'{"a":' * 50000 + b"1" + b"}" * 50000, "nested too deeply"),
])
def test_hostile_json_is_a_400_not_a_500(engine, body, words):
    status, answer, _ = raw(engine.port, request(engine, "POST", "/v1/jobs", body))
    assert status == 400 and words in answer["error"], answer
    assert call(engine.url, "/v1/health", token=engine.token)[0] == 200


def test_a_lying_content_length_is_answered_within_the_body_deadline(engine):
    head = request(engine, "POST", "/v1/jobs", b"{}").replace(b"Content-Length: 2", b"Content-Length: 100")
    status, answer, _ = raw(engine.port, head)                    # 2 of 100 bytes, and the client waits
    assert status == 408 and "2 of the 100 bytes" in answer["error"]
    status, answer, _ = raw(engine.port, head, shut=True)         # 2 of 100 bytes, and the client is done
    assert status == 400 and "ended after 2" in answer["error"]


@pytest.mark.parametrize("data, status", [
    (b"GET /v1/health?" + b"x" * 70000 + b" HTTP/1.0\r\n\r\n", 414),
    (b"GET /v1/health HTTP/1.0\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", 431),
    (b"GET /v1/health HTTP/1.0\r\nX-Big: " + b"y" * 70000 + b"\r\n\r\n", 431),
    (b"GET /v1/health HTTP/1.0\r\nX-Big: " + b"y" * 200000, 431),
    (b"BREW /v1/health HTTP/1.0\r\n\r\n", 501),
    (b"GET /v1/health HTTP/2.0\r\n\r\n", 505),
    (b"NONSENSE\r\n\r\n", 400),
])
def test_http_servers_own_errors_are_json(engine, data, status):
    got, answer, head = raw(engine.port, data)
    assert got == status, head
    assert b"application/json" in head and isinstance(answer["error"], str) and answer["field"] is None


# --------------------------------------------------------------------------- item 9: slow clients

def test_slow_headers_are_cut_off_without_tying_up_threads(engine):
    """60 slowloris sockets trickle a header byte at a time: each gets a JSON 408 after the head deadline,
    while other clients are answered and no thread is spent per connection."""
    threads_before = threading.active_count()
    with trickling_headers(engine.port, 60, interval=0.1, timeout=15) as slow:
        client = EngineClient(engine.url, engine.token)
        for _ in range(10):
            assert client.health()["service"] == "toon-ofx"
        assert threading.active_count() - threads_before <= 1   # the feeder; the engine made none
        for sock in slow:
            answer = b""
            while True:  # until the engine closes it; recv's timeout bounds each wait
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(b"HTTP/1.0 408"), answer[:100]
            assert b"did not arrive within 1 s" in answer


def test_too_many_connections_get_a_503(tmp_path):
    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=_hold,
                    model_check=None, head_timeout=30.0)
    server.start()
    held = []
    try:
        server._http.max_connections = 5
        for _ in range(5):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=15))
        deadline = time.monotonic() + 15
        while server._http.open_connections() < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        status, answer, _ = raw(server.port, request(server, "GET", "/v1/health"))
        assert status == 503 and "connections" in answer["error"]
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 15
        while server._http.open_connections() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert call(server.url, "/v1/health", token=server.token)[0] == 200
    finally:
        for sock in held:
            sock.close()
        server.shutdown()


# --------------------------------------------------------------------------- the challenge

def test_challenge_needs_no_token_but_passes_the_browser_guards(engine):
    nonce = "ab" * 16
    status, answer = call(engine.url, "/v1/challenge", "POST", {"nonce": nonce})
    assert status == 200 and answer["proof"] == proof(engine.token, nonce, ("127.0.0.1", engine.port))
    assert call(engine.url, "/v1/challenge", "POST", {"nonce": "short"})[0] == 400
    assert call(engine.url, "/v1/challenge", "GET")[0] == 405
    assert call(engine.url, "/v1/challenge", "POST", {"nonce": nonce}, headers={"Origin": "http://x"})[0] == 403
    assert call(engine.url, "/v1/challenge", "POST", {"nonce": nonce}, headers={"Host": "evil:1"})[0] == 403


# --------------------------------------------------------------------------- item 13: --allow-remote

def test_allow_remote_is_announced_and_keeps_the_host_check(tmp_path):
    server = Server("0.0.0.0", 0, allow_remote=True, config_dir=tmp_path / "config", data_dir=tmp_path / "data",
                    render_fn=_hold, model_check=None)
    with server:
        info = json.loads((tmp_path / "config" / "server.json").read_text())
        assert info["listen"] == f"0.0.0.0:{server.port}" and info["remote"] is True
        assert info["url"] == f"http://127.0.0.1:{server.port}"
        assert any(n.startswith("WARNING") and "0.0.0.0" in n and "not encrypted" in n for n in server.notices)
        assert server.health()["notices"] == server.notices
        for host, status in ((f"127.0.0.1:{server.port}", 200), (f"{socket.gethostname()}:{server.port}", 200),
                             (f"evil.example:{server.port}", 403), ("127.0.0.1:1", 403)):
            assert call(server.url, "/v1/health", token=server.token, headers={"Host": host})[0] == status, host


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_serve_allow_remote_prints_the_real_address_and_a_warning(tmp_path):
    proc, url = start_subprocess_server(tmp_path, "--host", "0.0.0.0", "--allow-remote",
                                        "--render-fn", "test_jobs:fake_render")
    try:
        assert url.startswith("http://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    log = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    port = url.rsplit(":", 1)[1]
    assert f"listening on 0.0.0.0:{port}" in log
    assert "WARNING: --allow-remote" in log and "reachable from other machines" in log
    bad = subprocess.run(
        [sys.executable, "-m", "toon_ofx", "serve", "--public-host", "x"], capture_output=True, text=True,
        timeout=60, env=dict(os.environ, TOON_OFX_CONFIG_DIR=str(tmp_path / "c"), TOON_OFX_DATA_DIR=str(tmp_path / "d")))
    assert bad.returncode == 2 and "--public-host needs --allow-remote" in bad.stderr


# --------------------------------------------------------------------------- issue 22 item 2: slow checks

@needs_clip
def test_health_answers_while_every_source_probe_hangs(tmp_path, monkeypatch):
    """More clients than request threads submit while every source probe hangs (a storage that stopped
    answering): health and the job list still answer, a submission beyond the engine's check slots gets a
    503 with Retry-After at once (no request thread waits on storage), and the client retries it, so every
    submission is queued once the probes end."""
    from toon_ofx.service import requests as checks

    release, probing = threading.Event(), []
    real_probe = checks.probe_source

    def hanging_probe(path, field_name="source"):
        probing.append(path)
        release.wait(120)
        return real_probe(path, field_name)

    monkeypatch.setattr(checks, "probe_source", hanging_probe)
    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=_hold,
                    model_check=None, http_workers=4)
    server.start()
    jobs, errors = [], []

    def submit(i):
        try:
            client = EngineClient(server.url, server.token, timeout=120)
            jobs.append(client.submit(str(CLIP), output_folder=str(tmp_path / f"out{i}"))["id"])
        except Exception as exc:  # noqa: BLE001 - collected
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while not probing and time.monotonic() < deadline:
            time.sleep(0.02)
        assert probing
        watcher = EngineClient(server.url, server.token, timeout=10)
        for _ in range(5):
            assert watcher.health()["service"] == "toon-ofx"
            assert watcher.jobs() == []
        body = json.dumps({"source": str(CLIP), "output": {"folder": str(tmp_path / "raw")}}).encode()
        status, answer, head = raw(server.port, request(server, "POST", "/v1/jobs", body))
        assert status == 503 and b"\r\nRetry-After: " in head and "try again" in answer["error"]
        assert len(set(probing)) == 1 and len(probing) <= 4
    finally:
        release.set()
        for thread in threads:
            thread.join(120)
        server.shutdown()
    assert not errors and len(set(jobs)) == 12


# --------------------------------------------------------------------------- issue 22 item 5: ambiguous heads

@pytest.mark.parametrize("twice", ["Host", "Content-Length"])
def test_a_header_given_twice_is_a_400(engine, twice):
    """Two Host headers (which one did the guard check?) or two Content-Lengths (where does the body end?)
    are refused, whether the copies agree or not."""
    body = b'{"nonce": "' + b"ab" * 16 + b'"}'
    for copy in (f"Host: 127.0.0.1:{engine.port}", "Host: evil.example",
                 f"Content-Length: {len(body)}", "Content-Length: 1"):
        if not copy.startswith(twice):
            continue
        status, answer, _ = raw(engine.port, request(engine, "POST", "/v1/challenge", body, headers=[copy]))
        assert status == 400 and twice in answer["error"], answer
