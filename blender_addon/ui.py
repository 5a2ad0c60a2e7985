"""The Sequencer sidebar panel (category "Toon") and the add-on preferences."""

import bpy

from . import compat, operators, props


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

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "engine_python")
        layout.prop(self, "output_folder")
        layout.prop(self, "start_timeout")
        layout.operator(operators.TOONOFX_OT_check_engine.bl_idname, icon="PLUGIN")


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
            else:
                layout.prop(settings, name, slider=name in props.SLIDERS)
        run = operators.active_run()
        if run is None:
            row = layout.row()
            row.scale_y = 1.5
            row.operator(operators.TOONOFX_OT_toonify.bl_idname, icon="OUTLINER_OB_ARMATURE")
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
            layout.prop(settings, name)


CLASSES = (TOONOFX_AddonPreferences, TOONOFX_PT_toonify, TOONOFX_PT_advanced)
