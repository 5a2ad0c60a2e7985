"""The HTTP side of the engine: who may ask (guards), how a request is read, and where it goes (routes).

Every answer is JSON; an error is {"error", "field"} with a 4xx (a RequestError carries its status) or
a 500 that never shows a traceback. The engine behind the routes is a `Server` (toon_ofx.service.server).
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from .. import __version__
from ..core.errors import UserError
from ..core.params import schema
from .errors import NotFound
from .instance import TOKEN_FILE
from .store import STATES

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("toon_ofx.service.handler")

SERVICE = "toon-ofx"
MAX_BODY = 1 << 20


class EngineHTTPServer(ThreadingHTTPServer):
    """The listening socket; a thread per connection, `engine` the Server the handler calls."""

    daemon_threads = True
    allow_reuse_address = False  # never share a port with another live server
    engine: "Server"


class EngineHTTPServer6(EngineHTTPServer):
    address_family = socket.AF_INET6


class _Reply(Exception):
    def __init__(self, status: int, message: str, field: Optional[str] = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _Reply(400, f"field {key!r} is given twice", key)
        out[key] = value
    return out


class Handler(BaseHTTPRequestHandler):
    """One HTTP request: guards (browser, Host, token), body limits, JSON in and out, routing to the engine."""

    server_version = f"{SERVICE}/{__version__}"
    sys_version = ""
    timeout = 60  # seconds a client may take to send its request

    # -- plumbing
    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: use logging
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: Dict[str, Any], headers: Optional[Dict[str, str]] = None) -> None:
        data = json.dumps(body, allow_nan=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, field: Optional[str] = None,
               headers: Optional[Dict[str, str]] = None) -> None:
        self._send(status, {"error": message, "field": field}, headers)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    # -- guards
    def _guard(self) -> None:
        engine: Server = self.server.engine  # type: ignore[attr-defined]
        if self.headers.get("Origin") is not None:
            raise _Reply(403, "requests from web pages are refused (Origin header present)")
        fetch_site = (self.headers.get("Sec-Fetch-Site") or "").lower()
        if fetch_site and fetch_site != "none":
            raise _Reply(403, "requests from web pages are refused (Sec-Fetch-Site)")
        host = (self.headers.get("Host") or "").strip().lower()
        if not engine.allow_remote and host not in engine.allowed_hosts:
            raise _Reply(403, f"Host {host or '(none)'!r} refused: the engine answers only to "
                              f"127.0.0.1:{engine.port} or localhost:{engine.port}")
        auth = self.headers.get("Authorization") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                                 engine.token.encode("ascii")):
            raise _Reply(401, "missing or wrong token: send 'Authorization: Bearer <token>' with the token from "
                              f"{engine.config_dir / TOKEN_FILE}", headers={"WWW-Authenticate": 'Bearer realm="toon-ofx"'})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _Reply(400, "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _Reply(400, "bad Content-Length") from None
        if n < 0:
            raise _Reply(400, "bad Content-Length")
        if n > MAX_BODY:
            self.close_connection = True
            if n <= 16 * MAX_BODY:  # read it away so the client sees the answer rather than a broken pipe
                while n > 0:
                    chunk = self.rfile.read(min(n, 1 << 16))
                    if not chunk:
                        break
                    n -= len(chunk)
            raise _Reply(413, f"the request body is over {MAX_BODY} bytes")
        return self.rfile.read(n)

    def _json_body(self, body: bytes) -> Any:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _Reply(415, "the request body must be JSON with 'Content-Type: application/json'")
        if not body.strip():
            raise _Reply(400, "malformed JSON: the request body is empty")
        try:
            text = body.decode("utf-8")
            return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise _Reply(400, "malformed JSON: the body is not UTF-8") from None
        except ValueError as exc:
            raise _Reply(400, f"malformed JSON: {exc}") from None

    # -- dispatch
    def _handle(self, method: str) -> None:
        engine: Server = self.server.engine  # type: ignore[attr-defined]
        try:
            body = self._read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
            self._guard()
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            status, answer = self._route(engine, method, parts, parse_qs(url.query), body)
            self._send(status, answer)
        except _Reply as reply:
            self._error(reply.status, reply.message, reply.field, reply.headers)
        except UserError as exc:
            self._error(getattr(exc, "http_status", 400), exc.message, exc.field)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # never a traceback to the client
            log.exception("%s %s failed", method, self.path)
            try:
                self._error(500, f"internal error: {type(exc).__name__}: {exc}")
            except OSError:
                pass

    def _route(self, engine: "Server", method: str, parts, query, body: bytes) -> Tuple[int, Any]:
        if len(parts) < 2 or parts[0] != "v1":
            raise _Reply(404, f"no such endpoint: {self.path}")
        name = parts[1]

        def allow(*methods: str) -> None:
            if method not in methods:
                raise _Reply(405, f"{method} is not allowed here; use {' or '.join(methods)}",
                             headers={"Allow": ", ".join(methods)})

        if name == "health" and len(parts) == 2:
            allow("GET", "HEAD")
            return 200, engine.health()
        if name == "params" and len(parts) == 2:
            allow("GET")
            return 200, {"params": schema()}
        if name == "jobs" and len(parts) == 2:
            allow("GET", "POST")
            if method == "GET":
                state = (query.get("state") or [None])[0]
                if state is not None and state not in STATES:
                    raise _Reply(400, f"state must be one of {', '.join(STATES)}", "state")
                return 200, {"jobs": engine.store.list(state)}
            return 201, engine.submit(self._json_body(body))
        if name == "jobs" and len(parts) in (3, 4):
            job_id = parts[2]
            if len(parts) == 3:
                allow("GET")
                job = engine.store.get(job_id)
                if job is None:
                    raise NotFound(f"no job {job_id!r}", field="id")
                return 200, job
            if parts[3] == "cancel":
                allow("POST")
                return 200, engine.cancel(job_id)
        if name == "preview" and len(parts) == 2:
            allow("POST")
            return 200, engine.preview(self._json_body(body))
        if name == "shutdown" and len(parts) == 2:
            allow("POST")
            threading.Thread(target=engine.shutdown, name="toon-ofx-shutdown", daemon=True).start()
            return 202, {"stopping": True, "pid": os.getpid()}
        raise _Reply(404, f"no such endpoint: {self.path}")
