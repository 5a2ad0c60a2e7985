"""`toon-ofx serve`: the local engine process, an HTTP+JSON service for the editor add-ons.

Safe by default:
- listens on 127.0.0.1 only (other addresses need --allow-remote, which is announced loudly);
- every request needs ``Authorization: Bearer <token>``; the token is random, per user, and kept
  in ``<user_config_dir>/token`` (mode 0600); missing or wrong token -> 401. Clients first make the
  engine prove it holds the token (POST /v1/challenge) so they never send it to an impostor;
- requests from a browser are refused (403): a ``Host`` that is not one of this engine's names
  (DNS rebinding), or any ``Origin`` / cross-site ``Sec-Fetch-Site`` header; POST bodies must be
  ``application/json`` (which a cross-site form cannot send);
- bounded: a listen backlog of 128, request heads read without a thread each under a deadline,
  a fixed pool of request threads, a deadline for bodies (see toon_ofx/service/listener.py), and
  a few check slots for work that can block on storage (503 + Retry-After when all are taken);
- one server per data folder (a lock file), so two servers never run the same queue.

The running server writes ``<user_config_dir>/server.json`` = {"url", "pid", "version", ...};
clients find it there (see toon_ofx/client.py). Jobs are kept in ``<user_data_dir>/jobs.sqlite3``
and run one at a time per device (see toon_ofx/service/workers.py). A stop (SIGTERM, POST
/v1/shutdown, idle) puts a running job back in the queue without counting it as a crash; killing
the server (even with SIGKILL) and starting it again resumes jobs from the last finished frame.

Standard library only at import time: the torch-side renderer is imported when a job first runs.
"""
from __future__ import annotations

import argparse
import contextlib
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
from typing import Any, Callable, Dict, Iterable, List, Optional

from .. import __version__
from ..core.errors import UserError
from .devices import check_device, resolve_device
from .errors import Busy, Conflict, NotFound, RequestError
from .handler import SERVICE, Handler
from .instance import (INFO_FILE, LOCK_FILE, TOKEN_FILE, AlreadyRunning, InstanceLock, config_dir, data_dir,
                       ensure_token, private_dir, read_server_info, write_json_atomic)
from .lifetime import Lifetime
from .listener import Listener
from .outputs import ensure_folder
from .preview import PreviewSlot, default_preview
from .requests import check_models, parse_preview, parse_submission
from .store import STATES, JobStore
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


