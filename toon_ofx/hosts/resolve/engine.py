"""The engine side of the bridge: finding the engine's Python, the panel, direct mode, the exchange files.

Resolve's Python has no torch and usually no PySide6, so the work happens in
the engine's Python: `find_engine_python()` finds it (argument, $TOON_OFX_PYTHON,
the config file, a checkout's .venv), `child_env()` strips what Resolve sets
for its own Python and Qt, and `launch_panel()` runs the PySide6 panel
(`<engine python> -m toon_ofx.panel --clips ... --result ...`) with the
clips document; the panel writes the result document back. In direct mode,
`run_engine_direct()` submits with the stdlib client and waits. Either way the
answers become `Placement`s for placement.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .api import BridgeError, Log
from .placement import Placement
from .timeline import Clip, Skipped

ENV_PYTHON = "TOON_OFX_PYTHON"
ENV_OUTPUT = "TOON_OFX_OUTPUT_DIR"
CONFIG_NAME = "resolve.json"
EXCHANGE_VERSION = 1


def package_dir() -> str:
    """The toon_ofx package folder this bridge belongs to (in a checkout, or the installer's copy)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def params_hash(params: Dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def output_folder_for(clip: Clip, params: Dict[str, Any], root: Optional[str] = None) -> str:
    """One folder per source and parameter set: the engine resumes into it, never mixes settings."""
    stem = os.path.splitext(os.path.basename(clip.source.split("%")[0].rstrip("._-") or clip.name))[0] or "clip"
    base = root or os.environ.get(ENV_OUTPUT) or os.path.join(os.path.dirname(clip.source) or ".", "toon_ofx")
    return os.path.join(base, f"{stem}_{params_hash(params)}")


def config_path() -> str:
    try:
        from ...core.dirs import user_config_dir
        return os.path.join(user_config_dir(), CONFIG_NAME)
    except Exception:
        return os.path.join(os.path.expanduser("~"), ".config", "toon-ofx", CONFIG_NAME)


def read_config() -> Dict[str, Any]:
    try:
        with open(config_path(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def find_engine_python(explicit: Optional[str] = None, origin: str = "--python") -> str:
    """The Python that has toon-ofx with torch and PySide6.

    In order: `explicit` (`origin` says where it came from: --python, or the installed script), $TOON_OFX_PYTHON,
    "python" in the config file, the .venv of the checkout this package is in.
    """
    for candidate, origin in ((explicit, origin), (os.environ.get(ENV_PYTHON), f"${ENV_PYTHON}"),
                              (read_config().get("python"), config_path())):
        if not candidate:
            continue
        path = os.path.expanduser(str(candidate))
        if os.path.isfile(path) or shutil.which(path):
            return path
        raise BridgeError(f"the engine Python {path!r} (from {origin}) does not exist. Point {ENV_PYTHON} "
                          "at the Python where toon-ofx is installed, or re-run `toon-ofx install-resolve-script`.")
    checkout = os.path.dirname(package_dir())
    for guess in (os.path.join(checkout, ".venv", "bin", "python"),
                  os.path.join(checkout, ".venv", "Scripts", "python.exe")):
        if os.path.isfile(guess):
            return guess
    raise BridgeError(f"no engine Python configured. Set {ENV_PYTHON} to the Python where toon-ofx is installed "
                      "(for example ~/toon-ofx/.venv/bin/python), or run `toon-ofx install-resolve-script` "
                      "from that Python.")


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for the engine Python: without the variables Resolve sets for its own Python and Qt."""
    env = dict(os.environ)
    for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "QT_PLUGIN_PATH", "QT_QPA_PLATFORM_PLUGIN_PATH",
                "QML2_IMPORT_PATH", "DYLD_LIBRARY_PATH", "DYLD_FRAMEWORK_PATH"):
        env.pop(key, None)
    if env.get("LD_LIBRARY_PATH") and "resolve" in env["LD_LIBRARY_PATH"].lower():
        env.pop("LD_LIBRARY_PATH")
    env.update(extra or {})
    return env


def write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def clips_document(clips: Sequence[Clip], *, project: str, timeline: str, source_track: int, video_tracks: int,
                   skipped: Sequence[Skipped] = (), params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What the panel is given (clips.json)."""
    return {"version": EXCHANGE_VERSION, "host": "resolve", "project": project, "timeline": timeline,
            "source_track": source_track, "video_tracks": video_tracks,
            "clips": [c.to_json() for c in clips], "skipped": [asdict(s) for s in skipped],
            "params": params or {}}


def launch_panel(python: str, clips_json: str, result_json: str, *, extra_args: Sequence[str] = ()) -> int:
    """Run the PySide6 panel with the engine's Python and wait for it to close."""
    cmd = [python, "-m", "toon_ofx.panel", "--clips", clips_json, "--result", result_json, *extra_args]
    try:
        proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise BridgeError(f"could not start the panel with {python}: {exc}") from None
    out, _ = proc.communicate()
    text = out.decode("utf-8", "replace") if out else ""
    if proc.returncode != 0 and not os.path.exists(result_json):
        if "No module named 'PySide6'" in text:
            raise BridgeError(f"the panel needs PySide6 in the engine Python {python}: "
                              "pip install 'toon-ofx[panel]' there.")
        if "No module named 'toon_ofx" in text:
            raise BridgeError(f"{python} has no toon-ofx installed; point {ENV_PYTHON} at the right Python.")
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise BridgeError(f"the panel exited with code {proc.returncode}:\n{tail}")
    return proc.returncode


def show_report(python: Optional[str], report_json: str) -> None:
    """Show the placement report in a small PySide6 dialog (fire and forget)."""
    if not python:
        return
    try:
        subprocess.Popen([python, "-m", "toon_ofx.panel", "--report", report_json], env=child_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        pass


def run_engine_direct(client, clips: Sequence[Clip], params: Dict[str, Any], *, output_root: Optional[str] = None,
                      output_kind: str = "sequence", log: Optional[Log] = None, poll: float = 0.5,
                      timeout: Optional[float] = None) -> List[Placement]:
    """Submit every clip to the engine process and wait; one Placement per clip."""
    log = log or (lambda message: None)
    started = []
    for clip in clips:
        job = client.submit(clip.source, frames=[clip.first, clip.last], params=params,
                            output_folder=output_folder_for(clip, params, output_root), output_kind=output_kind)
        log(f"  submitted {clip.name}: frames {clip.first}-{clip.last} (job {job['id']})")
        started.append((clip, job))
    return wait_for(client, started, log=log, poll=poll, timeout=timeout)


def resume_jobs(client, entries: Sequence[Tuple[Clip, str]], *, log: Optional[Log] = None, poll: float = 0.5,
                timeout: Optional[float] = None) -> List[Placement]:
    """Retry failed or cancelled engine jobs (the engine resumes each from its frames on disk) and wait."""
    log = log or (lambda message: None)
    started = []
    for clip, job_id in entries:
        job = client.retry(job_id)
        log(f"  resumed {clip.name} (job {job_id})")
        started.append((clip, job))
    return wait_for(client, started, log=log, poll=poll, timeout=timeout)


def wait_for(client, started: Sequence[Tuple[Clip, Dict[str, Any]]], *, log: Log, poll: float = 0.5,
             timeout: Optional[float] = None) -> List[Placement]:
    """Wait for each started job, logging its progress; one Placement per job."""
    out = []
    for clip, job in started:
        def progress(j, name=clip.name):
            pr = j.get("progress") or {}
            log(f"  {name}: {pr.get('stage', j.get('state'))} {pr.get('frames_done', 0)}/{pr.get('frames_total', 0)}")
        job = client.wait(job["id"], poll=poll, callback=progress, timeout=timeout)
        out.append(placement_from_job(clip, job))
    return out


def placement_from_job(clip: Clip, job: Optional[Dict[str, Any]]) -> Placement:
    if not job:
        return Placement(clip, status="failed", reason="not rendered")
    state, job_id = job.get("state"), job.get("id")
    if state == "done" and job.get("result"):
        overlay = (job.get("params") or {}).get("output_kind") == "overlay"
        return Placement(clip, result=job["result"], status="done", overlay=overlay, job_id=job_id)
    if state == "cancelled":
        return Placement(clip, status="cancelled", reason="cancelled", job_id=job_id)
    return Placement(clip, status="engine-failed", reason=job.get("error") or f"engine job ended {state}",
                     job_id=job_id)


def placements_from_result_doc(clips: Sequence[Clip], doc: Dict[str, Any]) -> List[Placement]:
    by_id = {c.id: c for c in clips}
    out = []
    for entry in doc.get("results") or []:
        clip = by_id.get(entry.get("clip"))
        if clip is not None:
            out.append(placement_from_job(clip, entry.get("job")))
    return out
