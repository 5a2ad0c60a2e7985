"""The DaVinci Resolve script against an in-memory fake of Resolve's documented scripting API.

`tests/fake_resolve.py` implements only documented calls with their documented
signatures and reproduces the known pitfalls; the script must cope with all of
them. The last test runs the installed script end to end against a real engine
process with a tiny model.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import fake_resolve as fr
from toon_ofx.core import params as schema
from toon_ofx.hosts.resolve import api
from toon_ofx.hosts.resolve.api import BridgeError, ResolveUnavailable, get_resolve
from toon_ofx.hosts.resolve.engine import (CONFIG_NAME, ENV_OUTPUT, ENV_PYTHON, child_env, find_engine_python,
                                           params_hash, run_engine_direct, write_json_atomic)
from toon_ofx.hosts.resolve.frames import source_range, timecode_frames
from toon_ofx.hosts.resolve.install import SCRIPT_NAME, install, render_script, scripts_dir, uninstall
from toon_ofx.hosts.resolve.placement import place_results
from toon_ofx.hosts.resolve.script import ENV_ARGS, Options, run, script_main
from toon_ofx.hosts.resolve.timeline import collect_clips, engine_source

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "resolve_scripts" / "Toon Faces.py"
from conftest import FIXTURES  # noqa: E402  ($TOON_OFX_FIXTURES or ../shared/fixtures)


# ------------------------------------------------------------------ helpers
def make_movie(path: Path, frames: int, fps: float, size=(64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        image = np.zeros((size[1], size[0], 3), np.uint8)
        image[:] = (i * 5) % 255
        cv2.putText(image, str(i), (2, size[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1)
        writer.write(image)
    writer.release()
    return path


class FakeEngine:
    """The stdlib client's API (submit/job/wait/cancel) over an engine that copies source frames.

    Writes an image sequence named by SOURCE frame numbers, as the real engine does.
    """

    def __init__(self, fail_sources=()):
        self.jobs = {}
        self.fail_sources = set(fail_sources)
        self.lock = threading.Lock()

    def submit(self, source, frames=None, params=None, output_folder=None, output_kind="sequence", name=None):
        params = schema.validate(params or {})
        first, last = frames
        job = {"id": f"job{len(self.jobs) + 1}", "state": "queued", "source": source, "frames": [first, last],
               "params": params, "output": {"folder": output_folder, "kind": output_kind, "name": name},
               "progress": {"frames_done": 0, "frames_total": last - first + 1, "stage": "queued",
                            "eta_seconds": None, "faces": 0}, "error": None, "result": None}
        self.jobs[job["id"]] = job
        return dict(job)

    def job(self, job_id):
        return dict(self.jobs[job_id])

    def cancel(self, job_id):
        self.jobs[job_id]["state"] = "cancelled"
        return dict(self.jobs[job_id])

    def retry(self, job_id):
        job = self.jobs[job_id]
        assert job["state"] in ("failed", "cancelled"), job["state"]
        job.update(state="queued", error=None)
        return dict(job)

    def _run(self, job):
        if job["state"] != "queued":
            return
        if job["source"] in self.fail_sources:
            job.update(state="failed", error="no face found anywhere in the clip")
            return
        first, last = job["frames"]
        folder = Path(job["output"]["folder"])
        folder.mkdir(parents=True, exist_ok=True)
        pattern = str(folder / (Path(job["source"]).stem + "_toon.%06d.png"))
        cap = cv2.VideoCapture(job["source"])
        index = 0
        while index <= last:
            ok, image = cap.read()
            if not ok:
                break
            if index >= first:
                cv2.imwrite(pattern % index, 255 - image)
            index += 1
        cap.release()
        job.update(state="done", result={"kind": "sequence", "path": str(folder), "pattern": pattern,
                                         "first_frame": first, "last_frame": last, "fps": None})
        job["progress"].update(frames_done=last - first + 1, stage="done")

    def wait(self, job_id, poll=0.5, callback=None, timeout=None):
        job = self.jobs[job_id]
        self._run(job)
        if callback:
            callback(dict(job))
        return dict(job)


@pytest.fixture(params=["zero", "numbered"])
def sequence_frames(request) -> str:
    """Both ways Resolve may count clipInfo frames of an image sequence (from 0, from its first number)."""
    return request.param


@pytest.fixture
def edit(tmp_path, sequence_frames):
    """A 24 fps timeline starting at 86400 with two clips on V1: one at 24 fps, one at 30 fps."""
    a = make_movie(tmp_path / "a.mp4", 48, 24)
    b = make_movie(tmp_path / "b.mp4", 60, 30)
    resolve, project, timeline = fr.make_edit([
        {"path": a, "start": 10, "end": 22, "record": 0},       # 12 frames of a, from a's frame 10
        {"path": b, "start": 15, "end": 45, "record": 40},      # 30 frames of b (1 s) = 24 timeline frames
    ], sequence_frames=sequence_frames)
    return resolve, project, timeline, a, b


@pytest.fixture(autouse=True)
def private_config(tmp_path, monkeypatch):
    """The bridge's config folder (engine Python, renders to retry) in the test's own folder."""
    monkeypatch.setenv("TOON_OFX_CONFIG_DIR", str(tmp_path / "config"))


# -------------------------------------------------------- the fake itself
def test_fake_record_frames_are_absolute(tmp_path):
    movie = make_movie(tmp_path / "m.mp4", 20, 24)
    resolve, project, timeline = fr.make_edit([])
    assert timeline.GetStartFrame() == 86400 and timeline.GetStartTimecode() == "01:00:00:00"
    pool = project.GetMediaPool()
    item = pool.ImportMedia([str(movie)])[0]
    placed = pool.AppendToTimeline([{"mediaPoolItem": item, "startFrame": 0, "endFrame": 10, "trackIndex": 1,
                                     "recordFrame": 0, "mediaType": 1}])
    # a "relative" record frame lands an hour before the timeline start and still reads back fine
    assert placed[0].GetStart() == 0 and placed[0].GetStart() < timeline.GetStartFrame()


def test_fake_drops_overlapping_clips_silently(tmp_path):
    movie = make_movie(tmp_path / "m.mp4", 20, 24)
    resolve, project, timeline = fr.make_edit([{"path": movie, "start": 0, "end": 10, "record": 0}])
    pool = project.GetMediaPool()
    item = pool.GetRootFolder().GetClipList()[0]
    answer = pool.AppendToTimeline([{"mediaPoolItem": item, "startFrame": 0, "endFrame": 10, "trackIndex": 1,
                                     "recordFrame": 86405}])
    assert len(answer) == 1                                     # looks like success...
    assert answer[0] not in timeline.GetItemListInTrack("video", 1)  # ...but nothing landed
    assert len(timeline.GetItemListInTrack("video", 1)) == 1


def test_fake_imports_land_in_the_current_folder(tmp_path):
    movie = make_movie(tmp_path / "m.mp4", 5, 24)
    resolve, project, _ = fr.make_edit([])
    pool = project.GetMediaPool()
    root = pool.GetRootFolder()
    toon = pool.AddSubFolder(root, "Toon")
    assert pool.GetCurrentFolder() is root                      # AddSubFolder does not switch
    pool.ImportMedia([str(movie)])
    assert len(root.GetClipList()) == 1 and not toon.GetClipList()
    assert pool.SetCurrentFolder(toon)
    pool.ImportMedia([str(movie)])
    assert len(toon.GetClipList()) == 1
    assert pool.ImportMedia([str(tmp_path / "missing.mp4")]) == []


def test_fake_image_sequence_is_one_item_at_project_rate(tmp_path):
    for i in range(5, 12):
        cv2.imwrite(str(tmp_path / f"s.{i:04d}.png"), np.zeros((8, 8, 3), np.uint8))
    resolve, project, _ = fr.make_edit([], timeline_fps=25)
    pool = project.GetMediaPool()
    by_info = pool.ImportMedia([{"FilePath": str(tmp_path / "s.%04d.png"), "StartIndex": 5, "EndIndex": 11}])
    by_files = pool.ImportMedia(sorted(str(p) for p in tmp_path.glob("s.*.png")))
    by_folder = pool.ImportMedia([str(tmp_path)])
    for items in (by_info, by_files, by_folder):
        assert len(items) == 1
        assert items[0].GetClipProperty("Frames") == "7"
        assert items[0].GetClipProperty("FPS") == "25"
        assert items[0].GetClipProperty("File Path").endswith("s.[0005-0011].png")


def test_fake_takes_only_documented_calls_and_signatures(tmp_path):
    resolve, project, timeline = fr.make_edit([])
    with pytest.raises(TypeError):
        timeline.GetItemListInTrack(trackType="video", index=1)     # keyword arguments
    with pytest.raises(TypeError):
        timeline.GetItemListInTrack("video")                        # missing argument
    with pytest.raises(AttributeError):
        timeline.GetSelectedItems()                                 # not in README.txt
    with pytest.raises(TypeError):
        project.GetMediaPool().AppendToTimeline([{"mediaPoolItem": None, "recordframe": 1}])  # misspelt key
    assert timeline.GetItemListInTrack("video", 5) is None


@pytest.mark.parametrize("version, end, frames", [((19, 1, 4, 11, ""), 10, 10), ((18, 6, 6, 7, ""), 10, 11)])
def test_fake_end_frame_exclusive_from_19(tmp_path, version, end, frames):
    movie = make_movie(tmp_path / "m.mp4", 20, 24)
    resolve, project, timeline = fr.make_edit([], version=version)
    pool = project.GetMediaPool()
    item = pool.ImportMedia([str(movie)])[0]
    placed = pool.AppendToTimeline([{"mediaPoolItem": item, "startFrame": 0, "endFrame": end, "trackIndex": 1,
                                     "recordFrame": 86400}])
    assert placed[0].GetDuration() == frames


# ------------------------------------------------------------ reading clips
def test_collect_clips_reads_source_ranges_in_clip_frames(edit):
    resolve, project, timeline, a, b = edit
    timeline.SetCurrentTimecode("01:00:02:00")                 # frame 86448: inside the second clip
    clips, skipped, track = collect_clips(timeline, project=project)
    assert track == 1 and not skipped
    first, second = clips
    assert (first.source, first.kind, first.first, first.last) == (str(a), "movie", 10, 21)
    assert (first.record_start, first.record_end) == (86400, 86412)
    assert not first.current and second.current
    # 30 fps clip on a 24 fps timeline: 24 timeline frames = 30 source frames, offset 12 -> 15
    assert (second.first, second.last, second.clip_fps, second.timeline_fps) == (15, 44, 30.0, 24.0)
    assert (second.record_start, second.record_end) == (86440, 86464)


def test_collect_clips_uses_the_track_under_the_playhead_and_skips_generators(tmp_path):
    a = make_movie(tmp_path / "a.mp4", 30, 24)
    resolve, project, timeline = fr.make_edit([
        {"path": a, "start": 0, "end": 10, "record": 0},
        {"path": a, "start": 5, "end": 15, "record": 0, "track": 2},
    ])
    timeline.SetCurrentTimecode("01:00:01:00")
    assert timeline.InsertGeneratorIntoTimeline("Solid Color").GetMediaPoolItem() is None
    timeline.SetCurrentTimecode("01:00:00:05")
    clips, skipped, track = collect_clips(timeline, project=project)
    assert track == 2 and [c.first for c in clips] == [5] and clips[0].current
    clips, skipped, _ = collect_clips(timeline, track=1, project=project)
    assert [c.first for c in clips] == [0]
    assert [(s.name, "generator" in s.reason) for s in skipped] == [("Solid Color", True)]
    with pytest.raises(BridgeError, match="no video track 7"):
        collect_clips(timeline, track=7)


def test_source_range_and_sequences():
    assert source_range(12, 24, 30, 24) == (15, 44)
    assert source_range(0, 10, 23.976, 23.976) == (0, 9)
    assert source_range(5, 10, 25, 50) == (2, 6)   # 50 fps timeline: 10 timeline frames = 5 clip frames
    assert engine_source("/m/shot.[0001-0100].exr") == ("/m/shot.%04d.exr", "sequence")
    assert engine_source("/m/a [1].mov") == ("/m/a [1].mov", "movie")


def test_timecodes_to_frames():
    assert timecode_frames("01:00:00:00", 24) == 86400
    assert timecode_frames("01:00:01:05", 25) == 90030
    assert timecode_frames("00:01:00;02", 29.97) == 1800          # drop frame: ;00 and ;01 do not exist
    assert timecode_frames("00:10:00;00", 29.97) == 17982         # every tenth minute keeps them
    assert timecode_frames("00:01:00;04", 59.94) == 3600
    with pytest.raises(ValueError):
        timecode_frames("garbage", 24)


def test_source_track_is_the_topmost_with_footage_under_the_playhead(tmp_path):
    """A title and an adjustment clip above the footage are "current" for Resolve; the script looks below."""
    a = make_movie(tmp_path / "a.mp4", 48, 24)
    resolve, project, timeline = fr.make_edit([
        {"path": a, "start": 0, "end": 40, "record": 0},
        {"path": a, "start": 0, "end": 10, "record": 0, "track": 2},   # V2 footage only over frames 0-9
    ])
    pool = project.GetMediaPool()
    timeline._add_item("Text+", 3, 0, 48)                              # a title over everything
    timeline._add_item("Adjustment Clip", 4, 0, 48)
    compound = pool._new_item("Compound Clip 1", {"Type": "Compound", "File Path": "", "FPS": "24", "Frames": "48",
                                                  "Start": "0", "End": "47"})
    timeline._add_item("Compound Clip 1", 5, 0, 48, compound)
    timeline.SetCurrentTimecode("01:00:00:05")
    assert timeline.GetCurrentVideoItem().GetName() == "Compound Clip 1"    # what Resolve calls current
    clips, skipped, track = collect_clips(timeline, project=project)
    assert track == 2 and [c.first for c in clips] == [0]
    timeline.SetCurrentTimecode("01:00:00:20")                          # past V2's clip: V1
    assert collect_clips(timeline, project=project)[2] == 1
    timeline.SetCurrentTimecode("01:00:00:05")
    timeline.SetTrackEnable("video", 2, False)                          # a disabled track shows nothing
    assert collect_clips(timeline, project=project)[2] == 1
    timeline.SetTrackEnable("video", 2, True)
    timeline.GetItemListInTrack("video", 2)[0].SetClipEnabled(False)   # nor does a disabled clip
    assert collect_clips(timeline, project=project)[2] == 1
    _, skipped, _ = collect_clips(timeline, track=5, project=project)
    assert "compound" in skipped[0].reason
    _, skipped, _ = collect_clips(timeline, track=3, project=project)
    assert "title" in skipped[0].reason


def test_retimed_items_are_refused_with_the_reason(tmp_path):
    a = make_movie(tmp_path / "a.mp4", 96, 24)
    b = make_movie(tmp_path / "b.mp4", 60, 30)
    resolve, project, timeline = fr.make_edit([
        {"path": a, "start": 10, "end": 30, "record": 0},
        {"path": a, "start": 40, "end": 60, "record": 100},
        {"path": b, "start": 0, "end": 30, "record": 200},       # 30 fps in 24: real time, not a retime
        {"path": a, "start": 0, "end": 24, "record": 300},
    ])
    slow, fast, conformed, normal = timeline.GetItemListInTrack("video", 1)
    slow._set_speed(50)
    fast._set_speed(200)
    assert (slow.GetDuration(), fast.GetDuration()) == (40, 10)   # a speed change moves the out point
    clips, skipped, _ = collect_clips(timeline, track=1, project=project)
    assert [c.record_start for c in clips] == [86600, 86700]
    assert [s.name for s in skipped] == ["a.mp4", "a.mp4"]
    assert "about 50% speed" in skipped[0].reason and "source frames 10-30" in skipped[0].reason
    assert "about 200% speed" in skipped[1].reason and "Render in Place" in skipped[1].reason

    # the whole script: the retimed items are reported, the others placed
    lines = []
    code = script_main({"resolve": resolve}, argv=["--direct", "--track", "1", "--no-report"], log=lines.append,
                       client=FakeEngine())
    assert code == 0
    text = "\n".join(lines)
    assert "Placed 2 toon clip(s) on V2" in text and "Skipped 2 timeline item(s)" in text
    assert [it.GetStart() for it in timeline.GetItemListInTrack("video", 2)] == [86600, 86700]


def test_image_sequence_source_counted_from_the_first_file_on_disk(tmp_path, sequence_frames):
    """Resolve's item starts at shot.0020 while the folder starts at shot.0011: the engine counts from 0011 (its
    first_number), and its results carry the source's file numbers (shot_toon.0022 for shot.0022)."""
    for n in range(11, 50):
        cv2.imwrite(str(tmp_path / f"shot.{n:04d}.png"), np.full((8, 8, 3), n, np.uint8))
    seq = {"FilePath": str(tmp_path / "shot.%04d.png"), "StartIndex": 20, "EndIndex": 49}
    resolve, project, timeline = fr.make_edit([{"path": seq, "start": 2, "end": 12, "record": 24}],
                                              sequence_frames=sequence_frames)
    ((clip,), _, _) = collect_clips(timeline, track=1, project=project)
    assert clip.kind == "sequence" and clip.source == str(tmp_path / "shot.%04d.png")
    assert (clip.first, clip.last) == (11, 20)                      # shot.0022 .. shot.0031 in engine frames
    out = tmp_path / "out"
    out.mkdir()
    for n in range(22, 32):                                          # what the engine writes
        cv2.imwrite(str(out / f"shot_toon.{n:04d}.png"), np.full((8, 8, 3), 255 - n, np.uint8))
    result = {"kind": "sequence", "pattern": str(out / "shot_toon.%04d.png"), "first_frame": clip.first,
              "last_frame": clip.last, "first_number": 11}
    report = place_results(resolve, project, timeline, [fr_placement(clip, result)], source_track=1)
    assert report.ok, report.text()
    (item,) = timeline.GetItemListInTrack("video", 2)
    assert (item.GetStart(), item.GetDuration()) == (86424, 10)
    assert item.GetMediaPoolItem().GetClipProperty("File Path") == str(out / "shot_toon.[0022-0031].png")


