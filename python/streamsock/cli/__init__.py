"""The ``streamsock`` command line: ``main`` parses and dispatches (main.py);
each command is a module of its own: ``probe``, ``connect``, ``serve``, ``demo``."""

from .main import main

__all__ = ["main"]
