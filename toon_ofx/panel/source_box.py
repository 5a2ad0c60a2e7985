"""What to render and where it goes: a video file (standalone) or the clips the Resolve script handed over.

Both boxes answer the same questions for the window: the source under the scrubber (`source()`), the work
to submit (`work_items()`), each item's output folder (the Resolve bridge's `output_folder_for`), how to
write it (`write_kind()`) and which track the result goes to (`target_track()`).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Qt


def _folder_for(clip: Dict[str, Any], params: Dict[str, Any], root: Optional[str]) -> str:
    from ..hosts.resolve import Clip, output_folder_for

    return output_folder_for(Clip.from_json(clip), params, root)


def _clip_label(clip: Dict[str, Any]) -> str:
    return f"{clip['name']}  [{clip['first']}-{clip['last']}]"


class SourceBox(QtWidgets.QGroupBox):
    """The common part: the "Write as" choice, and the answers a box without clips gives."""

    def __init__(self, title: str, output_dir: Optional[str], parent=None):
        super().__init__(title, parent)
        self.output_dir = output_dir

    def _add_write_combo(self, layout: QtWidgets.QBoxLayout) -> None:
        form = QtWidgets.QFormLayout()
        self.write_combo = QtWidgets.QComboBox()
        self.write_combo.setObjectName("write_combo")
        self.write_combo.addItem("Image sequence (PNG)", "sequence")
        self.write_combo.addItem("Movie", "movie")
        form.addRow("Write as", self.write_combo)
        layout.addLayout(form)

    def write_kind(self, params: Dict[str, Any]) -> str:
        """"sequence" or "movie", as chosen."""
        return self.write_combo.currentData()

    def show_source(self, path: str, frame_count: Optional[int] = None) -> None:
        """Show the path the window opened; a box of clips has no path to show."""

    def current_clip(self) -> Optional[Dict[str, Any]]:
        return None

    def target_track(self) -> Any:
        return "new"

    def show_states(self, states: Dict[str, Optional[str]]) -> None:
        """Show each clip's job state (clip id -> state); nothing to show without clips."""


