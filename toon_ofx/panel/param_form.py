"""The effect's parameters as widgets, generated from the schema (`toon_ofx.core.params`) and validated by it.

The paper's controls get their own widgets (the model, a combo box for the swap resolution, a slider for the
projection iterations, the output kind), next to how faces are inverted (projection, encoder, or both);
every other schema parameter gets one from its type, range and choices, under "More settings". Models come
from the manifest (`model_choices`): toon styles (a one-pass toon such as pSp's Toonify among them), base
models and face encoders.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from PySide6 import QtWidgets
from PySide6.QtCore import Qt

from ..core import params as schema
from ..core.errors import UserError
from ..core.vtoonify import D_PARAMS, STYLEGAN_PARAMS

DEFAULT_MODEL_SIZE = 1024


ONE_PASS = "one-pass toon"  # the kind the panel gives an encoder checkpoint that is a style of its own
ONE_PASS_TIP = ("This style is a one-pass toon (an encoder with its own toon generator): faces go straight to "
                "toon faces, so the swap resolution and the inversion settings do not apply.")
VTOONIFY = "vtoonify"       # a VToonify model: one feed-forward pass per frame (core.vtoonify)
VTOONIFY_TIP = ("This style is a VToonify model: one feed-forward pass per frame renders the whole head, so the "
                "base model, swap resolution, inversion, projection and keyframe settings do not apply.")
VTOONIFY_D_TIP = "Only VToonify-D styles (a DualStyleGAN backbone) take a style image, degree and colours."


def model_choices() -> List[Dict[str, Any]]:
    """[{"name", "label", "tooltip", "size", "kind", "installed", "swap_res"}] from the model manifest
    (toon_ofx.core.model_store).

    Base models (kind "base") and face encoders (kind "encoder") are returned too: the panel offers them for
    `base_model` and `encoder`; an encoder that is a style of its own (pSp Toonify) has kind "one-pass toon"
    and is offered as a model. Perceptual and landmark weights are left out.
    """
    try:
        from ..core import model_store
        rows = model_store.list_models()
        manifest = model_store.load_manifest()["models"]
    except Exception:  # noqa: BLE001 - no store, or a broken manifest: the panel still opens
        return []
    out = []
    for row in rows or []:
        kind = str(row.get("kind") or "")
        if kind == "encoder" and manifest.get(row["name"], {}).get("one_pass_toon"):
            kind = ONE_PASS
        if kind not in ("toon", "blended", "base", "encoder", ONE_PASS, VTOONIFY):
            continue
        installed = bool(row.get("installed", True))
        label = row["name"] if installed else f"{row['name']} (not downloaded)"
        tip = str(row.get("title") or row["name"])
        if not installed:
            tip += f"\nGet it with: toon-ofx models pull {row['name']}"
        if row.get("licence"):
            tip += f"\nLicence: {row['licence']}"
        out.append({"name": row["name"], "label": label, "tooltip": tip, "size": row.get("resolution"),
                    "kind": kind, "installed": installed, "swap_res": row.get("swap_res"),
                    "backbone": manifest.get(row["name"], {}).get("backbone")})
    return out


def checkpoint_facts(path: str) -> Dict[str, Any]:
    """{"size", "kind", "backbone"} of a style file (read without running its code): a generator's output
    resolution, or a VToonify model's kind and backbone."""
    from engine.generator.checkpoints import CheckpointError, inspect_checkpoint
    from engine.vtoonify import inspect_vtoonify

    try:
        return {"size": int(inspect_checkpoint(path).size), "kind": "toon", "backbone": None}
    except CheckpointError:
        info = inspect_vtoonify(path)
        return {"size": info.out_size, "kind": VTOONIFY, "backbone": info.backbone}


