"""Operators: Toonify and Retry (modal in the UI, blocking in scripts), Cancel, Check engine, the model pickers."""

import os
import time
import traceback

import bpy

from . import compat, connection, jobs, models, planning, props, toonify

#: The run in progress (one at a time); the panel reads it for its progress bar.
_ACTIVE = None
#: The failed or cancelled jobs of the last run: what Retry resumes.
_RETRYABLE = []


def active_run():
    return _ACTIVE


def retryable() -> list:
    return list(_RETRYABLE)


def _finished(run) -> None:
    """A run ended: its failed and cancelled jobs are what Retry offers next."""
    global _ACTIVE, _RETRYABLE
    _ACTIVE = None
    _RETRYABLE = [m.job for m in run.finals if isinstance(m, (jobs.Failed, jobs.Cancelled))]


def preferences(context):
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def output_root(context) -> str:
    prefs = preferences(context)
    folder = getattr(prefs, "output_folder", "") if prefs else ""
    if folder:
        return os.path.normpath(bpy.path.abspath(folder))
    return jobs.default_output_root()


def connector(context):
    """A no-argument function that returns a connected EngineClient (safe to call off the main thread)."""
    prefs = preferences(context)
    python = (getattr(prefs, "engine_python", "") or "").strip() if prefs else ""
    python = bpy.path.abspath(python) if python else None
    wait = float(getattr(prefs, "start_timeout", 60)) if prefs else 60.0
    idle_minutes = float(getattr(prefs, "idle_stop", 10)) if prefs else 10.0
    idle = idle_minutes * 60 if idle_minutes > 0 else None
    return lambda: connection.connect(python, wait, idle)


def _report_unexpected(operator, exc: BaseException) -> None:
    traceback.print_exc()  # for the system console; the user gets one line
    operator.report({"ERROR"}, f"Toonify failed unexpectedly: {type(exc).__name__}: {exc}")


def _prepare(operator, context):
    """Plans and params for the selected strips, or None after reporting why not."""
    scene = compat.sequencer_scene(context)
    if scene is None:
        operator.report({"ERROR"}, "no sequencer scene")
        return None
    try:
        plans = planning.plan_strips(scene, compat.selected_strips(context, scene))
        params = planning.engine_params(props.values(scene.toon_ofx))
    except planning.ToonifyError as exc:
        operator.report({"ERROR"}, str(exc))
        return None
    return plans, params


def _report_finals(operator, finals) -> int:
    """Place finished results and report every final message; returns how many strips were added."""
    placed = 0
    for message in finals:
        level, text = toonify.finish_message(message)
        if text:
            operator.report({level}, text)
        placed += isinstance(message, jobs.Finished) and level != "ERROR"
    return placed


class _RunOperator:
    """What Toonify and Retry share: a `toonify.Run` driven to the end (execute) or by a timer (invoke/modal).

    Subclasses say which run with `_make_run(context)` (None after reporting why not).
    """

    timeout: bpy.props.FloatProperty(
        name="Timeout", description="Blocking (script) runs only: give up after this many seconds (0 = never)",
        default=0.0, min=0.0, options={"SKIP_SAVE"})

    # --- blocking path: scripts, `blender -b`, the bpy module (invoke/modal never run there)
    def execute(self, context):
        global _ACTIVE
        run = self._make_run(context)
        if run is None:
            return {"CANCELLED"}
        _ACTIVE = run
        try:
            run.start(background=False)
            deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
            while not run.done:
                run.tick()
                if run.done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    run.cancel()
                    self.report({"ERROR"}, f"Toonify timed out after {self.timeout:g} s; cancelled")
                    break
                time.sleep(0.2)
            if run.error is not None:
                self.report({"ERROR"}, f"Toonify: {run.error}")
                return {"CANCELLED"}
            placed = _report_finals(self, run.finals)
        except Exception as exc:
            if run.client is not None:
                run.cancel()
            _report_unexpected(self, exc)
            return {"CANCELLED"}
        finally:
            _finished(run)
        return {"FINISHED"} if placed else {"CANCELLED"}

    # --- interactive path: a modal operator polled by a timer; the UI stays responsive
    def invoke(self, context, event):
        global _ACTIVE
        run = self._make_run(context)
        if run is None:
            return {"CANCELLED"}
        try:
            self._run = run.start(background=True)
        except Exception as exc:
            _report_unexpected(self, exc)
            return {"CANCELLED"}
        _ACTIVE = self._run
        self._reported = 0
        self._placed = 0
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.25, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        self._show(context)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        run = self._run
        if event.type == "ESC" and event.value == "PRESS":
            run.request_cancel()
        elif event.type != "TIMER" and not run.cancel_requested:
            return {"PASS_THROUGH"}  # keep the UI responsive: every other event goes on to Blender
        if run.cancel_requested and run.starting:
            # Still connecting: don't wait for the engine to come up. The worker thread sees the
            # request and cancels anything it submitted.
            self._stop(context)
            self.report({"WARNING"}, "Toonify cancelled")
            return {"CANCELLED"}
        try:
            run.tick()
        except Exception as exc:
            run.cancel()
            self._stop(context)
            _report_unexpected(self, exc)
            return {"CANCELLED"}
        # Place each result as soon as its job finishes, not only at the end.
        new = run.finals[self._reported:]
        self._reported = len(run.finals)
        self._placed += _report_finals(self, new)
        if not run.done:
            self._show(context)
            return {"RUNNING_MODAL"}
        self._stop(context)
        if run.error is not None:
            self.report({"ERROR"}, f"Toonify: {run.error}")
            return {"CANCELLED"}
        if run.cancel_requested and not any(isinstance(m, jobs.Cancelled) for m in run.finals):
            self.report({"WARNING"}, "Toonify cancelled")
        return {"FINISHED"} if self._placed else {"CANCELLED"}

    def cancel(self, context):  # Blender calls this when the operator is aborted (e.g. file closed)
        self._run.cancel()
        self._stop(context)

    def _show(self, context):
        wm = context.window_manager
        wm.progress_update(int(self._run.progress * 100))
        workspace = getattr(context, "workspace", None)
        if workspace is not None:
            workspace.status_text_set(self._run.status)
        compat.redraw_sequencer(context)

    def _stop(self, context):
        wm = context.window_manager
        if getattr(self, "_timer", None) is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        workspace = getattr(context, "workspace", None)
        if workspace is not None:
            workspace.status_text_set(None)
        _finished(self._run)
        compat.redraw_sequencer(context)