def fr_placement(clip, result, overlay=False):
    from toon_ofx.hosts.resolve.placement import Placement
    return Placement(clip, result=result, status="done", overlay=overlay)


# ------------------------------------------------------------------ placing
def _render(clips, engine=None):
    engine = engine or FakeEngine()
    return run_engine_direct(engine, clips, schema.validate({}))


def test_place_results_on_a_new_track_at_the_same_record_frames(edit):
    resolve, project, timeline, a, b = edit
    pool = project.GetMediaPool()
    clips, _, track = collect_clips(timeline, track=1)
    report = place_results(resolve, project, timeline, _render(clips), source_track=track)
    assert report.ok and len(report.placed) == 2 and report.track == 2
    placed = timeline.GetItemListInTrack("video", 2)
    assert [(it.GetStart(), it.GetEnd()) for it in placed] == [(86400, 86412), (86440, 86464)]
    bins = {f.GetName(): f for f in pool.GetRootFolder().GetSubFolderList()}
    assert len(bins["Toon"].GetClipList()) == 2                 # one item per image sequence
    assert pool.GetCurrentFolder() is pool.GetRootFolder()     # restored
    assert len(pool.GetRootFolder().GetClipList()) == 2         # only the two sources
    # the 30 fps result was re-timed to its clip's rate, so it fills the same 24 timeline frames
    assert placed[1].GetMediaPoolItem().GetClipProperty("FPS") == "30"


