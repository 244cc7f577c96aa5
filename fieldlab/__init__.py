"""The ``fieldlab`` command: demo, sim, edge and gateway in one CLI. Nothing imports this package."""
__version__ = "0.1.0"
