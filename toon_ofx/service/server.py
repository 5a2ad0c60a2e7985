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
at a time per device (see toon_ofx/service/workers.py); killing the server (even with SIGKILL) and
starting it again resumes them from the last finished frame.

Standard library only at import time: the torch-side renderer is imported when a job first runs.
"""
from __future__ import annotations

import argparse
import importlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .. import __version__
from ..core.errors import UserError
from ..core.params import BY_NAME
from .devices import check_device, resolve_device
from .errors import NotFound, RequestError
from .handler import SERVICE, EngineHTTPServer, EngineHTTPServer6, Handler
from .instance import (INFO_FILE, LOCK_FILE, TOKEN_FILE, AlreadyRunning, InstanceLock, config_dir, data_dir,
                       ensure_token, private_dir, read_server_info, write_json_atomic)
from .outputs import ensure_folder
from .preview import default_preview, preview_answer
from .requests import check_models, parse_preview, parse_submission
from .store import JobStore
from .workers import JobQueue

log = logging.getLogger("toon_ofx.service.server")

DB_FILE = "jobs.sqlite3"

_default_config_dir, _default_data_dir = config_dir, data_dir  # Server's arguments shadow the names


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        self.render_fn, self.preview_fn = render_fn, preview_fn or default_preview
        self.device_resolver, self.device_check = device_resolver, device_check
        self.model_check = model_check
        self.token = ""
        self.port = 0
        self.url = ""
        self.allowed_hosts: set = set()
        self.store: Optional[JobStore] = None
        self.queue: Optional[JobQueue] = None
        self._http: Optional[EngineHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = InstanceLock(self.data_dir / LOCK_FILE)
        self._preview_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self.stopped = threading.Event()
        self._started = False

    # -- lifecycle
    def start(self) -> "Server":
        """Bind, resume the queue, publish server.json, and serve in a background thread."""
        private_dir(self.config_dir)
        private_dir(self.data_dir)
        if not self._lock.acquire():
            info = read_server_info(self.config_dir) or {}
            where = f" at {info['url']} (pid {info.get('pid')})" if info.get("url") else ""
            raise AlreadyRunning(f"another toon-ofx engine is already running{where} on the queue in {self.data_dir}")
        try:
            self.token = ensure_token(self.config_dir)
            family = socket.AF_INET6 if ":" in self.host.strip("[]") else socket.AF_INET
            server_cls = EngineHTTPServer if family == socket.AF_INET else EngineHTTPServer6
            try:
                self._http = server_cls((self.host.strip("[]"), self.requested_port), Handler)
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
            write_json_atomic(self.config_dir / INFO_FILE,
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
        return preview_answer(frame, original, stylised, faces)


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
