"""`toon-ofx serve`: the local engine process, an HTTP+JSON service for the editor add-ons.

Safe by default:
- listens on 127.0.0.1 only (other addresses need --allow-remote);
- every request needs ``Authorization: Bearer <token>``; the token is random, per user, and kept
  in ``<user_config_dir>/token`` (mode 0600); missing or wrong token -> 401;
- requests from a browser are refused (403): a ``Host`` that is not this loopback address and port
  (DNS rebinding), or any ``Origin`` / cross-site ``Sec-Fetch-Site`` header; POST bodies must be
  ``application/json`` (which a cross-site form cannot send);
- one server per data folder (a lock file), so two servers never run the same queue.

The running server writes ``<user_config_dir>/server.json`` = {"url", "pid", "version"}; clients
find it there (see toon_ofx/client.py). Jobs are kept in ``<user_data_dir>/jobs.sqlite3`` and run one
at a time per device (toon_ofx/jobs.py); killing the server (even with SIGKILL) and starting it again
resumes them from the last finished frame.

Standard library only at import time: the torch-side renderer is imported when a job first runs.
"""
from __future__ import annotations

import argparse
import base64
import hmac
import importlib
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from .. import __version__
from ..core.errors import UserError
from .jobs import (STATES, JobQueue, JobStore, NotFound, RequestError, check_device, check_models, parse_preview,
                   parse_submission, resolve_device)
from ..core.params import BY_NAME, schema

log = logging.getLogger("toon_ofx.service.server")

SERVICE = "toon-ofx"
TOKEN_FILE = "token"
INFO_FILE = "server.json"
LOCK_FILE = "server.lock"
DB_FILE = "jobs.sqlite3"
MAX_BODY = 1 << 20


# --------------------------------------------------------------------------- folders, token, server.json

def config_dir() -> Path:
    """`<user_config_dir>` (TOON_OFX_CONFIG_DIR overrides)."""
    from ..core import dirs

    return Path(dirs.user_config_dir())


def data_dir() -> Path:
    """`<user_data_dir>` (TOON_OFX_DATA_DIR overrides)."""
    from ..core import dirs

    return Path(dirs.user_data_dir())