class FileBox(SourceBox):
    """Standalone: a video file or image sequence, and an output folder."""

    source_chosen = QtCore.Signal(str)   # typed in or browsed; the window opens it

    def __init__(self, output_dir: Optional[str] = None, parent=None):
        super().__init__("Source", output_dir, parent)
        self.frame_count: Optional[int] = None   # of the opened source (the window counts them)
        layout = QtWidgets.QVBoxLayout(self)
        row = QtWidgets.QHBoxLayout()
        self.source_edit = QtWidgets.QLineEdit()
        self.source_edit.setObjectName("source_edit")
        self.source_edit.setPlaceholderText("a video file or image sequence")
        self.source_edit.editingFinished.connect(lambda: self.source_chosen.emit(self.source_edit.text()))
        browse = QtWidgets.QPushButton("Browse…")
        browse.clicked.connect(self._browse_source)
        row.addWidget(self.source_edit, 1)
        row.addWidget(browse)
        layout.addLayout(row)
        out = QtWidgets.QHBoxLayout()
        self.output_edit = QtWidgets.QLineEdit(output_dir or "")
        self.output_edit.setObjectName("output_edit")
        self.output_edit.setPlaceholderText("output folder (default: toon_ofx/ beside the source)")
        browse_out = QtWidgets.QPushButton("…")
        browse_out.clicked.connect(self._browse_output)
        out.addWidget(self.output_edit, 1)
        out.addWidget(browse_out)
        layout.addLayout(out)
        self._add_write_combo(layout)

    def show_source(self, path: str, frame_count: Optional[int] = None) -> None:
        """Show the path the window opened (and remember its frame count)."""
        if self.source_edit.text() != path:
            self.source_edit.setText(path)
        self.frame_count = frame_count

    def source(self) -> Optional[str]:
        return self.source_edit.text().strip() or None

    def work_items(self) -> List[Dict[str, Any]]:
        source = self.source()
        if not source:
            return []
        frames = [0, self.frame_count - 1] if self.frame_count else None   # explicit: a resumed job matches
        return [{"clip": source, "name": os.path.basename(source), "source": source, "frames": frames,
                 "clip_data": None}]

    def output_folder(self, item: Dict[str, Any], params: Dict[str, Any]) -> str:
        root = self.output_edit.text().strip() or self.output_dir
        clip = {"id": item["clip"], "name": item["name"], "source": item["source"], "kind": "movie", "first": 0,
                "last": 0, "clip_fps": 0, "timeline_fps": 0, "record_start": 0, "record_end": 0, "track": 0}
        return _folder_for(clip, params, root)

    def _browse_source(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Video", "", "Video (*.mp4 *.mov *.mkv *.m4v *.avi);;"
                                                        "All files (*)")
        if path:
            self.source_chosen.emit(path)

    def _browse_output(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.output_edit.setText(path)


class ClipsBox(SourceBox):
    """From the Resolve script (`clips.json`): the track's clips to tick, and the track to place results on."""

    clip_selected = QtCore.Signal(object)   # the clip dict now under the cursor

    def __init__(self, doc: Dict[str, Any], output_dir: Optional[str] = None, parent=None):
        super().__init__("Clips", output_dir, parent)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(QtWidgets.QLabel(f"{doc.get('timeline', '')}, V{doc.get('source_track', 1)}"))
        self.clip_list = QtWidgets.QListWidget()
        self.clip_list.setObjectName("clip_list")
        for clip in doc.get("clips", []):
            item = QtWidgets.QListWidgetItem(_clip_label(clip))
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked)
            item.setData(Qt.UserRole, clip)
            self.clip_list.addItem(item)
        current = next((i for i, c in enumerate(doc.get("clips", [])) if c.get("current")), 0)
        self.clip_list.setCurrentRow(current)
        self.clip_list.currentRowChanged.connect(lambda _: self._emit_selected())
        self.clip_list.setMaximumHeight(140)
        layout.addWidget(self.clip_list)
        form = QtWidgets.QFormLayout()
        self.target_combo = QtWidgets.QComboBox()
        self.target_combo.setObjectName("target_combo")
        self.target_combo.addItem("New track above", "new")
        src = int(doc.get("source_track", 1))
        for index in range(src + 1, int(doc.get("video_tracks", src)) + 1):
            self.target_combo.addItem(f"V{index}", index)
        form.addRow("Place on", self.target_combo)
        layout.addLayout(form)
        self._add_write_combo(layout)

    def _emit_selected(self) -> None:
        clip = self.current_clip()
        if clip is not None:
            self.clip_selected.emit(clip)

    def current_clip(self) -> Optional[Dict[str, Any]]:
        if self.clip_list.currentItem() is None:
            return None
        return self.clip_list.currentItem().data(Qt.UserRole)

    def checked_clips(self) -> List[Dict[str, Any]]:
        out = []
        for i in range(self.clip_list.count()):
            item = self.clip_list.item(i)
            if item.checkState() == Qt.Checked:
                out.append(item.data(Qt.UserRole))
        return out

    def source(self) -> Optional[str]:
        clip = self.current_clip()
        return clip["source"] if clip is not None else None

    def work_items(self) -> List[Dict[str, Any]]:
        return [{"clip": c["id"], "name": c["name"], "source": c["source"],
                 "frames": [int(c["first"]), int(c["last"])], "clip_data": c} for c in self.checked_clips()]

    def output_folder(self, item: Dict[str, Any], params: Dict[str, Any]) -> str:
        return _folder_for(item["clip_data"], params, self.output_dir)

    def write_kind(self, params: Dict[str, Any]) -> str:
        kind = super().write_kind(params)
        if params["output_kind"] == "overlay" and kind == "movie":
            kind = "sequence"  # RGBA for Resolve: PNG frames carry alpha everywhere
        return kind

    def target_track(self) -> Any:
        return self.target_combo.currentData()

    def show_states(self, states: Dict[str, Optional[str]]) -> None:
        for i in range(self.clip_list.count()):
            item = self.clip_list.item(i)
            clip = item.data(Qt.UserRole)
            state = states.get(clip["id"])
            item.setText(f"{_clip_label(clip)}  — {state}" if state else _clip_label(clip))