LOOK = {"ZoomGang": False, "ZoomX": 1.5, "ZoomY": 1.2, "Pan": 40.0, "Tilt": -20.0, "RotationAngle": 12.0,
        "CropLeft": 30.0, "CropSoftness": 5.0, "FlipX": True, "Distortion": 0.25, "Scaling": 2,
        "CompositeMode": 5, "Opacity": 60.0}


@pytest.mark.parametrize("overlay", [False, True])
def test_results_get_the_source_items_look(edit, monkeypatch, overlay):
    """Transform, crop and compositing come across with the documented SetProperty keys, read back; what the
    API cannot copy is said. An overlay composites Normal at full opacity over its (unchanged) source."""
    resolve, project, timeline, a, b = edit
    styled, plain = timeline.GetItemListInTrack("video", 1)
    assert styled.SetProperty(LOOK)
    clips, _, track = collect_clips(timeline, track=1)
    placements = _render(clips)
    for p in placements:
        p.overlay = overlay
    ignored = fr.TimelineItem.SetProperty

    def deaf_to_distortion(self, *args):                # a setter that answers True and changes nothing
        return True if args[:1] == ("Distortion",) else ignored(self, *args)

    monkeypatch.setattr(fr.TimelineItem, "SetProperty", deaf_to_distortion)
    report = place_results(resolve, project, timeline, placements, source_track=track)
    assert report.ok and len(report.placed) == 2
    toon_styled, toon_plain = timeline.GetItemListInTrack("video", 2)
    for key, value in LOOK.items():
        if key == "Distortion":
            assert toon_styled.GetProperty(key) == 0.0
        elif key in ("CompositeMode", "Opacity") and overlay:
            assert toon_styled.GetProperty(key) == {"CompositeMode": 0, "Opacity": 100.0}[key]
        else:
            assert toon_styled.GetProperty(key) == pytest.approx(value), key
    assert styled.GetProperty("CompositeMode") == 5 and styled.GetProperty("Opacity") == 60.0   # source untouched
    assert toon_plain.GetProperty() == plain.GetProperty()
    assert "Resolve would not take Distortion" in report.placed[0].note and not report.placed[1].note
    assert "not copied (no scripting call for them): grades" in report.text()


