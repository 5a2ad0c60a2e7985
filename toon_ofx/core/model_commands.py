"""`toon-ofx models list|pull|path|dir`: the model store (toon_ofx.core.model_store) on the command line."""
from __future__ import annotations

import json
import sys

from .errors import UserError
from .model_store import expand, list_models, load_manifest, models_dir, pull, resolve, search_dirs


def add_models_parser(subparsers) -> None:
    """Register ``toon-ofx models list|pull NAME...|path NAME``."""
    p = subparsers.add_parser("models", help="list, download and locate model checkpoints",
                              description="Known checkpoints (models/manifest.toml) and where they are.")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    pl = sub.add_parser("list", help="show known models and whether they are installed")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pp = sub.add_parser("pull", help="download models (a name or a group such as face-alignment)")
    pp.add_argument("names", nargs="+", metavar="NAME")
    pp.add_argument("--force", action="store_true", help="download again even if present")
    pp.add_argument("--no-progress", action="store_true", help="no progress bar")
    pa = sub.add_parser("path", help="print the file a model name resolves to")
    pa.add_argument("name", metavar="NAME")
    sub.add_parser("dir", help="print the folders searched for models")
    p.set_defaults(run=run_models)


def run_models(args) -> int:
    """Run a ``toon-ofx models`` action; returns the exit code (UserError propagates)."""
    action = args.models_command
    if action == "list":
        rows = list_models()
        if getattr(args, "json", False):
            print(json.dumps(rows, indent=2))
            return 0
        width = max(len(r["name"]) for r in rows) if rows else 4
        for r in rows:
            state = "installed" if r["installed"] else ("missing (convert)" if r["needs_conversion"] else "missing")
            res = f"{r['resolution']}px" if r["resolution"] else "-"
            print(f"{r['name']:<{width}}  {state:<17}  {r['kind']:<10}  {res:>6}  {r['title']}")
        print(f"\nmodels folder: {models_dir()}", file=sys.stderr)
        return 0
    if action == "pull":
        m = load_manifest()
        for name in expand(args.names, m):
            path = pull(name, progress=not args.no_progress, force=args.force, manifest=m)
            e = m["models"][name]
            print(path)
            if e.get("download_file"):
                print(f"toon-ofx: {name} needs one conversion: {e.get('convert')}; then put {e['file']} in "
                      f"{models_dir()}", file=sys.stderr)
        return 0
    if action == "path":
        print(resolve(args.name))
        return 0
    if action == "dir":
        for d in search_dirs():
            print(d)
        return 0
    raise UserError(f"unknown models action {action!r}")
