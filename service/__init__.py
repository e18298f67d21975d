"""eeserve HTTP service: app factory, engine, metrics and CLI."""

__version__ = "0.1.0"
