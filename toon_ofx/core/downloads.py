"""Downloading one model file: HTTP with a deadline, progress on stderr, size and SHA-256 checks.

Used by the model store's `pull`; a failed or mismatched download leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .errors import UserError

CHUNK = 1 << 20
TIMEOUT = 30


def sha256_of(path: os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_ok(e: dict, digest: str) -> bool:
    if e.get("sha256"):
        return digest == e["sha256"].lower()
    if e.get("sha256_prefix"):
        return digest.startswith(e["sha256_prefix"].lower())
    return True


def expected_hash(e: dict) -> str:
    return e.get("sha256") or (e.get("sha256_prefix", "") + "..." if e.get("sha256_prefix") else "")


class DownloadError(UserError):
    """A model could not be downloaded; `offline` when no URL could be reached at all."""

    def __init__(self, message: str, offline: bool = False):
        super().__init__(message, field="model")
        self.offline = offline


class DownloadFailed(Exception):
    def __init__(self, message: str, final: bool = False):
        super().__init__(message)
        self.final = final


def download(url: str, target: Path, e: dict, progress: bool) -> Path:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    req = urllib.request.Request(url, headers={"User-Agent": "toon-ofx model store"})
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise DownloadFailed(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise DownloadFailed("timed out (host unreachable?)") from None
        raise DownloadFailed(f"unreachable ({reason})") from None
    digest = hashlib.sha256()
    received = 0
    bar = None
    try:
        with resp:
            ctype = (resp.headers.get("Content-Type") or "").lower()
            if ctype.startswith("text/html"):
                raise DownloadFailed(f"the server answered with a web page instead of {target.name} (a download "
                                      f"quota or a sign-in page?): download it in a browser from "
                                      f"{e.get('page') or url} and put it in {target.parent}", final=True)
            total = int(resp.headers.get("Content-Length") or 0) or int(e.get("size") or 0) or None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
                           file=sys.stderr, leave=False)
            with open(tmp, "wb") as fh:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, socket.timeout) as exc:
                        raise DownloadFailed(f"connection lost after {received} bytes ({exc})") from None
                    if not chunk:
                        break
                    fh.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        expected_size = int(e.get("size") or 0)
        if expected_size and received != expected_size:
            raise DownloadFailed(f"received {received} bytes, expected {expected_size}; the download was deleted")
        got = digest.hexdigest()
        if not hash_ok(e, got):
            raise DownloadFailed(f"checksum mismatch for {target.name} from {url}: expected sha256 {expected_hash(e)}, "
                                  f"got {got}; the download was deleted", final=True)
        os.replace(tmp, target)
        return target
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
