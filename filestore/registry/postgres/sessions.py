"""Admin sessions, single-use signed URLs and the charts' samples in PostgreSQL (see
`registry/sessions.py`, `registry/grants.py`, `registry/samples.py`).

A grant's claim and a sample's interval are won by one `INSERT ... ON CONFLICT DO NOTHING`: the
primary key decides between processes (or nodes) at once, as in SQLite.
"""

from __future__ import annotations

from ..grants import PRUNE_AFTER
from ..samples import _COLUMNS as _SAMPLE_COLUMNS
from ..samples import Sample
from ..sessions import GENERATION
from .link import Link


class SessionRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def start(self, key: str, now: float, expires: float) -> None:
        self._link.execute(
            "DELETE FROM sessions WHERE expires <= %s OR generation <> "
            "(SELECT value FROM counters WHERE name = %s)", (now, GENERATION))
        self._link.execute(
            "INSERT INTO sessions (id, generation, created, expires) "
            "SELECT %s, value, %s, %s FROM counters WHERE name = %s",
            (key, now, expires, GENERATION))

    def active(self, key: str, now: float) -> bool:
        return self._link.one(
            "SELECT 1 FROM sessions JOIN counters ON counters.name = %s "
            "AND counters.value = sessions.generation WHERE sessions.id = %s "
            "AND sessions.expires > %s", (GENERATION, key, now)) is not None

    def count(self, now: float) -> int:
        return int(self._link.value(
            "SELECT count(*) FROM sessions JOIN counters ON counters.name = %s "
            "AND counters.value = sessions.generation WHERE sessions.expires > %s",
            (GENERATION, now)))

    def end(self, key: str) -> bool:
        return self._link.count("DELETE FROM sessions WHERE id = %s", (key,)) > 0

    def end_all(self, now: float) -> int:
        ended = self.count(now)
        self._link.execute("UPDATE counters SET value = value + 1 WHERE name = %s",
                           (GENERATION,))
        return ended


class GrantRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def claim(self, nonce: str, expires: float, now: float) -> str | None:
        self._link.execute("DELETE FROM grants WHERE expires < %s", (now - PRUNE_AFTER,))
        if self._link.count("INSERT INTO grants (nonce, expires, claimed) VALUES (%s, %s, %s) "
                            "ON CONFLICT (nonce) DO NOTHING", (nonce, expires, now)):
            return None
        return "spent" if self._link.value("SELECT spent FROM grants WHERE nonce = %s",
                                           (nonce,)) is not None else "claimed"

    def spend(self, nonce: str, now: float) -> None:
        self._link.execute("UPDATE grants SET spent = %s WHERE nonce = %s", (now, nonce))

    def release(self, nonce: str) -> None:
        self._link.execute("DELETE FROM grants WHERE nonce = %s AND spent IS NULL", (nonce,))

    def state(self, nonce: str) -> str | None:
        row = self._link.one("SELECT spent FROM grants WHERE nonce = %s", (nonce,))
        if row is None:
            return None
        return "spent" if row[0] is not None else "claimed"


_PLACES = ", ".join("%s" for _ in Sample._fields)


class SampleRows:
    def __init__(self, link: Link) -> None:
        self._link = link

    def has(self, slot: int) -> bool:
        return self._link.one("SELECT 1 FROM samples WHERE slot = %s", (slot,)) is not None

    def add(self, sample: Sample, keep_after: float) -> bool:
        inserted = self._link.count(
            f"INSERT INTO samples ({_SAMPLE_COLUMNS}) VALUES ({_PLACES}) "
            "ON CONFLICT (slot) DO NOTHING", tuple(sample))
        self._link.execute("DELETE FROM samples WHERE time <= %s", (keep_after,))
        return inserted > 0

    def since(self, after: float) -> list[Sample]:
        return [Sample(*row) for row in self._link.rows(
            f"SELECT {_SAMPLE_COLUMNS} FROM samples WHERE time > %s ORDER BY time", (after,))]
