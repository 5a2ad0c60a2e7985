"""The one error type for bad input: one clear message, no traceback.

Standard library only (the client and host scripts import it).
"""
from __future__ import annotations

from typing import Optional


class UserError(Exception):
    """Bad input or an unmet requirement the user can fix.

    The CLI prints `message` and exits non-zero; the server answers 4xx with
    {"error": message, "field": field}.
    """

    exit_code = 2
    http_status = 400

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.field = field


class Cancelled(Exception):
    """A render was cancelled by the user; finished frames are kept."""
