"""The local engine process (`toon-ofx serve`): an HTTP+JSON service that renders jobs for the editor add-ons.

A job is one render of one source clip (a frame range, one parameter set) into one output: an image
sequence named by SOURCE frame numbers, or a movie encoded from such a sequence. Jobs survive a
crash (a resumed job neither loses nor re-renders a frame); outputs are never overwritten and
source media is only ever read.

A request's path through the rooms:

    handler   HTTP: guards (browser, Host, token), body limits, JSON, routes -> Server
    server    Server: wiring and lifecycle; the `serve` command
    requests  a job or preview body checked field by field into a JobSpec
              (uses outputs: folder and name rules; devices: cpu/mps/cuda/auto)
    store     JobStore: the durable queue in SQLite, unique output names, crash recovery
    workers   JobQueue: one worker thread per device claims jobs from the store ...
    runner    JobRunner: ... and runs each through the renderer, recording how it ended
    preview   the preview answer (PNG encoding)
    instance  token, server.json and the instance lock in the user's folders
    errors    RequestError / Conflict / NotFound: a UserError with its HTTP status

Standard library only at import time (the CLI imports the server); the renderer, media probing
and torch are imported when first needed.
"""
