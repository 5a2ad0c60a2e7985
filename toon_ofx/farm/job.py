"""A farm job (what renders, where, in which chunks) and the command lines its tasks run.

Render tasks run `toon-ofx render SRC -o SEQ.%06d.png --frames A-B --warmup N
[--chunk-of F-L] --json [effect parameters]`; the assemble task runs
`toon-ofx assemble SEQ.%06d.png --source SRC -o OUT.mp4 --frames F-L`. Every
export builds its tasks from `render_command`/`assemble_command`, with the
farm's own placeholders where a value is filled in per task or at submission.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..core.options import option_flag
from ..core.params import PARAMS, validate
from .plan import Chunk, plan_chunks


def explicit_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """The validated parameters a task command spells out: those that differ from their default.

    `keyframe_interval` is always included: the chunk grid depends on it.
    """
    values = validate(params)
    return {p.name: values[p.name] for p in PARAMS
            if values[p.name] != p.default or p.name == "keyframe_interval"}


def param_args(params: Dict[str, Any]) -> List[str]:
    """Command-line flags for every effect parameter that differs from its default (and keyframe_interval)."""
    out: List[str] = []
    explicit = explicit_params(params)
    for p in PARAMS:
        if p.name not in explicit:
            continue
        value, flag = explicit[p.name], option_flag(p.name)
        if p.type is bool:
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out.extend([flag, repr(value) if isinstance(value, float) else str(value)])
    return out


def render_command(source: str, sequence: str, frames: str, warmup: str, chunk_of: Optional[str],
                   params: Dict[str, Any]) -> List[str]:
    """`toon-ofx render` arguments (without the executable) for one chunk; chunk_of: the job's range."""
    args = ["render", source, "-o", sequence, "--frames", frames, "--warmup", warmup]
    if chunk_of is not None:
        args += ["--chunk-of", chunk_of]
    return args + ["--json"] + param_args(params)


def assemble_command(sequence: str, source: str, movie: str, frames: str) -> List[str]:
    """`toon-ofx assemble` arguments (without the executable)."""
    return ["assemble", sequence, "--source", source, "-o", movie, "--frames", frames]


def split_pattern(pattern: str) -> Tuple[str, str]:
    """'/a/b/clip.%06d.png' -> ('/a/b', 'clip.%06d.png') (either separator)."""
    cut = max(pattern.rfind("/"), pattern.rfind("\\"))
    if cut < 0:
        return ".", pattern
    return pattern[:cut] or "/", pattern[cut + 1:]


@dataclass
class FarmJob:
    """What a farm job renders, with paths as the farm's workers see them."""

    source: str
    sequence: str                       # printf pattern of the frames, source frame numbers
    movie: Optional[str]                # movie assembled at the end (None: the sequence is the result)
    frames: Tuple[int, int]             # inclusive source frame range
    chunk_size: int
    params: Dict[str, Any] = field(default_factory=dict)
    warmup: int = 0
    executable: str = "toon-ofx"
    name: str = "toon-ofx"
    chunk_of: bool = True               # pass --chunk-of: each task snaps its chunk onto keyframes

    @property
    def keyframe_interval(self) -> int:
        return int(validate(self.params)["keyframe_interval"])

    @property
    def frame_range(self) -> str:
        """The job's frames as 'F-L'."""
        return f"{self.frames[0]}-{self.frames[1]}"

    def chunks(self) -> List[Chunk]:
        return plan_chunks(self.frames[0], self.frames[1], self.chunk_size, self.warmup,
                           keyframe_interval=self.keyframe_interval)

    def render_args(self, frames: str) -> List[str]:
        """`toon-ofx render` arguments (without the executable) for one chunk."""
        return render_command(self.source, self.sequence, frames, str(self.warmup),
                              self.frame_range if self.chunk_of else None, self.params)

    def assemble_args(self) -> List[str]:
        assert self.movie is not None
        return assemble_command(self.sequence, self.source, self.movie, self.frame_range)
