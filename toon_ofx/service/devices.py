"""The device a job asks for ("auto", "cpu", "mps", "cuda:N") and the one it really runs on.

Torch is imported only to answer a question about CUDA or "auto", never for "cpu" or "mps".
"""
from __future__ import annotations

from typing import Dict

from .errors import RequestError

_DEVICE_CACHE: Dict[str, str] = {}


def normalize_device(name: str) -> str:
    """The device as stored with a job: "auto", "cpu", "mps" or "cuda:N"."""
    return "cuda:0" if name == "cuda" else name


def check_device(name: str) -> str:
    """`normalize_device`, and a 422 now for a CUDA device this machine lacks (imports torch only then)."""
    name = normalize_device(name)
    if name.startswith("cuda:"):
        resolve_device(name)
    return name


def resolve_device(name: str) -> str:
    """The device a job really runs on ("auto" is resolved once; imports torch unless cpu/mps)."""
    name = normalize_device(name)
    if name in ("cpu", "mps"):
        return name
    if name in _DEVICE_CACHE:
        return _DEVICE_CACHE[name]
    try:
        import torch
    except ImportError:  # no engine here: whatever renders will say so
        torch = None
    if name == "auto":
        resolved = "cpu"
        if torch is not None and torch.cuda.is_available():
            resolved = "cuda:0"
        elif torch is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            resolved = "mps"
    else:  # cuda:N
        if torch is None or not torch.cuda.is_available():
            raise RequestError(f"device {name!r} asked for, but this machine has no CUDA GPU",
                               field="params.device", status=422)
        if int(name[5:]) >= torch.cuda.device_count():
            raise RequestError(f"device {name!r} does not exist (this machine has {torch.cuda.device_count()} GPU(s))",
                               field="params.device", status=422)
        resolved = name
    _DEVICE_CACHE[name] = resolved
    return resolved
