"""The `labctl` command line."""

from labctl.cli.app import app, main

__all__ = ["app", "main"]
