"""`python -m toon_ofx` is the `toon-ofx` command (the add-ons start the engine this way)."""
import sys

from .cli import main

sys.exit(main())
