"""Engine process front: crowds, slow clients and the client's proof, as ratios within one run.

    python bench/bench_service.py [--clients 100] [--slow 60] [--rounds 30]

An in-process engine (stand-in renderer, loopback only) measures:
- burst: `--clients` clients asking at once (each proves the server and asks for health) against
  the same clients one after another: wall-time ratio, and how many failed (should be 0);
- slow clients: health latency (median) while `--slow` sockets trickle their headers, against none;
- proof: a new client's first request (challenge + request) against its later requests (median).
Results are printed and written as JSON to bench/results/service.json (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from slow_clients import trickling_headers  # noqa: E402
from toon_ofx.client import EngineClient  # noqa: E402
from toon_ofx.service.server import Server  # noqa: E402


def _idle_render(request, progress=None, cancel=None):  # never called: no job is submitted
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--slow", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        server = Server(config_dir=Path(folder) / "config", data_dir=Path(folder) / "data",
                        render_fn=_idle_render, model_check=None, head_timeout=30.0)
        with server:
            results = {"burst": burst(server, args.clients), "slow_clients": slow_clients(server, args.slow, args.rounds),
                       "proof": proof_cost(server, args.rounds)}
    print(json.dumps(results, indent=1))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "service.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
