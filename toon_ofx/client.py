"""Talk to the local toon-ofx engine process over HTTP+JSON.

Standard library only (http.client, json), Python 3.9+: this runs inside DaVinci Resolve's and
Blender's own Python, which have no numpy or torch. It imports nothing from toon_ofx except
the stdlib-only `dirs` module, and works when copied alone next to an add-on's code (then an
inline copy of the folder lookup is used).

    from toon_ofx.client import EngineClient
    with EngineClient.connect(python="/path/to/python-with-toon-ofx") as engine:   # starts it if needed
        job = engine.submit("/media/shot.mp4", frames=(0, 47), params={"swap_res": 32},
                            output_folder="/renders/shot")
        job = engine.wait(job["id"], callback=lambda j: print(j["progress"]))
        print(job["result"]["pattern"])   # /renders/shot/shot_toon.%06d.png, numbered by source frame

The server writes `<user_config_dir>/server.json` ({"url", "pid", "version"}) and keeps its
access token in `<user_config_dir>/token`; `EngineClient()` reads both. The token goes only to a
loopback URL (unless `allow_remote=True`) and only after the server has proved it holds the same
token (an HMAC of a fresh nonce and the address the client reached: host and port), so neither a
stale server.json nor an impostor relaying the challenge from another address gets it; later
requests go to that same verified address. An engine that is slow or busy (503 + Retry-After is
asked again) is never mistaken for no engine (`EngineBusy`).

One file on purpose, a little over the size limit: the hosts vendor it alone.

`with` (or `hello()`/`goodbye()`) opens a session: an engine started on demand stays up while a
session is open (leases are renewed by every request) and stops when the last one says goodbye.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence
from urllib.parse import quote, urlsplit

try:  # inside the toon_ofx package
    from .core import dirs as _dirs
except ImportError:  # vendored as a single file: see _fallback_dir below
    _dirs = None

__all__ = ["EngineClient", "EngineError", "EngineUnavailable", "EngineBusy", "config_dir", "data_dir", "TERMINAL_STATES",
           "proof", "is_loopback_url", "looks_like_model_path"]

APPNAME = "toon-ofx"
TOKEN_FILE = "token"
INFO_FILE = "server.json"
TERMINAL_STATES = ("done", "failed", "cancelled")
EXIT_ALREADY_RUNNING = 3
SESSION_HEADER = "X-Toon-Session"
PROOF_CONTEXT = "toon-ofx proof v2"
DEFAULT_IDLE_TIMEOUT = 600.0   # seconds an engine started on demand stays up with no session and no work


class EngineError(Exception):
    """The engine answered with an error (`status` is the HTTP status, `field` the bad request field)."""

    def __init__(self, message: str, status: Optional[int] = None, field: Optional[str] = None):
        super().__init__(message)
        self.message, self.status, self.field = message, status, field

    def __str__(self) -> str:
        return self.message


class EngineUnavailable(EngineError):
    """No engine could be reached or started."""


class EngineBusy(EngineError):
    """An engine answers the connection but not in time (or asked to be asked later): it runs, it is busy."""


# --------------------------------------------------------------------------- folders

def _fallback_dir(kind: str) -> str:
    """Same answers as toon_ofx.core.dirs (platformdirs, appname "toon-ofx"), for a vendored client.py."""
    override = os.environ.get({"config": "TOON_OFX_CONFIG_DIR", "data": "TOON_OFX_DATA_DIR"}[kind], "").strip()
    if override:
        return os.path.expanduser(override)
    if sys.platform == "win32":
        base = os.environ.get("WIN_PD_OVERRIDE_LOCAL_APPDATA", "").strip() or os.environ.get("LOCALAPPDATA") \
            or os.path.expanduser(r"~\AppData\Local")
        return os.path.join(os.path.normpath(base), APPNAME)
    xdg = os.environ.get({"config": "XDG_CONFIG_HOME", "data": "XDG_DATA_HOME"}[kind], "")
    if xdg.startswith("/"):
        return os.path.join(xdg, APPNAME)
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~/Library/Application Support"), APPNAME)
    return os.path.join(os.path.expanduser("~/.config" if kind == "config" else "~/.local/share"), APPNAME)


def config_dir() -> str:
    """Where the engine keeps its token and server.json."""
    return _dirs.user_config_dir() if _dirs is not None else _fallback_dir("config")


def data_dir() -> str:
    """Where the engine keeps its job queue and logs."""
    return _dirs.user_data_dir() if _dirs is not None else _fallback_dir("data")


_default_config_dir = config_dir


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _private_dirs(path: str) -> None:
    """Create `path` and any missing parents as 0700 folders (the engine's folders are private)."""
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        _private_dirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def _read_token(folder: str) -> Optional[str]:
    try:
        with open(os.path.join(folder, TOKEN_FILE), "r", encoding="ascii") as fh:
            token = fh.read().strip()
        return token or None
    except (OSError, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------- the client

def proof(token: str, nonce: str, address: Sequence[Any]) -> str:
    """What the engine answers to a challenge: HMAC-SHA256 under the token of the nonce and the address
    (host, port) the connection reached — the engine's socket name, the client's peer name."""
    message = f"{PROOF_CONTEXT}|{nonce}|{_canonical_host(str(address[0]))}|{int(address[1])}".encode("utf-8")
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _canonical_host(host: str) -> str:
    """One spelling of an address: IPv4-mapped IPv6 as IPv4, IPv6 compressed without its zone."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0].strip("[]"))
    except ValueError:
        return host.lower()
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def is_loopback_url(url: str) -> bool:
    """True when `url` names this machine (localhost, 127.0.0.0/8 or ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EngineClient:
    """One engine process. Every method raises EngineError (4xx/5xx) or EngineUnavailable (not reachable).

    The token is sent only to a loopback URL (`allow_remote=True` lifts that) and only after the server
    proved it holds the token (see `verify`).
    """

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 10,
                 config_dir: Optional[str] = None, allow_remote: bool = False):
        self.config_dir = config_dir or _default_config_dir()
        if url is None:
            info = _read_json(os.path.join(self.config_dir, INFO_FILE))
            if not info or not info.get("url"):
                raise EngineUnavailable(f"no toon-ofx engine is running (no {INFO_FILE} in {self.config_dir}); "
                                        "start one with 'toon-ofx serve' or use EngineClient.connect()")
            url = str(info["url"])
            if not _pid_alive(info.get("pid")):
                raise EngineUnavailable(f"the engine named in {INFO_FILE} (pid {info.get('pid')}) is not running")
        if urlsplit(url).scheme != "http" or not urlsplit(url).hostname:
            raise EngineUnavailable(f"{url!r} is not an http:// URL of an engine")
        if not allow_remote and not is_loopback_url(url):
            raise EngineUnavailable(f"refusing to send the token to {url}: not a loopback address "
                                    "(pass allow_remote=True to use an engine on another machine)")
        if token is None:
            token = _read_token(self.config_dir)
            if token is None:
                raise EngineUnavailable(f"no access token in {os.path.join(self.config_dir, TOKEN_FILE)}; "
                                        "start the engine once with 'toon-ofx serve'")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session: Optional[str] = None
        self._address: Optional[tuple] = None   # (host, port) the engine proved itself at; requests go there

    def __repr__(self) -> str:
        return f"EngineClient({self.url!r})"

    def __enter__(self) -> "EngineClient":
        if self.session is None:
            self.hello()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.goodbye()

    # -- transport
    def _request(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None,
                 auth: bool = True) -> Any:
        """The JSON answer; a 503/429 with Retry-After is asked again until `timeout` (default: the client's)."""
        if auth and self._address is None:
            self.verify()
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
            if self.session:
                headers[SESSION_HEADER] = self.session
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        status, busy, payload, _ = _exchange_patiently(self.url, self._address, method, path, data, headers,
                                                       self.timeout if timeout is None else timeout)
        return _answer(self.url, status, payload, busy)

    def verify(self) -> None:
        """Before the first request: the server proves it holds our token (an HMAC of a nonce and the address
        this client reached, so a proof relayed from another address fails); later requests go to that
        address. EngineError 401 when it cannot: another program on a stale port, an impostor relaying the
        challenge, or another config folder. EngineBusy when the engine is too busy to answer."""
        nonce = secrets.token_hex(16)
        body = json.dumps({"nonce": nonce}).encode("utf-8")
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        status, busy, payload, peer = _exchange_patiently(self.url, None, "POST", "/v1/challenge", body, headers,
                                                          self.timeout)
        try:
            answer = _answer(self.url, status, payload, busy)
        except EngineError as exc:
            if isinstance(exc, EngineBusy) or status >= 500:   # an engine, in no state to answer now
                raise
            raise EngineUnavailable(f"{self.url} is not a toon-ofx engine this client can talk to "
                                    f"(challenge refused: {exc.message})") from None
        given = answer.get("proof") if isinstance(answer, dict) else None
        if not isinstance(given, str) or not hmac.compare_digest(given, proof(self.token, nonce, peer)):
            raise EngineError(f"the engine at {self.url} could not prove it holds the token in "
                              f"{os.path.join(self.config_dir, TOKEN_FILE)}, so the token was not sent: either "
                              "another program listens on that address, or the engine was started with another "
                              "config folder (TOON_OFX_CONFIG_DIR), or it is a toon-ofx older than this client",
                              status=401)
        self._address = (peer[0], peer[1])

    # -- API
    def health(self) -> Dict[str, Any]:
        """{"service": "toon-ofx", "version", "pid", ...}."""
        answer = self._request("GET", "/v1/health")
        if not isinstance(answer, dict) or answer.get("service") != APPNAME:
            raise EngineUnavailable(f"{self.url} is not a toon-ofx engine")
        return answer

    def params(self) -> List[Dict[str, Any]]:
        """The effect's parameter schema: [{"name", "type", "default", "label", "help", ...}, ...]."""
        return self._request("GET", "/v1/params")["params"]

    def models(self) -> List[Dict[str, Any]]:
        """[{"name", "title", "kind", "resolution", "licence", "installed", "path", ...}] (style picker: toon/blended)."""
        return self._request("GET", "/v1/models")["models"]

    def submit(self, source: str, frames: Optional[Sequence[int]] = None, params: Optional[Mapping[str, Any]] = None,
               output_folder: Optional[str] = None, output_kind: str = "sequence",
               name: Optional[str] = None, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Queue a render of `source` (frames inclusive, 0-based; None = all); returns the job.

        Paths (source, output folder, file models) are made absolute here. The engine probes the source
        before answering, so this waits up to `timeout` s (default: the client's timeout, at least 120 s).
        """
        output: Dict[str, Any] = {"kind": output_kind}
        if output_folder is not None:
            output["folder"] = _absolute(output_folder)
        if name is not None:
            output["name"] = name
        body = {"source": _absolute(source), "frames": list(frames) if frames is not None else None,
                "params": _absolute_models(params), "output": output}
        return self._request("POST", "/v1/jobs", body, timeout=timeout or max(self.timeout, 120))

    def job(self, job_id: str) -> Dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{_quote(job_id)}")

    def jobs(self, state: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every job, oldest first (only those in `state` when given)."""
        query = f"?state={_quote(state)}" if state else ""
        return self._request("GET", f"/v1/jobs{query}")["jobs"]

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Cancel a queued or running job; returns the job, "cancelled" or (still stopping) "cancelling".

        A running job stops within one projection step; its finished frames are kept (`retry` resumes
        from them). Cancelling a cancelled job is fine; a done or failed one is a 409.
        """
        return self._request("POST", f"/v1/jobs/{_quote(job_id)}/cancel", {})

    def retry(self, job_id: str) -> Dict[str, Any]:
        """Queue a failed or cancelled job again: it resumes from its frames on disk into the same output."""
        return self._request("POST", f"/v1/jobs/{_quote(job_id)}/retry", {})

    def wait(self, job_id: str, poll: float = 0.5, callback: Optional[Callable[[Dict[str, Any]], Any]] = None,
             timeout: Optional[float] = None) -> Dict[str, Any]:
        """Poll until the job is done, failed or cancelled; `callback(job)` after every poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if callback is not None:
                callback(job)
            if job.get("state") in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise EngineError(f"job {job_id} is still {job.get('state')} after {timeout} s")
            time.sleep(poll)

    def preview(self, source: str, frame: int = 0, params: Optional[Mapping[str, Any]] = None,
                timeout: float = 900, progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
                cancel: Any = None, poll: float = 0.25) -> Dict[str, Any]:
        """One stylised frame: {"frame", "faces", "original_png": bytes, "stylised_png": bytes}.

        With `progress` or `cancel` the engine computes it while this polls every `poll` s:
        `progress(progress_dict)` after every poll ("loading" with "model", "projecting" with "step", "steps"
        and "eta_seconds"); setting `cancel` (a threading.Event) stops it within one projection step
        (EngineError 409). Without them it is one request (the quickest, e.g. live frames). Either way a
        newer preview (from any client) replaces this one, which then raises EngineError 409."""
        body = {"source": _absolute(source), "frame": frame, "params": _absolute_models(params)}
        if progress is None and cancel is None:
            answer = self._request("POST", "/v1/preview", body, timeout=timeout)
        else:
            answer = self._polled_preview(body, timeout, progress, cancel, poll)
        for key in ("original_png", "stylised_png"):
            answer[key] = base64.b64decode(answer[key])
        return answer

    def _polled_preview(self, body: Dict[str, Any], timeout: float, progress, cancel, poll: float) -> Dict[str, Any]:
        state = self._request("POST", "/v1/previews", body, timeout=max(self.timeout, 120))
        where = f"/v1/previews/{_quote(state['id'])}"
        deadline = time.monotonic() + timeout
        while state["state"] == "running":
            if progress is not None:
                progress(state["progress"])
            if cancel is not None and cancel.is_set():
                state = self._request("POST", where + "/cancel", {})
            elif time.monotonic() > deadline:
                self._request("POST", where + "/cancel", {})
                raise EngineError(f"the preview did not finish within {timeout:g} s; it was stopped")
            else:
                time.sleep(poll)
                state = self._request("GET", where)
        if state["state"] != "done":
            raise EngineError(state.get("error") or f"the preview {state['state']}", status=state.get("error_status"),
                              field=state.get("field"))
        return dict(state["result"])

    def hello(self, lease: float = 120, name: str = "") -> str:
        """Open a session: an engine started on demand stays up while one is open. Returns its id.

        Every request renews the lease; without requests it ends after `lease` seconds, so a client that
        crashed does not keep the engine up. `with client:` calls hello() and goodbye().
        """
        answer = self._request("POST", "/v1/sessions", {"lease_seconds": lease, "client": name})
        self.session = answer["session"]
        return self.session

    def goodbye(self) -> None:
        """End this client's session (an on-demand engine with no session and no work then stops)."""
        session, self.session = self.session, None
        if session:
            try:
                self._request("DELETE", f"/v1/sessions/{_quote(session)}", {})
            except EngineUnavailable:
                pass

    def shutdown(self) -> None:
        """Ask the engine to stop (a running job resumes at its next start)."""
        self._request("POST", "/v1/shutdown", {})

    # -- finding or starting the engine
    @classmethod
    def connect(cls, python: Optional[str] = None, start: bool = True, wait: float = 60, timeout: float = 10,
                server_args: Iterable[str] = (), env: Optional[Mapping[str, str]] = None,
                log_path: Optional[str] = None, idle_timeout: Optional[float] = DEFAULT_IDLE_TIMEOUT
                ) -> "EngineClient":
        """A client for the running engine; if none answers and `start`, start one and wait until healthy.

        `python` is the interpreter that has toon-ofx and torch installed (default: $TOON_OFX_PYTHON, else
        this interpreter); the engine runs as `<python> -m toon_ofx serve --port 0 --idle-timeout N`,
        detached from this process, logging to `<user_data_dir>/logs/server.log` (or `log_path`). An
        engine started here stops after `idle_timeout` seconds with no work and no open session
        (None: never), or when the last session says goodbye.
        """
        deadline = time.monotonic() + wait
        existing = cls._running(timeout, deadline)
        if existing is not None:
            return existing
        if not start:
            raise EngineUnavailable("no toon-ofx engine is running; start one with 'toon-ofx serve'")
        python = python or os.environ.get("TOON_OFX_PYTHON") or sys.executable
        if not python:
            raise EngineUnavailable("no Python interpreter given to start the engine with")
        log_path = log_path or os.path.join(data_dir(), "logs", "server.log")
        command = [python, "-m", "toon_ofx", "serve", "--port", "0"]
        if idle_timeout:
            command += ["--idle-timeout", f"{float(idle_timeout):g}"]
        process = _start_detached(command + list(server_args), env, log_path)
        while time.monotonic() < deadline:
            code = process.poll()
            try:
                client = cls._running(timeout)
            except EngineBusy:   # it runs: not ready yet
                client = None
            if client is not None:
                return client
            if code is not None and code != EXIT_ALREADY_RUNNING:
                raise EngineUnavailable(f"the engine stopped at start (exit code {code}); "
                                        f"last lines of {log_path}:\n{_tail(log_path)}")
            time.sleep(0.2)
        raise EngineUnavailable(f"the engine did not become ready within {wait:g} s; see {log_path}:\n"
                                f"{_tail(log_path)}")

    @classmethod
    def _running(cls, timeout: float, deadline: Optional[float] = None) -> Optional["EngineClient"]:
        """A client for the engine named in server.json, if it proves it holds our token and answers; None when
        no engine runs there. A busy one (slow, or 503 + Retry-After) is asked again until `deadline`, then
        EngineBusy: a slow engine is never taken for no engine."""
        while True:
            try:
                client = cls(timeout=min(timeout, 5))
                client.health()
            except EngineBusy as exc:
                if deadline is None or time.monotonic() >= deadline:
                    raise EngineBusy(f"{exc.message} (it runs; try again shortly)", status=exc.status) from None
                time.sleep(0.2)
                continue
            except EngineError as exc:
                if exc.status == 401:  # something answers there, but not with the token in our config folder
                    raise
                return None
            client.timeout = timeout
            return client


def _exchange(url: str, address: Optional[tuple], method: str, path: str, data: Optional[bytes],
              headers: Dict[str, str], timeout: float):
    """One HTTP exchange with the engine at `url` (at `address` once verified): (status, Retry-After seconds or
    None, body, peer address). Never through a proxy: the engine is on this machine."""
    parts = urlsplit(url)
    host, port = address or (parts.hostname, parts.port or 80)
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=data, headers=headers)
        peer = connection.sock.getpeername()
        response = connection.getresponse()
        payload = response.read()
        retry = response.getheader("Retry-After")
        return response.status, int(retry) if retry and retry.isdigit() else None, payload, peer
    except socket.timeout:
        raise EngineBusy(f"the engine at {url} is busy: it did not answer within {timeout:g} s") from None
    except http.client.HTTPException as exc:  # not an HTTP answer at all
        raise EngineUnavailable(f"{url} did not answer like the engine: {exc!r}") from None
    except OSError as exc:  # refused, reset, unreachable
        raise EngineUnavailable(f"cannot reach the engine at {url}: {exc}") from None
    finally:
        connection.close()


def _exchange_patiently(url: str, address: Optional[tuple], method: str, path: str, data: Optional[bytes],
                        headers: Dict[str, str], timeout: float):
    """`_exchange`, asked again while the engine answers 503/429 with Retry-After and `timeout` s are not over:
    (status, whether the engine was still busy, body, peer address)."""
    deadline = time.monotonic() + timeout
    while True:
        status, retry_after, payload, peer = _exchange(url, address, method, path, data, headers,
                                                       max(0.1, deadline - time.monotonic()))
        busy = status in (429, 503) and retry_after is not None
        left = deadline - time.monotonic()
        if not busy or left <= 0:
            return status, busy, payload, peer
        time.sleep(min(left, retry_after * random.uniform(1.0, 1.5)))   # spread a crowd's retries


def _answer(url: str, status: int, payload: bytes, busy: bool = False) -> Any:
    """The JSON of an answer; EngineError (EngineBusy when `busy`) for an error status."""
    try:
        answer = json.loads(payload.decode("utf-8")) if payload else None
    except (ValueError, UnicodeDecodeError):
        if status >= 400:
            raise EngineError(f"HTTP {status} from {url}", status=status) from None
        raise EngineError(f"the engine at {url} sent a reply that is not JSON") from None
    if status >= 400:
        error = answer if isinstance(answer, dict) else {}
        kind = EngineBusy if busy else EngineError
        raise kind(str(error.get("error") or f"HTTP {status}"), status=status, field=error.get("field"))
    return answer


def _start_detached(command: List[str], env: Optional[Mapping[str, str]], log_path: str) -> subprocess.Popen:
    """Start `command` in its own session, logging to `log_path` (0600, in 0700 folders; one old log kept)."""
    child_env = dict(os.environ)
    child_env.pop("PYTHONHOME", None)  # the host's own Python home must not leak into the engine's Python
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.update(env or {})
    _private_dirs(os.path.dirname(log_path))
    try:
        if os.path.getsize(log_path) > 5 * 1024 * 1024:
            os.replace(log_path, log_path + ".1")
    except OSError:
        pass
    kwargs: Dict[str, Any] = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = 0x00000200 | 0x08000000  # CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
    else:
        kwargs["start_new_session"] = True
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise EngineUnavailable(f"cannot open the engine's log {log_path}: {exc}") from None
    with os.fdopen(fd, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log.flush()
        try:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                                    env=child_env, **kwargs)
        except OSError as exc:
            raise EngineUnavailable(f"cannot start the engine with {command[0]}: {exc}") from None


def _pid_alive(pid: Any) -> bool:
    """False only when `pid` surely names no process (then its port may belong to someone else now)."""
    if not isinstance(pid, int) or pid <= 0 or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _absolute_models(params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """`params` with model/base_model/encoder made absolute when they are file paths (not manifest names)."""
    out = dict(params or {})
    for key in ("model", "base_model", "encoder"):
        value = out.get(key)
        if isinstance(value, (str, os.PathLike)) and looks_like_model_path(os.fspath(value)):
            out[key] = _absolute(value)
    return out


def looks_like_model_path(text: str) -> bool:
    """A model given as a file rather than a manifest name (manifest names have no separators or suffix).

    The engine applies the same test: such a value must then be an absolute path."""
    return ("/" in text or "\\" in text or text.startswith(("~", ".")) or
            text.lower().endswith((".pt", ".pth", ".pkl", ".tar", ".ckpt", ".bin", ".safetensors")))


def _quote(job_id: str) -> str:
    return quote(str(job_id), safe="")


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