class ParamForm(QtWidgets.QWidget):
    """The "Toonify" box and "More settings": `params()` reads every parameter, `set_params()` shows them.

    The swap resolutions offered stop at the model's resolution: from the manifest for a named model,
    read from the file (on `tasks`, the worker pool) for a checkpoint file; until that read ends the list
    holds only the user's pick, greyed, and says why. A pick above the model's resolution shows the
    largest that fits and says so (the pick is kept for a model it fits). A published pre-blended
    model shows its baked-in swap resolution, greyed, and says so under the box.
    """

    def __init__(self, models: List[Dict[str, Any]], tasks=None, parent=None):
        super().__init__(parent)
        self.models = models
        self.tasks = tasks
        self._file_facts: Dict[str, Optional[dict]] = {}   # checkpoint file -> checkpoint_facts (None: being read)
        self._swap_choice = schema.BY_NAME["swap_res"].default   # the user's choice, kept across blended models
        self.param_widgets: Dict[str, Dict[str, Any]] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._build_params_box())
        layout.addWidget(self._build_advanced_box())
        self._update_swap_choices()   # now that every widget exists: grey what the style does not take

    def _build_params_box(self) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox("Toonify")
        form = QtWidgets.QFormLayout(box)
        # model: the manifest's toon models, plus Browse…
        p = schema.BY_NAME["model"]
        self.model_combo = QtWidgets.QComboBox()
        self.model_combo.setObjectName("model_combo")
        self.model_combo.setToolTip(p.help)
        toons = [m for m in self.models if m.get("kind", "toon") not in ("base", "encoder")]
        if p.default not in [m["name"] for m in toons]:
            self.model_combo.addItem(p.default, p.default)
        for m in toons:
            self.model_combo.addItem(str(m.get("label") or m["name"]), m["name"])
            if m.get("tooltip"):
                self.model_combo.setItemData(self.model_combo.count() - 1, m["tooltip"], Qt.ToolTipRole)
        self.model_combo.addItem("Browse…", None)
        self._model_index = 0
        self.model_combo.activated.connect(self._model_activated)
        self.model_combo.currentIndexChanged.connect(lambda _: self._update_swap_choices())
        form.addRow(p.label, self.model_combo)
        self._register("model", self.model_combo, self._combo_value(self.model_combo), self._set_model)
        self._add_generic(form, schema.BY_NAME["inversion"])
        self.inversion_combo = self.param_widgets["inversion"]["widget"]

        p = schema.BY_NAME["swap_res"]
        self.swap_combo = QtWidgets.QComboBox()
        self.swap_combo.setObjectName("swap_combo")
        self.swap_combo.setToolTip(p.help)
        form.addRow(p.label, self.swap_combo)
        self.swap_note = QtWidgets.QLabel("")
        self.swap_note.setObjectName("swap_note")
        self.swap_note.setWordWrap(True)
        self.swap_note.setStyleSheet("color: #8a8a8a;")
        self.swap_note.setVisible(False)
        form.addRow("", self.swap_note)
        self.swap_combo.currentIndexChanged.connect(lambda _: self._remember_swap())
        self._register("swap_res", self.swap_combo, self._combo_value(self.swap_combo), self._set_swap)
        self._update_swap_choices()

        p = schema.BY_NAME["steps"]
        row = QtWidgets.QHBoxLayout()
        self.steps_slider = QtWidgets.QSlider(Qt.Horizontal)
        self.steps_slider.setObjectName("steps_slider")
        self.steps_slider.setRange(int(p.minimum), int(p.maximum))
        self.steps_slider.setSingleStep(10)
        self.steps_slider.setPageStep(100)
        self.steps_slider.setToolTip(p.help)
        self.steps_spin = QtWidgets.QSpinBox()
        self.steps_spin.setObjectName("steps_spin")
        self.steps_spin.setRange(int(p.minimum), int(p.maximum))
        self.steps_slider.valueChanged.connect(self.steps_spin.setValue)
        self.steps_spin.valueChanged.connect(self.steps_slider.setValue)
        self.steps_slider.setValue(int(p.default))
        row.addWidget(self.steps_slider, 1)
        row.addWidget(self.steps_spin)
        form.addRow("Projection iterations", row)
        self._register("steps", self.steps_slider, self.steps_slider.value, lambda v: self.steps_slider.setValue(int(v)))

        self._add_generic(form, schema.BY_NAME["refine_steps"])
        self._add_generic(form, schema.BY_NAME["warm_steps"])
        p = schema.BY_NAME["output_kind"]
        self.output_kind_combo = QtWidgets.QComboBox()
        self.output_kind_combo.setObjectName("output_kind_combo")
        self.output_kind_combo.setToolTip(p.help)
        self.output_kind_combo.addItem("Full frame", "frame")
        self.output_kind_combo.addItem("Face overlay (RGBA)", "overlay")
        form.addRow(p.label, self.output_kind_combo)
        self._register("output_kind", self.output_kind_combo, self._combo_value(self.output_kind_combo),
                       lambda v: self._set_combo(self.output_kind_combo, v))
        return box

    def _build_advanced_box(self) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox("More settings")
        box.setCheckable(True)
        box.setChecked(False)
        inner = QtWidgets.QWidget()
        form = QtWidgets.QFormLayout(inner)
        for p in schema.PARAMS:
            if p.name not in self.param_widgets:
                self._add_generic(form, p)
        layout = QtWidgets.QVBoxLayout(box)
        layout.addWidget(inner)
        inner.setVisible(False)
        box.toggled.connect(inner.setVisible)
        self.advanced_box = box
        return box

    def _add_generic(self, form: QtWidgets.QFormLayout, p) -> None:
        """A widget for any schema parameter, from its type, range and choices."""
        offered = {"base_model": "base", "encoder": "encoder"}
        listed = [m for m in self.models if p.name in offered and m.get("kind") == offered[p.name]]
        if listed:  # models from the manifest, or any path typed in
            w = QtWidgets.QComboBox()
            w.setEditable(True)
            for m in listed:
                w.addItem(m["name"])
                w.setItemData(w.count() - 1, m.get("tooltip") or m["name"], Qt.ToolTipRole)
            getter, setter = w.currentText, (lambda v, w=w: w.setCurrentText(str(v)))
        elif p.choices is not None:
            w = QtWidgets.QComboBox()
            for choice in p.choices:
                w.addItem(str(choice), choice)
            getter, setter = self._combo_value(w), (lambda v, w=w: self._set_combo(w, v))
        elif p.type is bool:
            w = QtWidgets.QCheckBox()
            getter, setter = w.isChecked, (lambda v, w=w: w.setChecked(bool(v)))
        elif p.type is int:
            w = QtWidgets.QSpinBox()
            w.setRange(int(p.minimum if p.minimum is not None else -2**31),
                       int(min(p.maximum, 2**31 - 1) if p.maximum is not None else 2**31 - 1))
            getter, setter = w.value, (lambda v, w=w: w.setValue(int(v)))
        elif p.type is float:
            w = QtWidgets.QDoubleSpinBox()
            w.setDecimals(3)
            w.setSingleStep(0.01)
            w.setRange(p.minimum if p.minimum is not None else -1e9, p.maximum if p.maximum is not None else 1e9)
            getter, setter = w.value, (lambda v, w=w: w.setValue(float(v)))
        else:
            w = QtWidgets.QLineEdit()
            getter, setter = w.text, (lambda v, w=w: w.setText(str(v)))
        w.setObjectName(f"param_{p.name}")
        w.setToolTip(p.help)
        setter(p.default)
        form.addRow(p.label, w)
        self._register(p.name, w, getter, setter)

    def _register(self, name: str, widget, getter: Callable[[], Any], setter: Callable[[Any], None]) -> None:
        self.param_widgets[name] = {"widget": widget, "get": getter, "set": setter}

    @staticmethod
    def _combo_value(combo: QtWidgets.QComboBox) -> Callable[[], Any]:
        return lambda: combo.currentData()

    @staticmethod
    def _set_combo(combo: QtWidgets.QComboBox, value: Any) -> None:
        index = combo.findData(value)
        if index < 0:
            raise UserError(f"{value!r} is not offered here", field=combo.objectName())
        combo.setCurrentIndex(index)

    # ------------------------------------------------------------- models
    def _set_model(self, value: str) -> None:
        index = self.model_combo.findData(value)
        if index < 0:
            index = self.model_combo.count() - 1
            self.model_combo.insertItem(index, os.path.basename(str(value)), value)
        self.model_combo.setCurrentIndex(index)
        self._model_index = index

    def _model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) is not None:
            self._model_index = index
            return
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Toon model", "",
                                                        "Generators (*.pt *.pkl *.pth);;All files (*)")
        if path:
            self._set_model(path)
        else:
            self.model_combo.setCurrentIndex(self._model_index)

    def model_entry(self) -> Dict[str, Any]:
        """The manifest row of the chosen model ({} for a checkpoint file)."""
        name = self.model_combo.currentData()
        return next((m for m in self.models if m["name"] == name), {})

    def style_facts(self) -> Optional[Dict[str, Any]]:
        """What the chosen style is, {"size", "kind", "backbone"}: from the manifest, or read from its file on the
        worker pool ({"problem": why} when unreadable, {} when unknown); None while the file is being read."""
        entry = self.model_entry()
        if entry:
            return {"size": int(entry["size"]) if entry.get("size") else DEFAULT_MODEL_SIZE,
                    "kind": str(entry.get("kind") or ""), "backbone": entry.get("backbone")}
        path = self.model_combo.currentData()
        if path and path not in self._file_facts and self.tasks is not None and os.path.isfile(path):
            self._file_facts[path] = None
            self.tasks.run(checkpoint_facts, path, done=lambda facts, p=path: self._file_facts_read(p, facts),
                           failed=lambda message, p=path: self._file_facts_read(p, {"problem": message}))
        return self._file_facts.get(path, {}) if path else {}

    def _file_facts_read(self, path: str, facts: dict) -> None:
        self._file_facts[path] = facts
        if self.model_combo.currentData() == path:
            self._update_swap_choices()

    def _remember_swap(self) -> None:
        if self.swap_combo.isEnabled():
            self._swap_choice = self.swap_combo.currentData()

    def _set_swap(self, value: Any) -> None:
        self._swap_choice = int(value)
        self._update_swap_choices()

    def _update_swap_choices(self) -> None:
        """Offer the swap resolutions up to the model's size; a pre-blended model shows its own, greyed;
        a one-pass toon style (pSp Toonify) has neither a swap resolution nor an inversion choice."""
        facts = self.style_facts()
        reading = facts is None
        facts = facts or {}
        size, kind, entry = facts.get("size") or DEFAULT_MODEL_SIZE, facts.get("kind", ""), self.model_entry()
        baked = entry.get("swap_res") if kind == "blended" else None
        self.swap_combo.blockSignals(True)   # the user's choice stays what it was
        self.swap_combo.clear()
        for r in [self._swap_choice] if reading else [r for r in schema.SWAP_RESOLUTIONS if r <= size]:
            self.swap_combo.addItem(f"{r} × {r}", r)
        want = int(baked) if baked else self._swap_choice
        index = self.swap_combo.findData(want)
        self.swap_combo.setCurrentIndex(index if index >= 0 else self.swap_combo.count() - 1)
        self.swap_combo.blockSignals(False)
        blended, one_pass = kind == "blended", kind == ONE_PASS
        self.swap_combo.setEnabled(not (blended or one_pass or reading))
        self.swap_combo.setToolTip(ONE_PASS_TIP if one_pass else
                                   "This published model is already blended: its swap resolution is baked in."
                                   if blended else schema.BY_NAME["swap_res"].help)
        inversion = self.param_widgets.get("inversion")
        if inversion is not None:
            inversion["widget"].setEnabled(not one_pass)
            inversion["widget"].setToolTip(ONE_PASS_TIP if one_pass else schema.BY_NAME["inversion"].help)
        vtoonify = kind == VTOONIFY
        self._grey(STYLEGAN_PARAMS, vtoonify, VTOONIFY_TIP)
        self._grey(D_PARAMS, not (vtoonify and facts.get("backbone") == "dualstylegan"), VTOONIFY_D_TIP)
        name = entry.get("name", "")
        if vtoonify:
            note = VTOONIFY_TIP
        elif one_pass:
            note = ONE_PASS_TIP
        elif blended:
            note = (f"{name} is published already blended: its swap resolution"
                    + (f" ({int(baked)} × {int(baked)})" if baked else "")
                    + " is baked in. Pick an unblended toon model to choose your own.")
        elif reading:
            note = "Reading the model's resolution… the swap resolutions it allows are offered once it is known."
        elif index < 0:
            shown = self.swap_combo.currentData()
            note = (f"Swap resolution {want} × {want} is above this model's {size} px: using {shown} × {shown}. "
                    "Your choice comes back with a model it fits.")
        elif facts.get("problem"):
            note = f"Could not read the model's resolution ({facts['problem']}); every swap resolution is offered."
        else:
            note = ""
        self.swap_note.setText(note)
        self.swap_note.setVisible(bool(note))

    def _grey(self, names, off: bool, reason: str) -> None:
        """Disable the widgets of parameters that do not apply to the chosen style, saying why in their tooltip
        (only those the one-pass rules above leave enabled are turned back on)."""
        for name in names:
            entry = self.param_widgets.get(name)
            if entry is None or (name in ("swap_res", "inversion") and not off):
                continue
            widget = self.steps_slider if name == "steps" else entry["widget"]
            widget.setEnabled(not off)
            widget.setToolTip(reason if off else schema.BY_NAME[name].help)
            if name == "steps":
                self.steps_spin.setEnabled(not off)

    # ------------------------------------------------------------- params
    def params(self) -> Dict[str, Any]:
        """The widgets' values, validated by the schema (a complete parameter dict)."""
        values = {name: entry["get"]() for name, entry in self.param_widgets.items()}
        return schema.validate(values)

    def set_params(self, values: Dict[str, Any]) -> None:
        """Show `values` (validated by the schema first) in their widgets."""
        for name, value in schema.validate(values).items():
            if name in self.param_widgets:
                self.param_widgets[name]["set"](value)