def test_place_results_reports_clips_it_could_not_place(edit):
    resolve, project, timeline, a, b = edit
    pool = project.GetMediaPool()
    timeline.AddTrack("video")
    blocker = pool.GetRootFolder().GetClipList()[0]
    pool.AppendToTimeline([{"mediaPoolItem": blocker, "startFrame": 0, "endFrame": 5, "trackIndex": 2,
                            "recordFrame": 86450}])
    clips, _, track = collect_clips(timeline, track=1)
    report = place_results(resolve, project, timeline, _render(clips), source_track=track, target=2)
    assert [p.clip.name for p in report.placed] == ["a.mp4"]
    assert [p.clip.name for p in report.failed] == ["b.mp4"]
    assert "overlap" in report.failed[0].reason and "86450" in report.failed[0].reason
    assert "Could not place 1 clip(s)" in report.text()


def test_a_resolve_that_clamps_the_frames_it_does_not_count_that_way(edit, monkeypatch, sequence_frames):
    """If Resolve placed the part of a request that falls inside the item instead of nothing, the short clip
    is taken out again and the other counting tried."""
    resolve, project, timeline, a, b = edit
    pool = project.GetMediaPool()
    original = fr.MediaPool.AppendToTimeline

    def clamping(self, entries):
        out = []
        for info in entries:
            mpi, start = info["mediaPoolItem"], info["startFrame"]
            base = mpi._first_number() if sequence_frames == "numbered" else 0
            lo, hi = base, base + mpi._frames()
            clamped = dict(info, startFrame=min(max(start, lo), hi), endFrame=min(max(info["endFrame"], lo), hi))
            out += original(self, [clamped])
        return out

    monkeypatch.setattr(fr.MediaPool, "AppendToTimeline", clamping)
    clips, _, track = collect_clips(timeline, track=1)
    report = place_results(resolve, project, timeline, _render(clips), source_track=track)
    assert report.ok, report.text()
    placed = timeline.GetItemListInTrack("video", 2)
    assert [(it.GetStart(), it.GetEnd()) for it in placed] == [(86400, 86412), (86440, 86464)]
    assert pool.GetCurrentFolder() is pool.GetRootFolder()


