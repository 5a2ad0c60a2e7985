"""Errors of the engine's API: a UserError that carries the HTTP status the handler answers with."""
from __future__ import annotations

from typing import Optional

from ..core.errors import UserError


class RequestError(UserError):
    """Bad request content; `http_status` says which 4xx."""

    def __init__(self, message: str, field: Optional[str] = None, status: int = 400):
        super().__init__(message, field=field)
        self.http_status = status


class Conflict(RequestError):
    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message, field=field, status=409)


class NotFound(RequestError):
    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message, field=field, status=404)


class Busy(RequestError):
    """503 with Retry-After: the engine cannot take this request now; asking again in `retry_after` s may work."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, status=503)
        self.retry_after = retry_after