_default_config_dir, _default_data_dir = config_dir, data_dir


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def ensure_token(folder: Path) -> str:
    """The per-user token in `folder`/token, created (mode 0600) if missing or unusable."""
    _private_dir(folder)
    path = folder / TOKEN_FILE
    for _ in range(5):
        try:
            token = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            token = ""
        except (OSError, UnicodeDecodeError):
            token = ""
        if len(token) >= 32 and token.isascii() and token.replace("-", "").replace("_", "").isalnum():
            if os.name == "posix" and os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
                log.warning("%s was readable by others; its mode is now 0600", path)
            return token
        if path.exists():  # empty or damaged: replace it
            log.warning("%s is not a usable token; writing a new one", path)
            path.unlink()
        token = secrets.token_urlsafe(32)
        tmp = folder / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(token + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(str(tmp), str(path))  # atomic and never replaces a token another process just wrote
            except FileExistsError:
                continue  # someone else won: use theirs
            except OSError:
                if not path.exists():
                    os.replace(str(tmp), str(path))
                continue
        finally:
            try:
                os.unlink(str(tmp))
            except OSError:
                pass
    raise UserError(f"cannot create a token in {folder}")


def _write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(str(tmp), str(path))


def read_server_info(folder: Optional[Path] = None) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((Path(folder) if folder else config_dir()).joinpath(INFO_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None


class _InstanceLock:
    """An exclusive lock on a file in the data folder, released by the OS when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def acquire(self) -> bool:
        fh = open(self.path, "a+b")
        try:
            if os.name == "nt":  # pragma: no cover - Windows only
                import msvcrt

                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            try:
                if os.name == "nt":  # pragma: no cover
                    import msvcrt

                    self._fh.seek(0)
                    msvcrt.locking(self._fh.fileno(), msvcrt.LK_UNLCK, 1)
                else:
                    import fcntl

                    fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            except OSError:
                pass
            self._fh.close()
            self._fh = None


class AlreadyRunning(UserError):
    exit_code = 3


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- PNG (stdlib) for previews

def encode_png(image: Any) -> bytes:
    """PNG bytes of an H x W (x 1|3|4) uint8 array (numpy or anything with .shape and .tobytes())."""
    shape = tuple(image.shape)
    if len(shape) == 2:
        shape = shape + (1,)
    height, width, channels = shape
    if str(getattr(image, "dtype", "uint8")) != "uint8":
        raise ValueError(f"encode_png needs uint8 pixels, got {image.dtype}")
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    data = image.tobytes() if hasattr(image, "tobytes") else bytes(image)
    stride = width * channels
    raw = b"".join(b"\x00" + data[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _default_preview(source, frame, params):
    from ..core.render import preview

    return preview(Path(source), frame, params)


def _faces_json(faces: Any) -> Any:
    if faces is None:
        return 0
    if isinstance(faces, (int, float)) and not isinstance(faces, bool):
        return int(faces)
    try:
        return len(faces)
    except TypeError:
        return int(faces)


# --------------------------------------------------------------------------- the HTTP server

class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # never share a port with another live server
    engine: "Server"


class _HTTPServer6(_HTTPServer):
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


class _Handler(BaseHTTPRequestHandler):
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


class Server:
    """The engine process: HTTP front, job queue, workers.

    `render_fn(request, progress=, cancel=)` and `preview_fn(source, frame, params)` default to
    toon_ofx.core.render.render / .preview; tests pass stand-ins. `model_check(params)` refuses a job or
    preview whose models are not installed (422 naming params.model / params.base_model); None skips it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False,
                 config_dir: Optional[Path] = None, data_dir: Optional[Path] = None,
                 render_fn: Optional[Callable] = None, preview_fn: Optional[Callable] = None,
                 device_resolver: Callable[[str], str] = resolve_device,
                 device_check: Callable[[str], str] = check_device,
                 model_check: Optional[Callable[[Dict[str, Any]], None]] = check_models):
        if not allow_remote and not is_loopback(host):
            raise UserError(f"refusing to listen on {host}: the engine listens on 127.0.0.1 only "
                            "(pass --allow-remote to expose it on the network; the token is still required)",
                            field="host")
        self.host, self.requested_port, self.allow_remote = host, port, allow_remote
        self.config_dir = Path(config_dir) if config_dir else _default_config_dir()
        self.data_dir = Path(data_dir) if data_dir else _default_data_dir()
        self.render_fn, self.preview_fn = render_fn, preview_fn or _default_preview
        self.device_resolver, self.device_check = device_resolver, device_check
        self.model_check = model_check
        self.token = ""
        self.port = 0
        self.url = ""
        self.allowed_hosts: set = set()
        self.store: Optional[JobStore] = None
        self.queue: Optional[JobQueue] = None
        self._http: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = _InstanceLock(self.data_dir / LOCK_FILE)
        self._preview_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self.stopped = threading.Event()
        self._started = False

    # -- lifecycle
    def start(self) -> "Server":
        """Bind, resume the queue, publish server.json, and serve in a background thread."""
        _private_dir(self.config_dir)
        _private_dir(self.data_dir)
        if not self._lock.acquire():
            info = read_server_info(self.config_dir) or {}
            where = f" at {info['url']} (pid {info.get('pid')})" if info.get("url") else ""
            raise AlreadyRunning(f"another toon-ofx engine is already running{where} on the queue in {self.data_dir}")
        try:
            self.token = ensure_token(self.config_dir)
            family = socket.AF_INET6 if ":" in self.host.strip("[]") else socket.AF_INET
            server_cls = _HTTPServer if family == socket.AF_INET else _HTTPServer6
            try:
                self._http = server_cls((self.host.strip("[]"), self.requested_port), _Handler)
            except OSError as exc:
                raise UserError(f"cannot listen on {self.host}:{self.requested_port}: {exc.strerror or exc}",
                                field="port") from None
            self._http.engine = self
            self.port = self._http.server_address[1]
            shown = f"[{self.host.strip('[]')}]" if family == socket.AF_INET6 else self.host
            if self.host in ("0.0.0.0", "::"):
                shown = "127.0.0.1"
            self.url = f"http://{shown}:{self.port}"
            self.allowed_hosts = {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]", shown.lower())}
            self.store = JobStore(self.data_dir / DB_FILE, work_root=self.data_dir / "work")
            self.queue = JobQueue(self.store, render_fn=self.render_fn, device_resolver=self.device_resolver)
            resumed = self.queue.start()
            _write_json_atomic(self.config_dir / INFO_FILE,
                               {"url": self.url, "pid": os.getpid(), "version": __version__,
                                "data_dir": str(self.data_dir), "started": time.time()})
        except BaseException:
            self._close_partial()
            raise
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="toon-ofx-http", daemon=True)
        self._thread.start()
        self._started = True
        log.info("toon-ofx engine %s listening on %s (pid %d); %d job(s) resumed", __version__, self.url,
                 os.getpid(), len(resumed))
        return self

    def _close_partial(self) -> None:
        if self.queue is not None:
            self.queue.stop(timeout=1.0)
        if self.store is not None:
            self.store.close()
        if self._http is not None:
            self._http.server_close()
        self._lock.release()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop serving; a running job stops between frames and stays queued (it resumes next start)."""
        with self._stop_lock:
            if not self._started or self.stopped.is_set():
                self.stopped.set()
                return
            log.info("toon-ofx engine stopping")
            assert self._http is not None and self.queue is not None and self.store is not None
            self._http.shutdown()
            self._http.server_close()
            self.queue.stop(timeout=timeout)
            if not self.queue.running():
                self.store.close()
            info = read_server_info(self.config_dir)
            if info and info.get("pid") == os.getpid():
                try:
                    (self.config_dir / INFO_FILE).unlink()
                except OSError:
                    pass
            self._lock.release()
            self.stopped.set()

    def __enter__(self) -> "Server":
        return self.start() if not self._started else self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- operations (called by the HTTP handler)
    def health(self) -> Dict[str, Any]:
        return {"service": SERVICE, "version": __version__, "pid": os.getpid(), "url": self.url,
                "running": self.queue.running() if self.queue else []}

    def submit(self, body: Any) -> Dict[str, Any]:
        spec = parse_submission(body, device_check=self.device_check,
                                default_folder=str(self.data_dir / "renders"))
        if self.model_check is not None:
            self.model_check(spec.params)
        from .jobs import ensure_folder

        ensure_folder(spec.folder)
        assert self.queue is not None
        job = self.queue.submit(spec)
        log.info("job %s queued: %s frames %d-%d -> %s", job["id"], spec.source, spec.frames[0], spec.frames[1],
                 job["output"]["path"])
        return job

    def cancel(self, job_id: str) -> Dict[str, Any]:
        assert self.queue is not None
        previous, job = self.queue.cancel(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", field="id")
        if previous in ("done", "failed"):
            raise RequestError(f"job {job_id} has already {'finished' if previous == 'done' else 'failed'}; "
                               "nothing to cancel", status=409)
        return job

    def preview(self, body: Any) -> Dict[str, Any]:
        source, frame, params = parse_preview(body)
        if self.model_check is not None:
            self.model_check(params)
        with self._preview_lock:
            try:
                original, stylised, faces = self.preview_fn(source, frame, params)
            except UserError as exc:  # name the request field: a parameter is "params.<name>"
                field = f"params.{exc.field}" if exc.field in BY_NAME else exc.field
                raise RequestError(exc.message, field=field, status=getattr(exc, "http_status", 400)) from None
        return {"frame": frame, "faces": _faces_json(faces),
                "original_png": base64.b64encode(encode_png(original)).decode("ascii"),
                "stylised_png": base64.b64encode(encode_png(stylised)).decode("ascii")}


# --------------------------------------------------------------------------- command line

def _load_callable(spec: str) -> Callable:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise UserError(f"expected MODULE:FUNCTION, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot load {spec}: {exc}") from None


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="run the local engine process (HTTP+JSON on 127.0.0.1) for the editor add-ons",
        description="Run the engine as a local HTTP+JSON service. The URL goes to <config>/server.json, the "
                    "access token to <config>/token (mode 0600); the job queue lives in <data>/jobs.sqlite3 "
                    "and resumes after a crash or restart.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything not loopback needs --allow-remote)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free port, written to server.json)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (the token is still required; browsers are still refused)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="log verbosity on stderr (default INFO)")
    p.add_argument("--render-fn", default=None, help=argparse.SUPPRESS)   # MODULE:FUNC stand-in renderer (tests)
    p.add_argument("--preview-fn", default=None, help=argparse.SUPPRESS)  # MODULE:FUNC stand-in preview (tests)
    p.set_defaults(run=run_serve)
    return p


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT (or POST /v1/shutdown); a running job resumes at the next start."""
    logging.basicConfig(level=getattr(logging, args.log_level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # a stand-in renderer (tests) needs no installed models
        server = Server(args.host, args.port, allow_remote=args.allow_remote,
                        render_fn=_load_callable(args.render_fn) if args.render_fn else None,
                        preview_fn=_load_callable(args.preview_fn) if args.preview_fn else None,
                        model_check=None if args.render_fn else check_models)
        server.start()
    except UserError as exc:
        print(f"toon-ofx: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(f"toon-ofx engine {__version__} listening on {server.url} (pid {os.getpid()}); "
          f"token in {server.config_dir / TOKEN_FILE}; queue in {server.data_dir / DB_FILE}", flush=True)

    requested = threading.Event()

    def stop(signum, frame) -> None:
        requested.set()

    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                signal.signal(sig, stop)
            except (OSError, ValueError):
                pass
    try:
        while not (requested.is_set() or server.stopped.wait(0.5)):
            pass
    except KeyboardInterrupt:
        pass
    server.shutdown()
    return 0


def main(argv=None) -> int:
    """`python -m toon_ofx.service.server [serve] [options]` (same options as `toon-ofx serve`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="python -m toon_ofx.service.server")
    sub = parser.add_subparsers(dest="command")
    add_serve_parser(sub)
    args = parser.parse_args(["serve", *argv])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
