"""The computation: arrays in, arrays out. Knows nothing of hosts, HTTP or media files."""
