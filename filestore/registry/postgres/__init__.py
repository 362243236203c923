"""The PostgreSQL registry (`[registry] url = "postgresql://..."`): the same interface as the
SQLite one (`registry/interface.py`), one module per table group as there, and the same numbered
migrations with PL/pgSQL triggers (`migrations/`). `registry.py` says what stands in for each of
SQLite's tools; `link.py` is a connection as the row classes use it."""

from .registry import PostgresRegistry, redacted

__all__ = ["PostgresRegistry", "redacted"]
