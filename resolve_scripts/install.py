#!/usr/bin/env python3
"""Install "Toon Faces" into DaVinci Resolve's Workspace > Scripts > Utility menu.

Run it with the Python where toon-ofx is installed (that Python becomes the
engine the script starts):

    .venv/bin/python resolve_scripts/install.py            # per-user Scripts/Utility folder
    .venv/bin/python resolve_scripts/install.py --dry-run  # say where it would go
    .venv/bin/python resolve_scripts/install.py --uninstall

Same as `toon-ofx install-resolve-script`. Standard library only.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toon_ofx.hosts import resolve as resolve_bridge  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="install.py", description=__doc__.splitlines()[0])
    resolve_bridge.add_install_options(parser)
    return resolve_bridge.run_install(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