class TOONOFX_OT_toonify(_RunOperator, bpy.types.Operator):
    """Toonify the faces in the selected movie and image strips; the result is added as a new strip above"""
    bl_idname = "toon_ofx.toonify"
    bl_label = "Toonify"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        scene = compat.sequencer_scene(context)
        return scene is not None and scene.sequence_editor is not None and _ACTIVE is None

    def _make_run(self, context):
        prepared = _prepare(self, context)
        if prepared is None:
            return None
        plans, params = prepared
        return toonify.Run(plans, params, output_root(context), connector(context))


class TOONOFX_OT_retry(_RunOperator, bpy.types.Operator):
    """Resume the failed and cancelled renders of the last Toonify (the engine keeps their finished frames)"""
    bl_idname = "toon_ofx.retry"
    bl_label = "Retry"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return bool(_RETRYABLE) and _ACTIVE is None

    def _make_run(self, context):
        if not _RETRYABLE:
            self.report({"ERROR"}, "nothing to retry: the last Toonify had no failed or cancelled render")
            return None
        return toonify.Run.retrying(_RETRYABLE, connector(context))


class TOONOFX_OT_cancel(bpy.types.Operator):
    """Cancel the running Toonify (same as Esc)"""
    bl_idname = "toon_ofx.cancel"
    bl_label = "Cancel Toonify"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return _ACTIVE is not None

    def execute(self, context):
        if _ACTIVE is not None:
            _ACTIVE.request_cancel()
        return {"FINISHED"}


class TOONOFX_OT_check_engine(bpy.types.Operator):
    """Connect to the toon-ofx engine (starting it if needed) and report its version"""
    bl_idname = "toon_ofx.check_engine"
    bl_label = "Check Engine"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        try:
            client = connector(context)()
            health = client.health()
        except Exception as exc:
            self.report({"ERROR"}, f"toon-ofx engine: {jobs.error_text(exc)}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"toon-ofx engine {health.get('version', '?')} is running (pid {health.get('pid')})")
        try:
            models.refresh(client)
        except Exception as exc:  # an older engine without GET /v1/models: the pickers stay empty
            self.report({"WARNING"}, f"toon-ofx engine: no model list ({jobs.error_text(exc)})")
        return {"FINISHED"}


class TOONOFX_OT_refresh_models(bpy.types.Operator):
    """Ask the toon-ofx engine which models it knows (starting it if needed)"""
    bl_idname = "toon_ofx.refresh_models"
    bl_label = "Refresh Models"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        try:
            listed = models.refresh(connector(context)())
        except Exception as exc:
            self.report({"ERROR"}, f"toon-ofx models: {jobs.error_text(exc)}")
            return {"CANCELLED"}
        installed = sum(1 for m in listed if m.get("installed", True))
        self.report({"INFO"}, f"toon-ofx: {len(listed)} models listed, {installed} installed")
        return {"FINISHED"}


class TOONOFX_OT_pick_model(bpy.types.Operator):
    """Use this model"""
    bl_idname = "toon_ofx.pick_model"
    bl_label = "Pick Model"
    bl_options = {"INTERNAL", "UNDO"}

    target: bpy.props.StringProperty(default="model", options={"HIDDEN", "SKIP_SAVE"})
    name: bpy.props.StringProperty(options={"SKIP_SAVE"})

    @classmethod
    def description(cls, context, properties):
        return models.describe(models.find(properties.name)) if properties.name else cls.__doc__

    def execute(self, context):
        scene = compat.sequencer_scene(context)
        if scene is None or self.target not in props.MODEL_FIELDS or not self.name:
            return {"CANCELLED"}
        setattr(scene.toon_ofx, self.target, self.name)
        return {"FINISHED"}


CLASSES = (TOONOFX_OT_toonify, TOONOFX_OT_retry, TOONOFX_OT_cancel, TOONOFX_OT_check_engine,
           TOONOFX_OT_refresh_models, TOONOFX_OT_pick_model)