def test_place_results_with_resolve_18_inclusive_end_frame(tmp_path):
    a = make_movie(tmp_path / "a.mp4", 30, 24)
    resolve, project, timeline = fr.make_edit([{"path": a, "start": 3, "end": 13, "record": 7}],
                                              version=(18, 6, 6, 7, ""))
    clips, _, track = collect_clips(timeline, track=1)
    report = place_results(resolve, project, timeline, _render(clips), source_track=track)
    assert report.ok
    (item,) = timeline.GetItemListInTrack("video", 2)
    assert (item.GetStart(), item.GetDuration()) == (86407, 10)


def test_place_results_switches_back_to_the_source_timeline(edit):
    resolve, project, timeline, a, b = edit
    clips, _, track = collect_clips(timeline, track=1)
    other = project.GetMediaPool().CreateEmptyTimeline("Other")
    project.SetCurrentTimeline(other)                           # the user moved on while the engine ran
    report = place_results(resolve, project, timeline, _render(clips), source_track=track)
    assert report.ok and project.GetCurrentTimeline() is timeline
    assert not other.GetItemListInTrack("video", 1)


def test_engine_failures_and_bad_targets_are_reported(edit):
    resolve, project, timeline, a, b = edit
    clips, _, track = collect_clips(timeline, track=1)
    placements = _render(clips, FakeEngine(fail_sources={str(b)}))
    report = place_results(resolve, project, timeline, placements, source_track=track)
    assert [p.clip.name for p in report.failed] == ["b.mp4"]
    assert "no face" in report.failed[0].reason
    with pytest.raises(BridgeError, match="not above"):
        place_results(resolve, project, timeline, _render(clips), source_track=track, target=1)


# ------------------------------------------------------------------ script
def test_script_direct_mode_end_to_end_with_a_fake_engine(edit, tmp_path):
    resolve, project, timeline, a, b = edit
    lines = []
    code = script_main({"resolve": resolve}, argv=["--direct", "--track", "1", "--set", "steps=20",
                                                    "--output-dir", str(tmp_path / "out")],
                       log=lines.append, client=FakeEngine())
    assert code == 0, lines
    assert len(timeline.GetItemListInTrack("video", 2)) == 2
    assert any("Placed 2 toon clip(s) on V2" in line for line in lines)
    folders = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(folders) == 2 and all(f.endswith(params_hash(schema.validate({"steps": 20}))) for f in folders)


def test_failed_and_cancelled_renders_are_resumed_with_retry(edit, tmp_path):
    """A failed render is kept; `--retry` resumes its engine job and places it on the track the first run used."""
    resolve, project, timeline, a, b = edit
    engine = FakeEngine(fail_sources={str(b)})
    lines = []
    args = ["--direct", "--track", "1", "--output-dir", str(tmp_path / "out"), "--no-report"]
    assert script_main({"resolve": resolve}, argv=args, log=lines.append, client=engine) == 3
    assert "1 render(s) failed or were cancelled; run Toon Faces with --retry" in "\n".join(lines)
    assert [it.GetName() for it in timeline.GetItemListInTrack("video", 2)] == ["a_toon.[000010-000021].png"]

    other = project.GetMediaPool().CreateEmptyTimeline("Other")
    project.SetCurrentTimeline(other)
    assert script_main({"resolve": resolve}, argv=["--retry"], log=lines.append, client=engine) == 2
    assert "belong to timeline 'Edit 1'" in lines[-1]
    project.SetCurrentTimeline(timeline)

    engine.fail_sources.clear()                                  # whatever broke is fixed
    lines.clear()
    assert script_main({"resolve": resolve}, argv=["--retry", "--no-report"], log=lines.append, client=engine) == 0
    assert "resumed b.mp4" in "\n".join(lines)
    assert [it.GetStart() for it in timeline.GetItemListInTrack("video", 2)] == [86400, 86440]   # same track
    assert timeline.GetTrackCount("video") == 2
    assert script_main({"resolve": resolve}, argv=["--retry"], log=lines.append, client=engine) == 2
    assert "nothing to retry" in lines[-1]


def test_script_panel_mode_places_what_the_panel_rendered(edit, tmp_path):
    resolve, project, timeline, a, b = edit
    engine = FakeEngine()
    seen = {}

    def fake_panel(python, clips_json, result_json):
        doc = json.loads(Path(clips_json).read_text())
        seen.update(doc)
        entries = []
        for clip in doc["clips"][:1]:                           # the user ticked only the first clip
            job = engine.submit(clip["source"], [clip["first"], clip["last"]], {"swap_res": 32},
                                str(tmp_path / "out"), "sequence")
            entries.append({"clip": clip["id"], "job": engine.wait(job["id"])})
        write_json_atomic(result_json, {"version": 1, "status": "done", "target_track": 3,
                                        "results": entries})
        return 0

    options = Options(mode="panel", track=1, engine_python=sys.executable, workdir=str(tmp_path),
                      show_report=False)
    report = run(resolve, options, panel=fake_panel, log=lambda m: None)
    assert seen["source_track"] == 1 and seen["video_tracks"] == 1 and len(seen["clips"]) == 2
    assert seen["clips"][0]["record_start"] == 86400
    assert report.ok and report.track == 3 and timeline.GetTrackCount("video") == 3
    assert [it.GetStart() for it in timeline.GetItemListInTrack("video", 3)] == [86400]


def test_script_panel_closed_without_rendering_places_nothing(edit, tmp_path):
    resolve, project, timeline, a, b = edit
    options = Options(mode="panel", track=1, engine_python=sys.executable, workdir=str(tmp_path))
    report = run(resolve, options, panel=lambda *a: 0, log=lambda m: None)
    assert not report.placed and timeline.GetTrackCount("video") == 1


