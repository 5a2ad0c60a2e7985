"""Slowloris clients for the engine's HTTP front: sockets that never finish their request head.

Used by tests/test_service_http.py and bench/bench_service.py.
"""
from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Iterator, List


@contextmanager
def trickling_headers(port: int, count: int, interval: float, timeout: float) -> Iterator[List[socket.socket]]:
    """`count` loopback sockets that send a request line and then one header byte every `interval`
    seconds, until the block ends (then they are closed); `timeout` bounds each socket operation."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.sendall(f"GET /v1/health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n".encode())
        socks.append(sock)
    stop = threading.Event()

    def trickle():
        while not stop.wait(interval):
            for sock in socks:
                try:
                    sock.send(b"X")
                except OSError:  # the engine closed it (its head deadline)
                    pass

    feeder = threading.Thread(target=trickle)
    feeder.start()
    try:
        yield socks
    finally:
        stop.set()
        feeder.join()
        for sock in socks:
            sock.close()
