"""`python -m toon_ofx.panel`: the panel on its own (what the Resolve script runs)."""
import sys

from .app import main

sys.exit(main())