def test_unreachable_resolve_says_what_is_needed(monkeypatch, capsys):
    def no_module(name):
        raise ImportError(name)

    with pytest.raises(ResolveUnavailable) as info:
        get_resolve({}, importer=no_module)
    message = info.value.message
    assert "must be running" in message and "21.1" in message and "External scripting" in message

    class Module:
        @staticmethod
        def scriptapp(name):
            return None

    with pytest.raises(ResolveUnavailable, match="did not answer"):
        get_resolve({}, importer=lambda name: Module)
    assert get_resolve({"app": type("App", (), {"GetResolve": lambda self: "R"})()}) == "R"

    # the script file itself: run outside Resolve with no DaVinciResolveScript -> message, no traceback
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    monkeypatch.setitem(sys.modules, "DaVinciResolveScript", None)
    monkeypatch.setattr(api, "default_api_dirs", lambda *a, **k: [])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert "cannot reach DaVinci Resolve" in out and "Traceback" not in out


def test_no_project_or_timeline_is_a_clear_message():
    resolve = fr.Resolve()
    lines = []
    assert script_main({"resolve": resolve}, argv=["--direct"], log=lines.append) == 2
    assert "no project is open" in lines[-1]
    resolve.GetProjectManager().CreateProject("Empty")
    assert script_main({"resolve": resolve}, argv=["--direct"], log=lines.append) == 2
    assert "no timeline is open" in lines[-1]


def test_bad_parameters_are_one_clear_message(edit):
    resolve = edit[0]
    lines = []
    code = script_main({"resolve": resolve}, argv=["--direct", "--track", "1", "--set", "steps=99999"],
                       log=lines.append, client=FakeEngine())
    assert code == 2 and lines[-1] == "Toon Faces: steps: must be at most 5000; got 99999"
    assert script_main({"resolve": resolve}, argv=["--target", "top"], log=lines.append) == 2
    assert "--target must be 'new' or a track number" in lines[-1]


# --------------------------------------------------------------- installer
@pytest.mark.parametrize("system, all_users, expected", [
    ("linux", False, "/home/u/.local/share/DaVinciResolve/Fusion/Scripts/Utility"),
    ("linux", True, "/opt/resolve/Fusion/Scripts/Utility"),
    ("darwin", False, "/home/u/Library/Application Support/Blackmagic Design/DaVinci Resolve/Fusion/Scripts/Utility"),
    ("darwin", True, "/Library/Application Support/Blackmagic Design/DaVinci Resolve/Fusion/Scripts/Utility"),
    ("win32", False, r"C:\Users\u\AppData\Roaming\Blackmagic Design\DaVinci Resolve\Support\Fusion\Scripts\Utility"),
    ("win32", True, r"C:\ProgramData\Blackmagic Design\DaVinci Resolve\Fusion\Scripts\Utility"),
])
def test_scripts_folder_per_os(system, all_users, expected):
    env = {"APPDATA": r"C:\Users\u\AppData\Roaming", "PROGRAMDATA": r"C:\ProgramData"}
    assert scripts_dir(system, all_users=all_users, env=env, home="/home/u") == expected


def test_checked_in_script_is_the_installer_template():
    assert SCRIPT.read_text(encoding="utf-8") == render_script(None, None)


