"""The Sequencer sidebar panel (category "Toon") and the add-on preferences."""

import bpy

from . import compat, models, operators, props


class TOONOFX_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_python: bpy.props.StringProperty(
        name="Engine Python", subtype="FILE_PATH",
        description="Python interpreter that has toon-ofx installed (e.g. <toon-ofx>/.venv/bin/python); "
                    "used to start the engine when it is not running. Empty: only use a running engine")
    output_folder: bpy.props.StringProperty(
        name="Output Folder", subtype="DIR_PATH",
        description="Where rendered frames go (one new folder per job). Empty: a 'toon_ofx' folder next to "
                    "the .blend file, or Blender's temporary folder for an unsaved file")
    start_timeout: bpy.props.IntProperty(
        name="Start Timeout", default=60, min=5, max=600, subtype="TIME",
        description="Seconds to wait for the engine to start")
    idle_stop: bpy.props.IntProperty(
        name="Stop Engine When Idle (min)", default=10, min=0, max=1440,
        description="An engine the add-on started stops after this many minutes with no work once Blender "
                    "no longer holds it (closing Blender or disabling the add-on lets go at once). 0: never")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "engine_python")
        layout.prop(self, "output_folder")
        layout.prop(self, "start_timeout")
        layout.prop(self, "idle_stop")
        layout.operator(operators.TOONOFX_OT_check_engine.bl_idname, icon="PLUGIN")


def _models_menu(target: str, label: str):
    """A menu class listing the engine's models for one field (each entry runs toon_ofx.pick_model)."""
    def draw(self, context):
        layout = self.layout
        listed = models.for_field(target)
        if not listed:
            layout.label(text="No models listed yet", icon="INFO")
        for model in listed:
            text = model["name"] + ("" if model.get("installed", True) else "  (not installed)")
            op = layout.operator(operators.TOONOFX_OT_pick_model.bl_idname, text=text,
                                 icon="CHECKMARK" if model.get("installed", True) else "IMPORT")
            op.target, op.name = target, model["name"]
        layout.separator()
        layout.operator(operators.TOONOFX_OT_refresh_models.bl_idname, text="Refresh (starts the engine)",
                        icon="FILE_REFRESH")

    return type(f"TOONOFX_MT_{target}", (bpy.types.Menu,), {"bl_idname": f"TOONOFX_MT_{target}", "bl_label": label,
                                                          "draw": draw})


MODEL_MENUS = {name: _models_menu(name, label) for name, label in (("model", "Installed Styles"),
                                                                   ("base_model", "Installed Base Models"))}


def draw_model_field(layout, settings, name: str) -> None:
    """A model field: its file browser, and the menu of the models the engine knows."""
    row = layout.row(align=True)
    row.prop(settings, name)
    row.menu(MODEL_MENUS[name].bl_idname, text="", icon="DOWNARROW_HLT")


class _SequencerPanel:
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Toon"

    @classmethod
    def poll(cls, context):
        return compat.sequencer_scene(context) is not None


class TOONOFX_PT_toonify(_SequencerPanel, bpy.types.Panel):
    bl_idname = "TOONOFX_PT_toonify"
    bl_label = "Toonify"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = compat.sequencer_scene(context).toon_ofx
        for name in props.MAIN:
            if name == "output_kind":
                layout.row().prop(settings, name, expand=True)
            elif name in props.MODEL_FIELDS:
                draw_model_field(layout, settings, name)
            else:
                layout.prop(settings, name, slider=name in props.SLIDERS)
        run = operators.active_run()
        if run is None:
            row = layout.row()
            row.scale_y = 1.5
            row.operator(operators.TOONOFX_OT_toonify.bl_idname, icon="OUTLINER_OB_ARMATURE")
            waiting = operators.retryable()
            if waiting:
                layout.operator(operators.TOONOFX_OT_retry.bl_idname, icon="FILE_REFRESH",
                                text=f"Retry {len(waiting)} failed or cancelled")
            return
        box = layout.box()
        if hasattr(box, "progress"):  # Blender 4.0+
            box.progress(factor=run.progress, type="BAR", text=run.status.split(" - ")[0])
        else:
            box.label(text=run.status)
        box.operator(operators.TOONOFX_OT_cancel.bl_idname, icon="CANCEL")


class TOONOFX_PT_advanced(_SequencerPanel, bpy.types.Panel):
    bl_idname = "TOONOFX_PT_advanced"
    bl_label = "Advanced"
    bl_parent_id = "TOONOFX_PT_toonify"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = compat.sequencer_scene(context).toon_ofx
        for name in props.advanced_names():
            if name in props.MODEL_FIELDS:
                draw_model_field(layout, settings, name)
            else:
                layout.prop(settings, name)


CLASSES = (TOONOFX_AddonPreferences, *MODEL_MENUS.values(), TOONOFX_PT_toonify, TOONOFX_PT_advanced)
