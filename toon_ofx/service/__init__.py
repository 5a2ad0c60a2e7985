"""The local engine process (`toon-ofx serve`): an HTTP+JSON service that renders jobs for the editor add-ons.

A job is one render of one source clip (a frame range, one parameter set) into one output: an image
sequence named by SOURCE frame numbers, or a movie encoded from such a sequence. Jobs survive stops,
crashes, full disks and a damaged database (a resumed or retried job neither loses nor re-renders a
frame); outputs are never overwritten and source media is only ever read.

A request's path through the rooms:

    listener  the socket: request heads read without a thread each (deadline, size and connection
              caps), complete ones handed to a bounded pool of threads ...
    handler   ... HTTP: guards (browser, Host, token; the token-less challenge), body deadline and
              limits, JSON, routes -> Server
    server    Server: wiring and lifecycle (stops that requeue); the `serve` command
    lifetime  client sessions (leases) and the idle stop of an engine started on demand
    requests  a job or preview body checked field by field into a JobSpec
              (uses outputs: path rules, folder and name rules; devices: cpu/mps/cuda/auto)
    store     JobStore: the durable queue in SQLite, unique output names, crash recovery, retry,
              ends kept in memory while the disk is full (repair: checked and rebuilt at start)
    workers   JobQueue: one worker thread per device claims jobs from the store ...
    runner    JobRunner: ... and runs each through the renderer, recording how it ended
    preview   one preview at a time on its own thread, waited for or polled (a newer, cancelled or
              abandoned one stops), and its PNG answer
    instance  token, server.json and the instance lock in the user's (private) folders
    errors    RequestError / Conflict / NotFound: a UserError with its HTTP status

Standard library only at import time (the CLI imports the server); the renderer, media probing
and torch are imported when first needed. The wire protocol's shared pieces (the challenge proof,
the session header, what counts as a model path) come from toon_ofx.client, which defines them.
"""
