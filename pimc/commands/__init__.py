"""One module a ``pimc`` command; each exposes ``main(...)`` called by ``pimc.cli``."""
