"""The listening socket: accepts connections, reads request heads, and hands them to a bounded pool.

One selector thread accepts every connection and reads its request head (request line and headers)
without blocking, so a slow or silent client costs a socket, never a thread; a head that is not
complete within `head_timeout` seconds gets a JSON 408, one over MAX_HEAD bytes a 431, and a
connection beyond `max_connections` a 503. Complete heads go to `workers` handler threads, which
read the body (under their own deadline) and answer. The kernel's listen backlog is `backlog`.
"""
from __future__ import annotations

import io
import json
import logging
import queue
import selectors
import socket
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

log = logging.getLogger("toon_ofx.service.listener")

MAX_HEAD = 128 * 1024
MAX_REQUEST_LINE = 65536      # as http.server: a longer request line is a 414


class SocketReader(io.RawIOBase):
    """A connection's bytes: the head already read by the listener, then the socket under a deadline."""

    def __init__(self, head: bytes, sock: socket.socket):
        self._head = memoryview(head)
        self._sock = sock
        self.deadline: Optional[float] = None   # time.monotonic() by which every byte must have arrived

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if len(self._head):
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("the request did not arrive in time")
            self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


def json_reply(status: int, reason: str, message: str, retry_after: Optional[int] = None) -> bytes:
    """A complete HTTP/1.0 answer with the engine's JSON error body (for answers sent outside a handler)."""
    body = json.dumps({"error": message, "field": None}).encode("utf-8")
    retry = f"Retry-After: {retry_after}\r\n" if retry_after else ""
    head = (f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{retry}Connection: close\r\n\r\n")
    return head.encode("ascii") + body


LINGER = 2.0   # seconds an answered-and-refused connection is drained, so the client reads the answer


class _Pending:
    __slots__ = ("sock", "address", "buffer", "deadline", "draining")

    def __init__(self, sock: socket.socket, address: Any, deadline: float):
        self.sock, self.address, self.buffer, self.deadline = sock, address, bytearray(), deadline
        self.draining = False   # answered with an error: what still arrives is read away until EOF


class Listener:
    """Serves `handler_class(sock, address, self, head)` for every complete request head (see module doc).

    Same surface as socketserver's servers where the engine uses it: `server_address`,
    `serve_forever()`, `shutdown()`, `server_close()`.
    """

    def __init__(self, address: Tuple[str, int], handler_class: Callable, *, family: int = socket.AF_INET,
                 workers: int = 16, max_connections: int = 256, head_timeout: float = 10.0, backlog: int = 128):
        self.handler_class = handler_class
        self.workers, self.max_connections, self.head_timeout = workers, max_connections, head_timeout
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address[0] == "::" else 1)
            self.socket.bind(address)
            self.socket.listen(backlog)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self._ready: "queue.Queue[Optional[Tuple[socket.socket, Any, bytes]]]" = queue.Queue()
        self._pending: Dict[socket.socket, _Pending] = {}
        self._lock = threading.Lock()
        self._open = 0                      # connections accepted and not yet closed
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._serving = threading.Event()
        self._stopped = threading.Event()
        self._pool = [threading.Thread(target=self._work, name=f"toon-ofx-http-{i}", daemon=True)
                      for i in range(workers)]
        for thread in self._pool:
            thread.start()

    # -- lifecycle
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept and read heads until shutdown(); `poll_interval` bounds each wait."""
        self._serving.set()
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                soonest = min((p.deadline for p in self._pending.values()), default=now + poll_interval)
                for key, _ in selector.select(max(0.0, min(poll_interval, soonest - now))):
                    if key.data == "accept":
                        self._accept(selector)
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                    else:
                        self._read_head(selector, key.data)
                self._expire(selector, time.monotonic())
        finally:
            for pending in list(self._pending.values()):
                self._drop(selector, pending)
            selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop accepting (requests being handled finish on their own threads)."""
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._serving.is_set():
            self._stopped.wait(5.0)
        for _ in self._pool:
            self._ready.put(None)

    def server_close(self) -> None:
        for sock in (self.socket, self._wake_r, self._wake_w):
            try:
                sock.close()
            except OSError:
                pass

    def open_connections(self) -> int:
        with self._lock:
            return self._open

    # -- the selector side
    def _accept(self, selector: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: try again at the next event
                log.warning("cannot accept a connection: %s", exc)
                return
            with self._lock:
                full = self._open >= self.max_connections
                if not full:
                    self._open += 1
            if full:
                self._refuse(sock, 503, "Service Unavailable",
                             f"the engine has {self.max_connections} connections open; try again shortly")
                continue
            sock.setblocking(False)
            pending = _Pending(sock, address, time.monotonic() + self.head_timeout)
            self._pending[sock] = pending
            selector.register(sock, selectors.EVENT_READ, pending)

    def _read_head(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        try:
            data = pending.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away (or finished sending what we refused)
            self._drop(selector, pending)
            return
        if pending.draining:
            return
        pending.buffer += data
        if b"\r\n\r\n" in pending.buffer or b"\n\n" in pending.buffer or pending.buffer.startswith((b"\r\n", b"\n")):
            selector.unregister(pending.sock)
            del self._pending[pending.sock]
            pending.sock.setblocking(True)
            self._ready.put((pending.sock, pending.address, bytes(pending.buffer)))
        elif len(pending.buffer) > MAX_HEAD:
            line_end = pending.buffer.find(b"\n")
            if line_end < 0 or line_end > MAX_REQUEST_LINE:
                self._fail(selector, pending, 414, "URI Too Long", "the request line is too long")
            else:
                self._fail(selector, pending, 431, "Request Header Fields Too Large",
                           f"the request headers are over {MAX_HEAD} bytes")

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            if pending.draining:
                self._drop(selector, pending)
            else:
                self._fail(selector, pending, 408, "Request Timeout",
                           f"the request headers did not arrive within {self.head_timeout:g} s")

    def _fail(self, selector: selectors.BaseSelector, pending: _Pending, status: int, reason: str,
              message: str) -> None:
        """Answer with a JSON error, then drain the connection for a moment (closing a socket with unread
        data would reset it, and the client would never see the answer)."""
        try:
            pending.sock.send(json_reply(status, reason, message))
            pending.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(selector, pending)
            return
        pending.draining, pending.buffer = True, bytearray()
        pending.deadline = time.monotonic() + LINGER

    def _drop(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        try:
            selector.unregister(pending.sock)
        except (KeyError, ValueError):
            pass
        self._pending.pop(pending.sock, None)
        self._close(pending.sock)

    def _refuse(self, sock: socket.socket, status: int, reason: str, message: str) -> None:
        try:
            sock.setblocking(False)
            sock.send(json_reply(status, reason, message, retry_after=1))
            sock.shutdown(socket.SHUT_WR)
            sock.recv(65536)  # what the client already sent, so closing does not reset the answer away
        except OSError:
            pass
        sock.close()

    def _close(self, sock: socket.socket) -> None:
        try:
            sock.close()
        finally:
            with self._lock:
                self._open -= 1

    # -- the pool side
    def _work(self) -> None:
        while True:
            item = self._ready.get()
            if item is None:
                return
            sock, address, head = item
            try:
                self.handler_class(sock, address, self, head)
            except (BrokenPipeError, ConnectionResetError):   # e.g. flushing the answer to a client gone
                log.info("request from %s: the client went away before its answer", address)
            except Exception:  # the handler answers its own errors; this is a last resort
                log.exception("request from %s failed", address)
            finally:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._close(sock)
