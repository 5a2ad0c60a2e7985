"""The HTTP side of the engine: who may ask (guards), how a request is read, and where it goes (routes).

Every answer is JSON, errors included ({"error", "field"}): http.server's own errors (400, 414, 431,
501, 505) too, and a 500 never shows a traceback. The guards run before the body is read, so only a
token holder can make the engine read a body; the body must arrive within the engine's
`body_timeout`. The engine behind the routes is a `Server` (toon_ofx.service.server); the listening
socket and its thread pool are toon_ofx.service.listener.
"""
from __future__ import annotations

import hmac
import io
import json
import logging
import math
import os
import select
import socket
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from .. import __version__
from ..client import SESSION_HEADER, proof
from ..core.errors import UserError
from ..core.params import schema
from .errors import NotFound
from .instance import TOKEN_FILE
from .listener import SocketReader

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("toon_ofx.service.handler")

SERVICE = "toon-ofx"
MAX_BODY = 1 << 20
MAX_JSON_INT = 1 << 63
SINGLE_HEADERS = ("Host", "Content-Length", "Transfer-Encoding", "Authorization", "Content-Type")


class _Reply(Exception):
    def __init__(self, status: int, message: str, field: Optional[str] = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(int(text)) >= MAX_JSON_INT:
        raise ValueError(f"the integer {text[:24]}{'...' if len(text) > 24 else ''} is out of range")
    return int(text)


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _Reply(400, f"field {key!r} is given twice", key)
        out[key] = value
    return out


def parse_json(body: bytes) -> Any:
    """The JSON document in `body`; _Reply 400 for anything malformed, too deep or out of range."""
    if not body.strip():
        raise _Reply(400, "malformed JSON: the request body is empty")
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant,
                          parse_float=_finite_float, parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise _Reply(400, "malformed JSON: the body is not UTF-8") from None
    except RecursionError:
        raise _Reply(400, "malformed JSON: nested too deeply") from None
    except ValueError as exc:
        raise _Reply(400, f"malformed JSON: {exc}") from None


class Handler(BaseHTTPRequestHandler):
    """One HTTP request (one per connection): guards, body, JSON in and out, routing to the engine."""

    server_version = f"{SERVICE}/{__version__}"
    sys_version = ""
    timeout = 30  # seconds any one socket operation may take while answering

    def __init__(self, request: socket.socket, client_address: Any, server: Any, head: bytes = b""):
        self._head = head
        self._body_read = False
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.reader = SocketReader(self._head, self.connection)
        self.rfile = io.BufferedReader(self.reader)

    # -- plumbing
    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: use logging
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: Dict[str, Any], headers: Optional[Dict[str, str]] = None) -> None:
        data = json.dumps(body, allow_nan=False).encode("utf-8")
        if self.request_version == "HTTP/0.9":  # a broken request line: answer with a status line anyway
            self.request_version = "HTTP/1.0"
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
        if not self._body_read:
            self._discard_body()
        self._send(status, {"error": message, "field": field}, headers)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own errors (bad request line, 414, 431, 501, 505) as the engine's JSON."""
        self.close_connection = True
        short, long = self.responses.get(code, ("Error", "error"))
        self._body_read = True  # nothing sensible can be read after a broken head
        try:
            self._send(code, {"error": message or long or short, "field": None})
        except OSError:
            pass

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
    def _guard_single_headers(self) -> None:
        """A head with two Hosts (which one did the guard see?) or two Content-Lengths (where does the body
        end?) is ambiguous: refused whether the copies agree or not."""
        for name in SINGLE_HEADERS:
            if len(self.headers.get_all(name) or ()) > 1:
                raise _Reply(400, f"the {name} header is given more than once")

    def _guard_browser(self, engine: "Server") -> None:
        if self.headers.get("Origin") is not None:
            raise _Reply(403, "requests from web pages are refused (Origin header present)")
        fetch_site = (self.headers.get("Sec-Fetch-Site") or "").lower()
        if fetch_site and fetch_site != "none":
            raise _Reply(403, "requests from web pages are refused (Sec-Fetch-Site)")
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in engine.allowed_hosts:
            raise _Reply(403, f"Host {host or '(none)'!r} refused: the engine answers only to "
                              f"{', '.join(sorted(engine.allowed_hosts))}")

    def _guard_token(self, engine: "Server") -> None:
        auth = self.headers.get("Authorization") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                                 engine.token.encode("ascii")):
            raise _Reply(401, "missing or wrong token: send 'Authorization: Bearer <token>' with the token from "
                              f"{engine.config_dir / TOKEN_FILE}", headers={"WWW-Authenticate": 'Bearer realm="toon-ofx"'})

    # -- the body
    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise _Reply(400, "chunked request bodies are not supported; send Content-Length")
        lengths = [v.strip() for v in self.headers.get_all("Content-Length") or () if v.strip()]
        if not lengths:
            return 0
        if not all(v.isdigit() and len(v) <= 18 for v in lengths):
            raise _Reply(400, "bad Content-Length")
        return max(int(v) for v in lengths)   # given twice (refused): what is read away covers both

    def _read_body(self, engine: "Server") -> bytes:
        self._body_read = True
        n = self._content_length()
        if n > MAX_BODY:
            self._discard_body()
            raise _Reply(413, f"the request body is over {MAX_BODY} bytes")
        data = bytearray()
        self.reader.deadline = time.monotonic() + engine.body_timeout
        try:
            while len(data) < n:
                chunk = self.rfile.read1(n - len(data))
                if not chunk:
                    self.close_connection = True
                    raise _Reply(400, f"the request body ended after {len(data)} of the {n} bytes its "
                                      "Content-Length announced")
                data += chunk
        except socket.timeout:
            self.close_connection = True
            raise _Reply(408, f"the request body did not arrive within {engine.body_timeout:g} s "
                              f"({len(data)} of the {n} bytes its Content-Length announced)") from None
        finally:
            self._no_deadline()
        return bytes(data)

    def _no_deadline(self) -> None:
        self.reader.deadline = None
        self.connection.settimeout(self.timeout)   # the answer gets the usual per-operation timeout

    def _discard_body(self) -> None:
        """Read away a body we will not use (up to 16 MiB, 2 s), so the client sees the answer, not a reset."""
        self._body_read = True
        self.close_connection = True
        try:
            n = min(self._content_length(), 16 * MAX_BODY)
        except _Reply:
            return
        self.reader.deadline = time.monotonic() + 2.0
        try:
            while n > 0:
                chunk = self.rfile.read1(min(n, 1 << 16))
                if not chunk:
                    break
                n -= len(chunk)
        except OSError:
            pass
        finally:
            self._no_deadline()

    def _json_body(self, engine: "Server") -> Any:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _Reply(415, "the request body must be JSON with 'Content-Type: application/json'")
        return parse_json(self._read_body(engine))

    def client_gone(self) -> bool:
        """True when the client has closed its end of the connection (it no longer waits for the answer)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # -- dispatch
    def _handle(self, method: str) -> None:
        try:
            self._dispatch(method)
        except (BrokenPipeError, ConnectionResetError):   # the client went away before its answer
            log.info("%s %s: the client went away before its answer", method, self.path.split("?")[0])

    def _dispatch(self, method: str) -> None:
        engine: Server = self.server.engine  # type: ignore[attr-defined]
        self.close_connection = True
        try:
            self._guard_single_headers()
            self._guard_browser(engine)
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            if parts == ["v1", "challenge"]:
                status, answer = self._challenge(engine, method)
            else:
                self._guard_token(engine)
                with engine.lifetime.request(self.headers.get(SESSION_HEADER)):
                    status, answer = self._route(engine, method, parts, parse_qs(url.query))
            self._send(status, answer)
        except _Reply as reply:
            self._error(reply.status, reply.message, reply.field, reply.headers)
        except UserError as exc:
            retry = getattr(exc, "retry_after", None)
            self._error(getattr(exc, "http_status", 400), exc.message, exc.field,
                        {"Retry-After": str(retry)} if retry else None)
        except sqlite3.ProgrammingError:  # the store was closed under this request: the engine is stopping
            self._error(503, "the engine is stopping")
        except sqlite3.DatabaseError as exc:
            log.error("%s %s: the job database failed: %s", method, self.path, exc)
            self._error(503, f"the job database {engine.db_path} cannot be used ({exc}); restart the engine "
                             "to check and repair it")
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:  # never a traceback to the client
            log.exception("%s %s failed", method, self.path)
            try:
                self._error(500, f"internal error: {type(exc).__name__}: {exc}")
            except OSError:
                pass

    def _challenge(self, engine: "Server", method: str) -> Tuple[int, Any]:
        """POST /v1/challenge {"nonce"}: prove we hold the token without it being sent (see client.verify)."""
        if method != "POST":
            raise _Reply(405, f"{method} is not allowed here; use POST", headers={"Allow": "POST"})
        body = self._json_body(engine)
        nonce = body.get("nonce") if isinstance(body, dict) else None
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            raise _Reply(400, "nonce must be a string of 16 to 128 characters", "nonce")
        # the address this connection reached, as the client sees it: a relayed proof names another one
        return 200, {"proof": proof(engine.token, nonce, self.connection.getsockname())}

    def _route(self, engine: "Server", method: str, parts, query) -> Tuple[int, Any]:
        if len(parts) < 2 or parts[0] != "v1":
            raise _Reply(404, f"no such endpoint: {self.path}")
        name, rest = parts[1], parts[2:]

        def allow(*methods: str) -> None:
            if method not in methods:
                raise _Reply(405, f"{method} is not allowed here; use {' or '.join(methods)}",
                             headers={"Allow": ", ".join(methods)})

        if name == "health" and not rest:
            allow("GET", "HEAD")
            return 200, engine.health()
        if name == "params" and not rest:
            allow("GET")
            return 200, {"params": schema()}
        if name == "models" and not rest:
            allow("GET")
            return 200, {"models": engine.models()}
        if name == "jobs" and not rest:
            allow("GET", "POST")
            if method == "GET":
                return 200, {"jobs": engine.jobs((query.get("state") or [None])[0])}
            return 201, engine.submit(self._json_body(engine))
        if name == "jobs" and len(rest) == 1:
            allow("GET")
            job = engine.store.get(rest[0])
            if job is None:
                raise NotFound(f"no job {rest[0]!r}", field="id")
            return 200, job
        if name == "jobs" and len(rest) == 2 and rest[1] in ("cancel", "retry"):
            allow("POST")
            self._read_body(engine)
            return 200, engine.cancel(rest[0]) if rest[1] == "cancel" else engine.retry(rest[0])
        if name == "sessions" and not rest:
            allow("POST")
            return 201, engine.lifetime.open(self._json_body(engine))
        if name == "sessions" and len(rest) == 1:
            allow("POST", "DELETE")
            self._read_body(engine)
            if method == "DELETE":
                return 200, engine.lifetime.close_session(rest[0])
            return 200, engine.lifetime.renew(rest[0])
        if name == "preview" and not rest:
            allow("POST")
            return 200, engine.preview(self._json_body(engine), client_gone=self.client_gone)
        if name == "previews" and not rest:
            allow("POST")
            return 202, engine.start_preview(self._json_body(engine))
        if name == "previews" and len(rest) == 1:
            allow("GET")
            return 200, engine.preview_state(rest[0])
        if name == "previews" and len(rest) == 2 and rest[1] == "cancel":
            allow("POST")
            self._read_body(engine)
            return 200, engine.preview_state(rest[0], cancel=True)
        if name == "shutdown" and not rest:
            allow("POST")
            self._read_body(engine)
            threading.Thread(target=engine.shutdown, name="toon-ofx-shutdown", daemon=True).start()
            return 202, {"stopping": True, "pid": os.getpid()}
        raise _Reply(404, f"no such endpoint: {self.path}")
