"""Changing settings while filestore runs: test them, save them, and apply them in every process.

(The API token too: `filestore token --rotate` writes a new one, and each process reads it again
within a second.)

A save from the admin page is tested first (`probe.py`: put, read back, compare, delete a probe
object on the remote the new settings name); only settings that pass are stored, in the registry
(`overrides.py`). Each server process then applies them within a second: it compares the
registry's settings generation, rebuilds its settings, and when the remote changed opens a client
for the new remote and swaps it in. The old client stays open until shutdown, so reads and uploads
already using it finish; an upload that began under the old remote settings is not recorded and
goes again (see `queue/worker.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from . import overrides
from .config import Settings, override
from .errors import FilestoreError
from .probe import ProbeResult, probe
from .remote import Remote, open_remote
from .store import DEFAULT_REMOTE, Store

if TYPE_CHECKING:
    from .queue.worker import QueueWorkers

log = logging.getLogger("filestore")

POLL_SECONDS = 1.0
# A replaced remote client is closed this long after the swap: longer than an upload's lease,
# so uploads and reads that began with it have finished (or failed and gone again).
RETIRE_SECONDS = 120.0


class SettingsReloader:
    def __init__(self, store: Store, workers: QueueWorkers, opened: list[Remote]) -> None:
        self.store = store
        self.workers = workers
        self.remotes = workers.remotes
        self.seen = store.settings_generation
        # Every remote client opened, for the owner to close at shutdown: a replaced one may
        # still be serving a read or an upload.
        self.opened = opened
        self._retired: list[tuple[Remote, float]] = []
        self._lock = anyio.Lock()

    async def run(self) -> None:
        while True:
            await anyio.sleep(POLL_SECONDS)
            try:
                await self.apply()
            except Exception:
                log.exception("settings: applying saved settings failed; trying again")
            try:
                if self.store.reload_token():
                    log.warning("the API token was rotated; the old one no longer works")
            except OSError as exc:
                log.error("could not read the API token file: %s", exc)
            await self._close_retired()

    async def _close_retired(self) -> None:
        """Close replaced remote clients once whatever used them has had time to finish."""
        now = time.monotonic()
        for remote, since in list(self._retired):
            if now - since > RETIRE_SECONDS and remote in self.opened:
                self._retired.remove((remote, since))
                self.opened.remove(remote)
                with anyio.CancelScope(shield=True):
                    await remote.close()

    async def apply(self) -> None:
        """Take up settings saved since the last look (by this process or another)."""
        async with self._lock:
            current = overrides.generation(self.store.registry.reader)
            if current == self.seen:
                return
            settings = overrides.effective(self.store.base_settings, self.store.registry.reader)
            if current[1] != self.seen[1]:
                remote = open_remote(DEFAULT_REMOTE, settings.remote, settings.data_dir)
                await remote.open()
                self.opened.append(remote)
                replaced = self.remotes.get(DEFAULT_REMOTE)
                if replaced is not None:
                    self._retired.append((replaced, time.monotonic()))
                self.remotes[DEFAULT_REMOTE] = remote
                self.workers.remote_generation = current[1]
                log.warning("settings: the remote is now %s", remote.display_url)
            self.store.settings = settings
            self.seen = current
        self.workers.wake()


async def save(store: Store, reloader: SettingsReloader | None,
               changes: Mapping[str, Any]) -> ProbeResult:
    """Test `changes` ({section: {key: value}}, partial) and save them if the test passes; the
    test's result either way. Bad keys or values are a 400 before anything is tested; settings
    that leave the remote as it is need no test (uploads can be paused while the store is down).
    """
    base, reader = store.base_settings, store.registry.reader
    texts = overrides.check_changes(store.settings, changes)
    current = overrides.effective(base, reader)  # the registry's, not this process's copy
    proposed = override(base, _merge(overrides.saved(reader), texts), overrides.ORIGIN)
    if overrides.location_changed(current, proposed):
        overrides.refuse_stranding(reader, _where(current))
    result = ProbeResult(True, remote=_where(proposed), tested=False)
    if proposed.remote != current.remote:
        result = await probe(proposed.remote, proposed.data_dir)
        if not result.ok:
            return result

    def write() -> None:
        with store.registry.transaction() as conn:
            # Decided again under the write lock: another process may have saved meanwhile.
            now = overrides.effective(base, conn)
            after = override(base, _merge(overrides.saved(conn), texts), overrides.ORIGIN)
            if overrides.location_changed(now, after):
                overrides.refuse_stranding(conn, _where(now))
                overrides.forget_old_copies(conn)
            overrides.save(conn, texts, after.remote != now.remote)

    await anyio.to_thread.run_sync(write)
    if reloader is not None:
        await reloader.apply()
    else:
        store.settings = proposed
    return result


def _where(settings: Settings) -> str:
    """Where the settings point, safe to show (settings the probe will refuse show as given)."""
    try:
        return open_remote(DEFAULT_REMOTE, settings.remote, settings.data_dir).display_url
    except FilestoreError:
        return settings.remote.url


def _merge(saved: dict[str, dict[str, str]],
           texts: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    merged = {section: dict(values) for section, values in saved.items()}
    for section, values in texts.items():
        merged.setdefault(section, {}).update(values)
    return merged