def _host_names(host: str, public: Iterable[str]) -> List[str]:
    """Names a remote client may use for this machine: the listen address, its host names, its addresses."""
    names = {host.strip("[]"), *public}
    if host.strip("[]") in ("0.0.0.0", "::"):
        names.discard(host.strip("[]"))
        for name in (socket.gethostname(), socket.getfqdn()):
            names.add(name)
            try:
                names.update(info[4][0] for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    return sorted(n.lower() for n in names if n)


class Server:
    """The engine process: HTTP front, job queue, workers, previews, sessions.

    `render_fn(request, progress=, cancel=)` and `preview_fn(source, frame, params, cancel=)` default to
    toon_ofx.core.render.render / .preview; tests pass stand-ins. `model_check(params)` refuses a job or
    preview whose models are not installed (422 naming params.model / params.base_model); None skips it.
    `idle_timeout` (seconds, None = never) stops an idle engine (see toon_ofx/service/lifetime.py);
    `stop_timeout` is how long a stop waits for a running frame before requeueing the job anyway.
    Work that may block on storage (probing a source, reading a model file, making the output folder) runs
    in one of `check_slots` slots (default: a quarter of the request threads); with none free the request
    is a 503 with Retry-After at once, so the other request threads stay free for cheap requests.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False,
                 config_dir: Optional[Path] = None, data_dir: Optional[Path] = None,
                 render_fn: Optional[Callable] = None, preview_fn: Optional[Callable] = None,
                 device_resolver: Callable[[str], str] = resolve_device,
                 device_check: Callable[[str], str] = check_device,
                 model_check: Optional[Callable[[Dict[str, Any]], None]] = check_models,
                 idle_timeout: Optional[float] = None, stop_timeout: float = 10.0,
                 head_timeout: float = 10.0, body_timeout: float = 30.0, http_workers: int = 16,
                 check_slots: Optional[int] = None, public_hosts: Iterable[str] = ()):
        if not allow_remote and not is_loopback(host):
            raise UserError(f"refusing to listen on {host}: the engine listens on 127.0.0.1 only "
                            "(pass --allow-remote to expose it on the network; the token is still required)",
                            field="host")
        self.host, self.requested_port, self.allow_remote = host, port, allow_remote
        self.config_dir = Path(config_dir) if config_dir else _default_config_dir()
        self.data_dir = Path(data_dir) if data_dir else _default_data_dir()
        self.db_path = self.data_dir / DB_FILE
        self.render_fn = render_fn
        self.previews = PreviewSlot(preview_fn or default_preview)
        self.device_resolver, self.device_check = device_resolver, device_check
        self.model_check = model_check
        self.stop_timeout, self.head_timeout, self.body_timeout = stop_timeout, head_timeout, body_timeout
        self.http_workers = http_workers
        self.check_slots = check_slots or max(1, http_workers // 4)
        self._checks = threading.BoundedSemaphore(self.check_slots)
        self.public_hosts = list(public_hosts)
        self.token = ""
        self.port = 0
        self.url = ""
        self.listen = ""
        self.notices: List[str] = []
        self.allowed_hosts: set = set()
        self.store: Optional[JobStore] = None
        self.queue: Optional[JobQueue] = None
        self.lifetime = Lifetime(idle_timeout, busy=self._busy, stop=self._stop_in_background)
        self._http: Optional[Listener] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = InstanceLock(self.data_dir / LOCK_FILE)
        self._stop_lock = threading.Lock()
        self.stopped = threading.Event()
        self.stuck: List[str] = []        # jobs whose worker had not stopped when the engine stopped
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
            bind = self.host.strip("[]")
            family = socket.AF_INET6 if ":" in bind else socket.AF_INET
            try:
                self._http = Listener((bind, self.requested_port), Handler, family=family,
                                      workers=self.http_workers, head_timeout=self.head_timeout)
            except OSError as exc:
                raise UserError(f"cannot listen on {self.host}:{self.requested_port}: {exc.strerror or exc}",
                                field="port") from None
            self._http.engine = self  # type: ignore[attr-defined]
            self.port = self._http.server_address[1]
            self.listen = f"[{bind}]:{self.port}" if family == socket.AF_INET6 else f"{bind}:{self.port}"
            # local clients reach "all interfaces" through loopback; any other address is used as it is
            local = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)
            shown = f"[{local}]" if ":" in local else local
            self.url = f"http://{shown}:{self.port}"
            names = ["127.0.0.1", "localhost", "[::1]", shown.lower()]
            if self.allow_remote:
                names += [f"[{n}]" if ":" in n else n for n in _host_names(self.host, self.public_hosts)]
            self.allowed_hosts = {f"{h}:{self.port}" for h in names}
            self.store = JobStore(self.db_path, work_root=self.data_dir / "work")
            if self.store.notice:
                self.notices.append(self.store.notice)
            self.queue = JobQueue(self.store, render_fn=self.render_fn, device_resolver=self.device_resolver)
            resumed = self.queue.start()
            if self.allow_remote and not is_loopback(bind):
                self.notices.append(remote_warning(self.listen))
                log.warning(self.notices[-1])
            write_json_atomic(self.config_dir / INFO_FILE,
                              {"url": self.url, "listen": self.listen, "remote": self.allow_remote and
                               not is_loopback(bind), "pid": os.getpid(), "version": __version__,
                               "data_dir": str(self.data_dir), "started": time.time()})
        except BaseException:
            self._close_partial()
            raise
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="toon-ofx-http", daemon=True)
        self._thread.start()
        self.lifetime.start()
        self._started = True
        log.info("toon-ofx engine %s listening on %s (pid %d); %d job(s) resumed", __version__, self.listen,
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

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Stop serving. A running job stops within one projection step and goes back to the queue; one
        whose worker does not stop within `timeout` (default: stop_timeout) is requeued all the same,
        without counting as a crash, and its thread is listed in `stuck` (the process should exit)."""
        with self._stop_lock:
            if not self._started or self.stopped.is_set():
                self.stopped.set()
                return
            log.info("toon-ofx engine stopping")
            assert self._http is not None and self.queue is not None and self.store is not None
            self.lifetime.close()
            self._http.shutdown()
            self._http.server_close()
            self.previews.close()
            self.stuck = self.queue.stop(timeout=self.stop_timeout if timeout is None else timeout)
            for job_id in self.stuck:
                if self.store.requeue(job_id):
                    log.warning("job %s: its frame did not stop within %g s; it is back in the queue and resumes "
                                "at the next start", job_id, self.stop_timeout if timeout is None else timeout)
            self.store.flush()
            self.store.close()
            info = read_server_info(self.config_dir)
            if info and info.get("pid") == os.getpid():
                try:
                    (self.config_dir / INFO_FILE).unlink()
                except OSError:
                    pass
            self._lock.release()
            self.stopped.set()

    def _stop_in_background(self) -> None:
        threading.Thread(target=self.shutdown, name="toon-ofx-idle-stop", daemon=True).start()

    def _busy(self) -> bool:
        return self.previews.busy() or (self.queue is not None and self.queue.busy())

    def __enter__(self) -> "Server":
        return self.start() if not self._started else self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- operations (called by the HTTP handler)
    @contextlib.contextmanager
    def _checking(self):
        """A check slot for work that may block on storage (see the class doc); Busy (503) when none is free."""
        if not self._checks.acquire(blocking=False):
            raise Busy(f"the engine is busy checking {self.check_slots} other request(s) against storage; "
                       "try again in a second")
        try:
            yield
        finally:
            self._checks.release()

    def health(self) -> Dict[str, Any]:
        return {"service": SERVICE, "version": __version__, "pid": os.getpid(), "url": self.url,
                "listen": self.listen, "running": self.queue.running() if self.queue else [],
                "sessions": self.lifetime.count(), "idle_timeout": self.lifetime.idle_timeout,
                "notices": list(self.notices)}

    def models(self) -> List[Dict[str, Any]]:
        """The manifest's models, installed or not (toon_ofx.core.model_store.list_models)."""
        from ..core import model_store

        with self._checking():
            return model_store.list_models()

    def jobs(self, state: Optional[str] = None) -> List[Dict[str, Any]]:
        if state is not None and state not in STATES:
            raise RequestError(f"state must be one of {', '.join(STATES)}", field="state")
        assert self.store is not None
        return self.store.list(state)

    def submit(self, body: Any) -> Dict[str, Any]:
        with self._checking():
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
        """200 with the job once it is cancelled or cancelling (again: fine); 409 for a done or failed job."""
        assert self.queue is not None
        previous, job = self.queue.cancel(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", field="id")
        if previous in ("done", "failed"):
            raise Conflict(f"job {job_id} has already {'finished' if previous == 'done' else 'failed'}; "
                           "nothing to cancel")
        return job

    def retry(self, job_id: str) -> Dict[str, Any]:
        """200 with the job queued again (a failed or cancelled one); 409 for any other state."""
        assert self.queue is not None
        previous, job = self.queue.retry(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", field="id")
        if previous not in ("failed", "cancelled"):
            why = {"done": "it is done (submit a new job to render it again)"}.get(previous, f"it is {previous}")
            raise Conflict(f"job {job_id} cannot be retried: {why}; only failed or cancelled jobs can")
        log.info("job %s queued again (retry)", job_id)
        return job

    def preview(self, body: Any, client_gone: Callable[[], bool] = lambda: False) -> Dict[str, Any]:
        """POST /v1/preview: compute one preview and answer with it (see PreviewSlot.run)."""
        source, frame, params = self._checked_preview(body)
        return self.previews.run(source, frame, params, client_gone)

    def start_preview(self, body: Any) -> Dict[str, Any]:
        """POST /v1/previews: start a preview the client polls (`preview_state`) or cancels."""
        source, frame, params = self._checked_preview(body)
        return self.previews.start(source, frame, params).to_dict()

    def preview_state(self, preview_id: str, cancel: bool = False) -> Dict[str, Any]:
        run = self.previews.cancel(preview_id) if cancel else self.previews.get(preview_id)
        if run is None:
            raise NotFound(f"no preview {preview_id!r} (only the newest few are kept)", field="id")
        return run.to_dict()

    def _checked_preview(self, body: Any):
        with self._checking():
            source, frame, params = parse_preview(body)
            if self.model_check is not None:
                self.model_check(params)
        return source, frame, params


def remote_warning(listen: str) -> str:
    return (f"WARNING: --allow-remote: the engine listens on {listen}, reachable from other machines. Anyone "
            "with the token can read and write files as you, and the traffic (token included) is plain HTTP, "
            "not encrypted: use it only on a network you trust, or through an SSH tunnel instead.")


# --------------------------------------------------------------------------- command line

def _load_callable(spec: str) -> Callable:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise UserError(f"expected MODULE:FUNCTION, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot load {spec}: {exc}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return value


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
                   help="allow a non-loopback --host: other machines can reach the engine over plain HTTP "
                        "(the token is still required; browsers are still refused)")
    p.add_argument("--public-host", action="append", default=[], metavar="NAME",
                   help="with --allow-remote: another name clients use for this machine (a DNS alias); "
                        "its host names and addresses are accepted already")
    p.add_argument("--idle-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="stop after this long with no job, no preview and no client session, or when the last "
                        "session says goodbye (clients set it when they start the engine; default: never)")
    p.add_argument("--stop-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="how long a stop waits for a running frame before putting its job back in the queue "
                        "(default 10)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="log verbosity on stderr (default INFO)")
    p.add_argument("--render-fn", default=None, help=argparse.SUPPRESS)   # MODULE:FUNC stand-in renderer (tests)
    p.add_argument("--preview-fn", default=None, help=argparse.SUPPRESS)  # MODULE:FUNC stand-in preview (tests)
    p.set_defaults(run=run_serve)
    return p


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT (or POST /v1/shutdown, or idle); a running job resumes at the next start."""
    logging.basicConfig(level=getattr(logging, args.log_level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.public_host and not args.allow_remote:
        print("toon-ofx: error: --public-host needs --allow-remote", file=sys.stderr)
        return 2
    requested = threading.Event()   # before start: a stop that comes as soon as server.json exists counts

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
        # a stand-in renderer (tests) needs no installed models
        server = Server(args.host, args.port, allow_remote=args.allow_remote,
                        render_fn=_load_callable(args.render_fn) if args.render_fn else None,
                        preview_fn=_load_callable(args.preview_fn) if args.preview_fn else None,
                        model_check=None if args.render_fn else check_models,
                        idle_timeout=args.idle_timeout or None, stop_timeout=args.stop_timeout,
                        public_hosts=args.public_host)
        server.start()
    except UserError as exc:
        print(f"toon-ofx: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    idle = f"; stops after {args.idle_timeout:g} s idle" if args.idle_timeout else ""
    print(f"toon-ofx engine {__version__} listening on {server.listen} (clients: {server.url}; pid {os.getpid()})"
          f"{idle}; token in {server.config_dir / TOKEN_FILE}; queue in {server.db_path}", flush=True)
    for notice in server.notices:
        print(f"toon-ofx: {notice}", file=sys.stderr, flush=True)

    try:
        while not (requested.is_set() or server.stopped.wait(0.5)):
            pass
    except KeyboardInterrupt:
        pass
    server.shutdown()
    if server.stuck:
        # A worker is still inside a frame that cannot be interrupted (torch): its job is back in the queue.
        # Leaving now, without running interpreter teardown under that thread, avoids an abort.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
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
