"""Engine process front: crowds, slow clients and the client's proof, as ratios within one run.

    python bench/bench_service.py [--clients 100] [--slow 60] [--rounds 30]

An in-process engine (stand-in renderer, loopback only) measures:
- burst: `--clients` clients asking at once (each proves the server and asks for health) against
  the same clients one after another: wall-time ratio, and how many failed (should be 0);
- slow clients: health latency (median) while `--slow` sockets trickle their headers, against none;
- proof: a new client's first request (challenge + request) against its later requests (median);
- submit flood (issue 22): /v1/health latency (p50/p99/max) while `--submitters` clients submit a
  `--frames`-frame clip at once (every submission probes the clip), and how often a client looking
  for the engine meanwhile (`EngineClient.connect(start=False)`) believes none runs (goal: never);
- silent engine: the same look-up against an engine that accepts connections and never answers
  (server.json names a live pid): how often it is taken for no engine at all (goal: never).
Results are printed and written as JSON to bench/results/service.json (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from slow_clients import trickling_headers  # noqa: E402
from toon_ofx.client import EngineClient, EngineError, EngineUnavailable  # noqa: E402
from toon_ofx.service.server import Server  # noqa: E402


def _idle_render(request, progress=None, cancel=None):  # never called: the flood stops the queue first
    raise RuntimeError("no renders in this bench")


def burst(server: Server, clients: int) -> dict:
    def one(errors, barrier=None):
        try:
            client = EngineClient(server.url, server.token, timeout=60)
            if barrier is not None:
                barrier.wait(60)
            client.health()
        except Exception as exc:  # counted
            errors.append(repr(exc))

    errors: list = []
    t = time.perf_counter()
    for _ in range(clients):
        one(errors)
    sequential = time.perf_counter() - t
    barrier = threading.Barrier(clients)
    threads = [threading.Thread(target=one, args=(errors, barrier)) for _ in range(clients)]
    t = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    together = time.perf_counter() - t
    return {"clients": clients, "sequential_s": round(sequential, 3), "simultaneous_s": round(together, 3),
            "ratio": round(together / sequential, 2), "failed": len(errors)}


def slow_clients(server: Server, slow: int, rounds: int) -> dict:
    client = EngineClient(server.url, server.token)
    client.health()

    def median_latency():
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            client.health()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    quiet = median_latency()
    with trickling_headers(server.port, slow, interval=0.05, timeout=30):
        loaded = median_latency()
    return {"slow_sockets": slow, "median_quiet_ms": round(quiet * 1e3, 2),
            "median_with_slow_ms": round(loaded * 1e3, 2), "ratio": round(loaded / quiet, 2)}


def proof_cost(server: Server, rounds: int) -> dict:
    first, later = [], []
    for _ in range(rounds):
        client = EngineClient(server.url, server.token)
        t = time.perf_counter()
        client.health()
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.health()
        later.append(time.perf_counter() - t)
    return {"first_request_ms": round(statistics.median(first) * 1e3, 2),
            "later_request_ms": round(statistics.median(later) * 1e3, 2),
            "ratio": round(statistics.median(first) / statistics.median(later), 2)}


def long_clip(folder: Path, frames: int) -> Path:
    """A `frames`-frame 320x180 H.264 clip made with ffmpeg's test source."""
    path = folder / f"long_{frames}.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=24",
                    "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-g", "24", str(path)],
                   check=True)
    return path


def _percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _look_up(timeout: float) -> str:
    """What EngineClient.connect(start=False) concludes: "found", "none" (no engine runs) or "busy"."""
    try:
        EngineClient.connect(start=False, timeout=timeout, wait=timeout)
        return "found"
    except EngineUnavailable:
        return "none"
    except EngineError:
        return "busy"


