"""How long the engine lives: client sessions (leases) and the idle stop.

A client opens a session (`POST /v1/sessions`), and every request that carries its id in the
X-Toon-Session header renews it; a session nobody renews ends when its lease runs out, so a client
that crashed keeps nothing alive. With an idle timeout (`serve --idle-timeout`, which clients pass
when they start the engine on demand; never set for an engine started by hand unless asked), the
engine stops when it has no queued or running job, no preview and no open session, and either no
request arrived for `idle_timeout` seconds or the last session said goodbye (then after a short
grace, so a client polling without a session is not cut off).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

from .errors import NotFound, RequestError

log = logging.getLogger("toon_ofx.service.lifetime")

DEFAULT_LEASE = 120.0
MIN_LEASE, MAX_LEASE = 1.0, 3600.0
MAX_SESSIONS = 1024
FAREWELL_GRACE = 2.0   # seconds without requests after the last goodbye before an on-demand engine stops


class Lifetime:
    """Sessions and the idle monitor. `busy()` says whether work keeps the engine up; `stop()` stops it."""

    def __init__(self, idle_timeout: Optional[float], busy: Callable[[], bool], stop: Callable[[], None],
                 check_every: float = 1.0):
        self.idle_timeout = idle_timeout if idle_timeout and idle_timeout > 0 else None
        self._busy, self._stop = busy, stop
        self._check_every = check_every
        self._cond = threading.Condition()
        self._sessions: Dict[str, Dict[str, Any]] = {}   # id -> {"lease", "expires", "client"}
        self._last = time.monotonic()
        self._inflight = 0        # requests being answered: they keep the engine up too
        self._farewell = False
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    # -- monitor
    def start(self) -> None:
        if self.idle_timeout is not None:
            self._thread = threading.Thread(target=self._monitor, name="toon-ofx-idle", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the monitor (the engine is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _monitor(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                self._expire(now)
                limit = FAREWELL_GRACE if self._farewell else self.idle_timeout
                if self._sessions or self._inflight or self._busy():
                    self._last = now
                elif now - self._last >= limit:
                    why = "the last session said goodbye" if self._farewell else \
                        f"no work and no session for {self.idle_timeout:g} s"
                    log.info("%s: stopping (started with --idle-timeout %g)", why, self.idle_timeout)
                    self._closed = True
                    break
                self._cond.wait(min(self._check_every, max(0.01, self._last + limit - now)))
        if self._closed:
            self._stop()

    def _expire(self, now: float) -> None:
        for sid in [s for s, info in self._sessions.items() if info["expires"] <= now]:
            log.info("session %s (%s) ended: its lease ran out", sid, self._sessions[sid]["client"] or "a client")
            del self._sessions[sid]

    # -- requests
    @contextmanager
    def request(self, session: Optional[str] = None) -> Iterator[None]:
        """Around answering one request: it counts as activity, renews `session`, keeps the engine up."""
        self.touch(session)
        with self._cond:
            self._inflight += 1
        try:
            yield
        finally:
            with self._cond:
                self._inflight -= 1
                self._last = time.monotonic()

    def touch(self, session: Optional[str] = None) -> None:
        """A request arrived (with this session id, if any): it counts as activity and renews the session."""
        now = time.monotonic()
        with self._cond:
            self._last = now
            self._farewell = False
            info = self._sessions.get(session) if session else None
            if info is not None:
                info["expires"] = now + info["lease"]

    def open(self, body: Any) -> Dict[str, Any]:
        """POST /v1/sessions {"lease_seconds", "client"} -> {"session", "lease_seconds", "sessions"}."""
        body = body if body is not None else {}
        if not isinstance(body, dict) or set(body) - {"lease_seconds", "client"}:
            raise RequestError("the body must be {\"lease_seconds\": number, \"client\": name}", field=None)
        lease = body.get("lease_seconds", DEFAULT_LEASE)
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not MIN_LEASE <= lease <= MAX_LEASE:
            raise RequestError(f"lease_seconds must be a number from {MIN_LEASE:g} to {MAX_LEASE:g}",
                               field="lease_seconds", status=422)
        client = body.get("client") or ""
        if not isinstance(client, str) or len(client) > 100:
            raise RequestError("client must be a short name", field="client")
        with self._cond:
            self._expire(time.monotonic())
            if len(self._sessions) >= MAX_SESSIONS:
                raise RequestError(f"{MAX_SESSIONS} sessions are open; close some first", status=429)
            sid = secrets.token_hex(8)
            self._sessions[sid] = {"lease": float(lease), "expires": time.monotonic() + lease, "client": client}
            self._farewell = False
            count = len(self._sessions)
        log.info("session %s opened by %s (lease %g s)", sid, client or "a client", lease)
        return {"session": sid, "lease_seconds": float(lease), "sessions": count}

    def renew(self, sid: str) -> Dict[str, Any]:
        with self._cond:
            info = self._sessions.get(sid)
            if info is None:
                raise NotFound(f"no session {sid!r} (it ended or its lease ran out)", field="session")
            info["expires"] = time.monotonic() + info["lease"]
            return {"session": sid, "lease_seconds": info["lease"], "sessions": len(self._sessions)}

    def close_session(self, sid: str) -> Dict[str, Any]:
        """DELETE /v1/sessions/<id> (goodbye); ending an unknown or ended session is fine."""
        with self._cond:
            ended = self._sessions.pop(sid, None) is not None
            if ended and not self._sessions:
                self._farewell = True
                self._last = time.monotonic()
            count = len(self._sessions)
            self._cond.notify_all()
        if ended:
            log.info("session %s said goodbye (%d left)", sid, count)
        return {"session": sid, "ended": True, "sessions": count}

    def count(self) -> int:
        with self._cond:
            self._expire(time.monotonic())
            return len(self._sessions)
