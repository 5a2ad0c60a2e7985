"""Command-line options shared by every parser: effect parameters and frame ranges.

Each effect parameter of the one schema (params.PARAMS) becomes one `--option`
(`swap_res` -> `--swap-res`, booleans also get `--no-...`); `params_from_args`
turns the parsed options back into validated parameters. The `toon-ofx`
command, the farm export and the farm's task command lines all use these, so a
flag is spelled in exactly one place. Stdlib-only.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Tuple

from .errors import UserError
from .params import PARAMS, validate


def option_flag(name: str) -> str:
    """The command-line flag of a parameter: `swap_res` -> `--swap-res` (booleans: `--no-swap-res` too)."""
    return "--" + name.replace("_", "-")


def add_param_options(parser: argparse.ArgumentParser) -> None:
    """One --option per schema parameter (defaults stay in the schema, not here)."""
    group = parser.add_argument_group("effect parameters")
    for p in PARAMS:
        flag = option_flag(p.name)
        extra: Dict[str, Any] = {"dest": p.name, "default": None, "help": f"{p.help} (default: {p.default})"}
        if p.type is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **extra)
        else:
            group.add_argument(flag, metavar=p.name.upper(), **extra)


def params_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The effect parameters given on the command line, validated (the others take their defaults)."""
    given = {p.name: getattr(args, p.name) for p in PARAMS if getattr(args, p.name, None) is not None}
    return validate(given)


def add_codec_option(parser: argparse.ArgumentParser) -> None:
    """`--codec` for movie outputs (the names are media.formats.CODECS; checked where the movie is planned)."""
    parser.add_argument("--codec", metavar="NAME", default=None,
                        help="movie codec (default: follow the source): h264, h264-10bit, hevc, hevc-10bit, "
                             "prores-proxy, prores-lt, prores-422, prores-422hq, prores-4444, prores-4444xq, "
                             "dnxhr-lb, dnxhr-sq, dnxhr-hq, dnxhr-hqx, dnxhr-444, xdcam-hd422 (ProRes in a .mov; "
                             "DNxHR and XDCAM in a .mov or .mxf)")


def frame_range(text: str) -> Tuple[int, int]:
    """argparse type for 'A-B' or 'A'; whether the range fits the clip is checked by the renderer."""
    try:
        first, _, last = text.partition("-")
        first, last = int(first), int(last if last else first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame range like 10-120, got {text!r}") from None
    return first, last


def parse_frame_range(text: str, *, field_name: str = "frames") -> Tuple[int, int]:
    """'A-B' (or 'A', or a farm chunk like Flamenco's 'A,B') -> (A, B), inclusive and contiguous."""
    numbers: List[int] = []
    try:
        for part in str(text).replace("..", "-").split(","):
            part = part.strip()
            if not part:
                raise ValueError
            a, sep, b = part.partition("-")
            lo = int(a)
            hi = int(b) if sep else lo
            if hi < lo:
                raise ValueError
            numbers.extend((lo, hi))
    except ValueError:
        raise UserError(f"expected a frame range like 10-120, got {text!r}", field=field_name) from None
    first, last = min(numbers), max(numbers)
    if first < 0:
        raise UserError(f"frame numbers start at 0, got {text!r}", field=field_name)
    return first, last


def checked_frame_range(text: str) -> Tuple[int, int]:
    """argparse type for `parse_frame_range` (ordered, non-negative, farm chunk notations)."""
    try:
        return parse_frame_range(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