def test_installer_copies_script_and_client_and_the_installed_script_runs(tmp_path, edit, monkeypatch):
    import subprocess

    dest, lib = tmp_path / "Scripts" / "Utility", tmp_path / "lib"
    out = subprocess.run([sys.executable, str(REPO / "resolve_scripts" / "install.py"), "--dest", str(dest),
                          "--lib-dir", str(lib), "--python", sys.executable],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    installed = dest / SCRIPT_NAME
    (copy,) = lib.iterdir()                                     # one copy, named by its content
    assert copy.name.startswith("toon_ofx-") and (copy / "toon_ofx" / "hosts" / "resolve" / "script.py").exists()
    assert list(dest.iterdir()) == [installed]                  # nothing else shows up in Resolve's menu
    text = installed.read_text()
    assert repr(str(copy)) in text and repr(sys.executable) in text
    # run it as Resolve would: `resolve` in its globals, options from TOON_OFX_RESOLVE_ARGS
    resolve = edit[0]
    monkeypatch.setenv(ENV_ARGS, "--direct --track 7")
    lines = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    runpy.run_path(str(installed), init_globals={"resolve": resolve}, run_name="__main__")
    assert any("no video track 7" in line for line in lines), lines
    assert "--dry-run" in subprocess.run([sys.executable, str(REPO / "resolve_scripts" / "install.py"), "--help"],
                                         capture_output=True, text=True).stdout


def test_reinstall_swaps_the_copy_and_removes_only_its_own_files(tmp_path, monkeypatch):
    """A reinstall writes a fresh copy, points the script at it, and deletes the copies earlier installs left
    (also the first layout's `toon_ofx/` with the pre-split hosts/resolve.py), never anything else."""
    from toon_ofx.hosts.resolve import install as install_module
    from toon_ofx.hosts.resolve import libdir

    dest, lib = tmp_path / "Utility", tmp_path / "lib"
    names = install_module.vendored_names()
    legacy = lib / "toon_ofx"                                  # what installs before the package split left
    for name in names + ["hosts/resolve.py"]:
        (legacy / name).parent.mkdir(parents=True, exist_ok=True)
        (legacy / name).write_text("# old copy\n")
    (legacy / "hosts" / "__pycache__").mkdir()
    (legacy / "hosts" / "__pycache__" / "resolve.cpython-311.pyc").write_bytes(b"x")
    (lib / "notes.txt").write_text("mine")                    # the user's own files stay
    foreign = lib / "toon_ofx-mine"
    foreign.mkdir()
    (foreign / "x.py").write_text("")
    lines = []
    install(str(dest), python=PY, lib_dir=str(lib), log=lines.append)
    copies = sorted(p.name for p in lib.iterdir() if p.name.startswith("toon_ofx-") and p != foreign)
    assert len(copies) == 1 and not legacy.exists()
    assert (lib / "notes.txt").read_text() == "mine" and (foreign / "x.py").exists()
    first = lib / copies[0]
    assert repr(str(first)) in (dest / SCRIPT_NAME).read_text()
    assert any("removed the old copy" in line and str(legacy) in line for line in lines)

    # the same sources again: the same copy, untouched
    stamp = (first / libdir.MANIFEST).stat().st_mtime_ns
    install(str(dest), python=PY, lib_dir=str(lib), log=lambda m: None)
    assert (first / libdir.MANIFEST).stat().st_mtime_ns == stamp

    # changed sources: a new copy, the old one removed, the script pointing at the new one
    changed = tmp_path / "pkg"
    import shutil
    shutil.copytree(REPO / "toon_ofx", changed, ignore=shutil.ignore_patterns("__pycache__"))
    (changed / "client.py").write_text((changed / "client.py").read_text() + "\n# changed\n")
    monkeypatch.setattr(install_module, "package_dir", lambda: str(changed))
    install(str(dest), python=PY, lib_dir=str(lib), log=lambda m: None)
    (second,) = [p for p in lib.iterdir() if p.name.startswith("toon_ofx-") and p != foreign]
    assert second != first and not first.exists()
    assert (second / "toon_ofx" / "client.py").read_text().endswith("# changed\n")
    assert repr(str(second)) in (dest / SCRIPT_NAME).read_text()

    # a copy holding a file toon-ofx did not write is not ours: left alone; a foreign folder in the way fails
    (second / "toon_ofx" / "extra.py").write_text("")
    monkeypatch.setattr(install_module, "package_dir", lambda: str(REPO / "toon_ofx"))
    install(str(dest), python=PY, lib_dir=str(lib), log=lambda m: None)
    assert (second / "toon_ofx" / "extra.py").exists()
    stamped = lib / (libdir.PREFIX + libdir.content_stamp(str(REPO / "toon_ofx"), names))
    shutil.rmtree(stamped)
    stamped.mkdir()
    (stamped / "x").write_text("")
    with pytest.raises(libdir.LibError, match="not written by toon-ofx"):
        install(str(dest), python=PY, lib_dir=str(lib), log=lambda m: None)
    assert not [p for p in lib.iterdir() if p.name.startswith(libdir.STAGING)]   # no half copy left behind

    # uninstall: the script and its own copies go, the rest stays
    stamped.joinpath("x").unlink()
    stamped.rmdir()
    (second / "toon_ofx" / "extra.py").unlink()
    install(str(dest), python=PY, lib_dir=str(lib), log=lambda m: None)
    uninstall(str(dest), lib_dir=str(lib), log=lambda m: None)
    assert not (dest / SCRIPT_NAME).exists()
    assert sorted(p.name for p in lib.iterdir()) == ["notes.txt", "toon_ofx-mine"]


def test_engine_python_discovery(monkeypatch, tmp_path):
    monkeypatch.setenv("TOON_OFX_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv(ENV_PYTHON, sys.executable)
    assert find_engine_python() == sys.executable
    monkeypatch.setenv(ENV_PYTHON, str(tmp_path / "nope" / "python"))
    with pytest.raises(BridgeError, match=r"\(from \$TOON_OFX_PYTHON\) does not exist"):
        find_engine_python()
    with pytest.raises(BridgeError, match=r"\(from --python\)"):
        find_engine_python(str(tmp_path / "nope" / "python"))
    with pytest.raises(BridgeError, match=r"\(from the installed script\)"):
        find_engine_python(str(tmp_path / "nope" / "python"), "the installed script")
    monkeypatch.delenv(ENV_PYTHON)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"python": sys.executable}))
    assert find_engine_python() == sys.executable
    env = child_env()
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env


# ------------------------------------------------- real engine processes
PY = sys.executable


