"""The toon-ofx panel: a PySide6 window to choose the effect's parameters, preview and render.

Free DaVinci Resolve 19.1+ has no UIManager for scripts, so the panel is a plain PySide6 window run by the
engine's Python. It serves three callers:

* the Resolve script (`toon_ofx.hosts.resolve`) starts it with `--clips clips.json --result result.json`:
  the clips of a timeline track, to tick, preview and render; on close it writes what was rendered and the
  script imports and places it;
* `toon-ofx panel [video]` runs it standalone on a chosen video file;
* its Live button previews a webcam (the paper's RGB-camera input).

Modules, from the command line down to the engine:

    app.py           `toon-ofx panel`, `python -m toon_ofx.panel`: options, the placement report, main
    window.py        ToonPanel: composes the parts below, renders, writes the result for the script
    source_box.py    what to render and where: a video file, or the script's clips and target track
    param_form.py    the parameters as widgets, generated from toon_ofx.core.params; the model list
    preview_pane.py  original | toon side by side, the frame scrubber, Preview frame
    live.py          the webcam loop: newest frame stylised whenever the engine is free
    render_bar.py    progress, Render, Cancel: submits, polls and cancels the jobs
    widgets.py       ImageView, to_qimage, the status line
    workers.py       the thread pool whose answers come back to the UI thread as signals
    sources.py       frame sources: webcam, iterables, frames of a movie; the grabber thread
    backends.py      the engine behind `preview`/`submit`/`job`/`cancel`: engine process or in-process

Importing this package needs nothing; the modules need PySide6.
"""
