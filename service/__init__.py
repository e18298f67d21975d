"""eeserve HTTP service: app factory, engine, metrics and CLI."""