def _engine_env(tmp_path, monkeypatch):
    """Per-test config/data folders (server.json, token, queue), seen by the test, the engine and the panel."""
    env = {"TOON_OFX_CONFIG_DIR": str(tmp_path / "config"), "TOON_OFX_DATA_DIR": str(tmp_path / "data"),
           "TOON_OFX_PYTHON": PY, "QT_QPA_PLATFORM": "offscreen",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def start_engine(tmp_path, *extra):
    """`python -m toon_ofx serve --port 0` as a real process; returns it once server.json names it."""
    import subprocess
    import time

    info = tmp_path / "config" / "server.json"
    log = open(tmp_path / "engine.log", "wb")
    proc = subprocess.Popen([PY, "-m", "toon_ofx", "serve", "--port", "0", *extra], env=dict(os.environ),
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    log.close()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"engine exited {proc.returncode}: {(tmp_path / 'engine.log').read_text()}")
        if info.exists():
            try:
                if json.loads(info.read_text())["pid"] == proc.pid:
                    return proc
            except ValueError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("engine did not start: " + (tmp_path / "engine.log").read_text())


def stop_engine(proc):
    proc.terminate()
    try:
        proc.wait(30)
    except Exception:  # pragma: no cover
        proc.kill()


def face_edit(tmp_path, first=10, end=20, record=48):
    """single_face.mp4 (30 fps) cut into a 24 fps timeline: 10 source frames = 8 timeline frames."""
    clip = FIXTURES / "single_face.mp4"
    if not clip.exists():
        pytest.skip("shared fixture single_face.mp4 missing")
    return fr.make_edit([{"path": clip, "start": first, "end": end, "record": record}]) + (clip,)


def _check_placed(timeline, project, first, last, record_start, duration):
    (item,) = timeline.GetItemListInTrack("video", 2)
    assert (item.GetStart(), item.GetDuration()) == (record_start, duration)
    mpi = item.GetMediaPoolItem()
    bins = {f.GetName(): f for f in project.GetMediaPool().GetRootFolder().GetSubFolderList()}
    assert mpi in bins["Toon"].GetClipList()
    assert mpi.GetClipProperty("Frames") == str(last - first + 1) and mpi.GetClipProperty("FPS") == "30"
    return mpi


def test_installed_script_against_an_engine_process(tmp_path, monkeypatch):
    """The installed script, run as Resolve runs it, against `toon-ofx serve` (stand-in renderer)."""
    _engine_env(tmp_path, monkeypatch)
    proc = start_engine(tmp_path, "--render-fn", "test_jobs:fake_render")
    try:
        dest = tmp_path / "Utility"
        install(str(dest), python=PY, lib_dir=str(tmp_path / "lib"), log=lambda m: None)
        resolve, project, timeline, clip = face_edit(tmp_path)
        out = tmp_path / "out"
        monkeypatch.setenv(ENV_ARGS, f"--direct --track 1 --set device=cpu --output-dir {out} --no-report")
        lines = []
        monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
        runpy.run_path(str(dest / SCRIPT_NAME), init_globals={"resolve": resolve}, run_name="__main__")
        assert any("Placed 1 toon clip(s) on V2" in line for line in lines), lines
        _check_placed(timeline, project, 10, 19, 86400 + 48, 8)
        frames = sorted(p.name for p in out.rglob("*.png"))
        assert len(frames) == 10 and frames[0].endswith("000010.png")   # named by SOURCE frame numbers
    finally:
        stop_engine(proc)


def test_direct_mode_lets_an_idle_engine_stop(tmp_path, monkeypatch):
    """The script holds an engine session while it renders and says goodbye when done: an engine with an idle
    timeout then stops (the test's own session kept it up until the script ran; had the script kept its
    session, the engine would stay up for the session's lease)."""
    import time

    from toon_ofx.client import EngineClient

    _engine_env(tmp_path, monkeypatch)
    proc = start_engine(tmp_path, "--render-fn", "test_jobs:fake_render", "--idle-timeout", "1")
    try:
        holder = EngineClient()
        holder.hello(lease=120, name="test")
        resolve, project, timeline, clip = face_edit(tmp_path, first=0, end=3, record=0)
        lines = []
        code = script_main({"resolve": resolve}, argv=["--direct", "--track", "1", "--set", "device=cpu",
                                                       "--output-dir", str(tmp_path / "out"), "--no-report"],
                           log=lines.append)
        assert code == 0, lines
        holder.goodbye()
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is not None, "the engine still runs: the script kept its session"
        log = (tmp_path / "engine.log").read_text()
        assert "opened by DaVinci Resolve" in log
    finally:
        stop_engine(proc)


def test_panel_mode_through_the_real_panel_and_engine(tmp_path, monkeypatch):
    """Script -> PySide6 panel subprocess (offscreen, Render pressed) -> engine process -> import and place."""
    pytest.importorskip("PySide6")
    _engine_env(tmp_path, monkeypatch)
    proc = start_engine(tmp_path, "--render-fn", "test_jobs:fake_render")
    try:
        resolve, project, timeline, clip = face_edit(tmp_path, first=0, end=5, record=0)
        monkeypatch.setenv(ENV_OUTPUT, str(tmp_path / "out"))
        options = Options(mode="panel", track=1, engine_python=PY, workdir=str(tmp_path), show_report=False,
                          params={"device": "cpu", "steps": 3}, panel_args=["--autorun"])
        report = run(resolve, options, log=lambda m: None)
        assert report.ok and len(report.placed) == 1, report.text()
        _check_placed(timeline, project, 0, 4, 86400, 4)
        result = json.loads((tmp_path / "result.json").read_text())
        assert result["status"] == "done" and result["params"]["steps"] == 3
    finally:
        stop_engine(proc)


@pytest.mark.slow
def test_real_engine_with_a_tiny_model(tmp_path, monkeypatch, tiny_params):
    """End to end through the real renderer: tiny generators, `toon-ofx serve`, the installed script."""
    _engine_env(tmp_path, monkeypatch)
    proc = start_engine(tmp_path)
    try:
        dest = tmp_path / "Utility"
        install(str(dest), python=PY, lib_dir=str(tmp_path / "lib"), log=lambda m: None)
        # a real face at 30 fps on a 24 fps timeline: 5 source frames = 4 timeline frames. The range starts
        # at 5 so the engine's keyframe/tracker warm-up stays short (frames before 5 only feed the tracker).
        resolve, project, timeline, clip = face_edit(tmp_path, first=5, end=10, record=100)
        out = tmp_path / "out"
        sets = " ".join(f"--set {k}={v}" for k, v in tiny_params.items())
        monkeypatch.setenv(ENV_ARGS, f"--direct --track 1 {sets} --output-dir {out} --no-report")
        lines = []
        monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
        runpy.run_path(str(dest / SCRIPT_NAME), init_globals={"resolve": resolve}, run_name="__main__")
        assert any("Placed 1 toon clip(s) on V2" in line for line in lines), "\n".join(
            lines[-6:] + [(tmp_path / "engine.log").read_text()[-3000:]])
        _check_placed(timeline, project, 5, 9, 86400 + 100, 4)
        frames = sorted(out.rglob("*.png"))
        assert [f.name[-10:] for f in frames] == [f"{i:06d}.png" for i in range(5, 10)]
        assert cv2.imread(str(frames[0])).shape[:2] == (360, 640)
    finally:
        stop_engine(proc)


def test_installed_script_runs_on_a_bare_python_with_the_vendored_client(tmp_path):
    """Resolve's Python has no torch, numpy or toon-ofx: the vendored stdlib client must be enough."""
    import subprocess

    dest, lib = tmp_path / "Utility", tmp_path / "lib"
    install(str(dest), python=PY, lib_dir=str(lib), log=lambda m: None)
    runner = tmp_path / "runner.py"
    runner.write_text(
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "import fake_resolve\n"
        f"runpy.run_path({str(dest / SCRIPT_NAME)!r}, init_globals={{'resolve': fake_resolve.Resolve()}},"
        " run_name='__main__')\n"
        "import toon_ofx.hosts.resolve as b, toon_ofx.client\n"
        "heavy = sorted(m for m in ('numpy', 'torch', 'cv2', 'PySide6') if m in sys.modules)\n"
        "print('LIB', b.__file__, 'HEAVY', heavy)\n")
    out = subprocess.run([PY, "-I", "-S", str(runner)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Toon Faces: no project is open in Resolve." in out.stdout
    (copy,) = lib.iterdir()
    assert f"LIB {copy / 'toon_ofx' / 'hosts' / 'resolve' / '__init__.py'} HEAVY []" in out.stdout
