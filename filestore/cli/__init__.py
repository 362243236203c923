"""The `filestore` command: serve, and maintenance from a shell.

Each module holds a group of commands; each command parses its options, calls one operation of
the application layer (`service.py`) and prints the answer. `base.py` holds what they share.
"""

from . import accounts, cache, cluster, inspect, maintenance, moves, queue, s3, server
from .base import main

__all__ = ["accounts", "cache", "cluster", "inspect", "main", "maintenance", "moves", "queue",
           "s3", "server"]
