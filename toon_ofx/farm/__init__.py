"""Render farms: a clip rendered as frame-range chunks into one image sequence, then assembled.

Each farm task runs

    toon-ofx render SRC -o SEQ.%06d.EXT --frames A-B --warmup N [effect parameters]

into ONE image sequence named by source frame numbers, in an image-sequence source's own
format (a DPX or EXR plate comes back as DPX or EXR, as a single-machine render writes it)
or PNG for a movie, then a final task runs

    toon-ofx assemble SEQ.%06d.EXT --source SRC -o OUT.mp4 --frames F-L

to encode the movie with the source's audio. Modules, in data-path order:

    plan.py         chunks on the segment grid, chunk sizes, warm-up (why chunks equal a whole render)
    job.py          FarmJob and the command lines its tasks run
    openjd.py       AWS Deadline Cloud / OpenJD job bundle (CHUNK[INT] task chunking)
    opencue.py      OpenCue PyOutline script (Shell layers with range=/chunk=)
    flamenco.py     Flamenco 3 job type (compileJob with frameChunker) and the job to submit
    export.py       the format table; writes an export's files
    assemble.py     finds the rendered sequence, checks it is whole, encodes the movie
    commands.py     `toon-ofx farm export` and `toon-ofx assemble`
    ray_backend.py  `toon-ofx render --ray`: the same chunks on a Ray cluster, no farm manager

Exports import neither torch nor Ray (only ray_backend does), and of the engine only
the standard-library engine.temporal (the frame arithmetic the renderer uses): they run
on a submit host.
"""
