"""The `filestore` command: serve, and maintenance from a shell.

Each module holds a group of commands; each command parses its options, calls one operation of
the application layer (`service.py`) and prints the answer. `base.py` holds what they share.
"""

from . import accounts, inspect, maintenance, moves, queue, server
from .base import main

__all__ = ["accounts", "inspect", "main", "maintenance", "moves", "queue", "server"]
