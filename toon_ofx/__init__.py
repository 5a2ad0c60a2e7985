"""toon-ofx: the product around the engine (parameters, media, jobs, server, client, CLI)."""
__version__ = "0.1.0"
