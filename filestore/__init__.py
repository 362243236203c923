"""filestore: a caching file-serving proxy with an asynchronous cloud upload queue."""

__version__ = "0.1.0"