def submit_flood(server: Server, clip: Path, folder: Path, submitters: int, lookup_timeout: float) -> dict:
    """Health latency and engine look-ups while `submitters` clients submit `clip` at once."""
    health = EngineClient(server.url, server.token, timeout=120)
    health.health()
    latencies: list = []
    lookups: dict = {"found": 0, "none": 0, "busy": 0}
    errors: list = []
    done = threading.Event()
    barrier = threading.Barrier(submitters + 1)

    def submit(i: int) -> None:
        try:
            client = EngineClient(server.url, server.token, timeout=300)
            client.verify()
            barrier.wait(60)
            client.submit(str(clip), output_folder=str(folder / f"out{i}"), timeout=600)
        except Exception as exc:  # counted
            errors.append(repr(exc)[:200])

    def probe_health() -> None:
        while not done.is_set():
            t = time.perf_counter()
            try:
                health.health()
            except EngineError as exc:
                errors.append(f"health: {exc}")
            latencies.append(time.perf_counter() - t)
            time.sleep(0.02)

    def look_up() -> None:
        while not done.is_set():
            lookups[_look_up(lookup_timeout)] += 1
            time.sleep(0.05)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(submitters)]
    for thread in threads:
        thread.start()
    barrier.wait(60)
    t = time.perf_counter()
    watchers = [threading.Thread(target=probe_health), threading.Thread(target=look_up)]
    for thread in watchers:
        thread.start()
    for thread in threads:
        thread.join(900)
    wall = time.perf_counter() - t
    done.set()
    for thread in watchers:
        thread.join(60)
    return {"submitters": submitters, "wall_s": round(wall, 2), "failed": len(errors), "errors": errors[:3],
            "health_requests": len(latencies), "health_p50_ms": round(_percentile(latencies, 0.5) * 1e3, 1),
            "health_p99_ms": round(_percentile(latencies, 0.99) * 1e3, 1),
            "health_max_ms": round(max(latencies) * 1e3, 1), "lookups": lookups}


def silent_engine(config: Path, rounds: int, lookup_timeout: float) -> dict:
    """Look-ups against server.json naming a live engine (this process) that never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    held = []
    stop = threading.Event()

    def accept() -> None:  # accept and say nothing
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept)
    thread.start()
    info = config / "server.json"
    saved = info.read_text() if info.exists() else None
    info.write_text(json.dumps({"url": f"http://127.0.0.1:{sock.getsockname()[1]}", "pid": os.getpid()}))
    try:
        lookups: dict = {"found": 0, "none": 0, "busy": 0}
        for _ in range(rounds):
            lookups[_look_up(lookup_timeout)] += 1
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        sock.close()
        if saved is not None:
            info.write_text(saved)
    return {"rounds": rounds, "lookups": lookups, "mistaken_for_none": lookups["none"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--slow", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--submitters", type=int, default=64)
    ap.add_argument("--frames", type=int, default=472)
    ap.add_argument("--lookup-timeout", type=float, default=1.0,
                    help="the look-up client's timeout in seconds (default 1)")
    ap.add_argument("--only", choices=("front", "flood"), default=None, help="run one group of measures")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        os.environ["TOON_OFX_CONFIG_DIR"] = str(folder / "config")   # where connect() looks
        os.environ["TOON_OFX_DATA_DIR"] = str(folder / "data")
        server = Server(config_dir=folder / "config", data_dir=folder / "data",
                        render_fn=_idle_render, model_check=None, head_timeout=30.0)
        results = {}
        with server:
            if args.only in (None, "front"):
                results.update(burst=burst(server, args.clients),
                               slow_clients=slow_clients(server, args.slow, args.rounds),
                               proof=proof_cost(server, args.rounds))
            if args.only in (None, "flood"):
                server.queue.stop(timeout=1.0)   # the flood measures submissions, not renders
                results["submit_flood"] = submit_flood(server, long_clip(folder, args.frames), folder,
                                                       args.submitters, args.lookup_timeout)
                results["silent_engine"] = silent_engine(folder / "config", args.rounds, args.lookup_timeout)
    print(json.dumps(results, indent=1))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "service.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
