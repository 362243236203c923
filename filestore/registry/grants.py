"""Single-use signed URLs (`filestore sign --once`): the nonces claimed and spent, shared by
every process.

A request under such a URL claims its nonce before it runs (a row with `spent` NULL); a 2xx
answer spends it (`spent` set), anything else gives it back (the row goes). So a URL serves one
successful request, also when several arrive at once in different worker processes: the claim
is one insert, and only one can make it. Rows are kept until an hour after the URL's own expiry
(after which the signature refuses it anyway), pruned at each claim.
"""

from __future__ import annotations

import sqlite3

PRUNE_AFTER = 3600.0  # seconds past a URL's expiry: a clock stepped back a little changes nothing


class GrantRows:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def claim(self, nonce: str, expires: float, now: float) -> str | None:
        """Claim `nonce` for one request: None if it is now this request's, else why not
        ("spent", or "claimed" while another request under it runs)."""
        self._conn.execute("DELETE FROM grants WHERE expires < ?", (now - PRUNE_AFTER,))
        inserted = self._conn.execute(
            "INSERT INTO grants (nonce, expires, claimed) VALUES (?, ?, ?) "
            "ON CONFLICT (nonce) DO NOTHING", (nonce, expires, now)).rowcount
        if inserted:
            return None
        row = self._conn.execute("SELECT spent FROM grants WHERE nonce = ?", (nonce,)).fetchone()
        return "spent" if row is not None and row[0] is not None else "claimed"

    def spend(self, nonce: str, now: float) -> None:
        """The request that claimed `nonce` succeeded: the URL is used up."""
        self._conn.execute("UPDATE grants SET spent = ? WHERE nonce = ?", (now, nonce))

    def release(self, nonce: str) -> None:
        """The request that claimed `nonce` failed: the URL may be used again."""
        self._conn.execute("DELETE FROM grants WHERE nonce = ? AND spent IS NULL", (nonce,))

    def state(self, nonce: str) -> str | None:
        """"spent", "claimed", or None (never claimed, or pruned)."""
        row = self._conn.execute("SELECT spent FROM grants WHERE nonce = ?", (nonce,)).fetchone()
        if row is None:
            return None
        return "spent" if row[0] is not None else "claimed"
