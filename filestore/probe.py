"""Test remote settings before they are saved: put a probe object, read it back, compare, delete.

Settings that fail any step are never saved, so the page cannot switch a running filestore to a
store it cannot write, read or clean up. Each step has a deadline: a store that does not answer is
a failed step, not a hung save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import uuid
from pathlib import Path

import anyio

from .config import RemoteSettings
from .errors import FilestoreError
from .remote import open_remote

STEPS = ("connect", "put", "read", "compare", "delete")
STEP_TIMEOUT = 20.0
PROBE_DIR = ".filestore-probe"


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    ok: bool
    step: str | None = None  # the step that failed
    detail: str = ""  # the store's message
    remote: str = ""  # where the settings point, safe to show
    tested: bool = True  # False: the remote did not change, so there was nothing to test

    def public(self) -> dict[str, object]:
        return dataclasses.asdict(self)


async def probe(settings: RemoteSettings, data_dir: Path, name: str = "probe") -> ProbeResult:
    """Run the steps against the remote `settings` describe (to be named `name`: an account's
    remote is probed inside the account's scope, where its credentials may be limited to); the
    first failure ends it."""
    try:
        remote = open_remote(name, settings, data_dir)
    except FilestoreError as exc:
        return ProbeResult(False, "connect", exc.detail)
    payload = f"filestore probe {uuid.uuid4().hex}\n".encode() + os.urandom(64)
    path = f"{remote.scope}{PROBE_DIR}/{uuid.uuid4().hex}"
    step, stored = "connect", False
    try:
        with anyio.fail_after(STEP_TIMEOUT):
            await remote.open()
        step = "put"
        with anyio.fail_after(STEP_TIMEOUT):
            await remote.put(path, io.BytesIO(payload), len(payload),
                             hashlib.sha256(payload).hexdigest(), "application/octet-stream")
        stored = True
        step = "read"
        with anyio.fail_after(STEP_TIMEOUT):
            got = b"".join([chunk async for chunk in remote.get(path)])
        step = "delete"
        with anyio.fail_after(STEP_TIMEOUT):
            await remote.delete(path)
        stored = False
        if got != payload:
            return ProbeResult(False, "compare", f"read back {len(got)} bytes that differ from "
                               f"the {len(payload)} written", remote.display_url)
        return ProbeResult(True, remote=remote.display_url)
    except FilestoreError as exc:
        return ProbeResult(False, step, exc.detail, remote.display_url)
    except TimeoutError:
        return ProbeResult(False, step, f"no answer within {STEP_TIMEOUT:.0f} s",
                           remote.display_url)
    except Exception as exc:  # settings no parser caught: still a failed step, never a 500
        return ProbeResult(False, step, f"{type(exc).__name__}: {exc}", remote.display_url)
    finally:
        with anyio.CancelScope(shield=True):
            if stored:  # a later step failed: do not leave the probe object behind
                with anyio.move_on_after(STEP_TIMEOUT), contextlib.suppress(Exception):
                    await remote.delete(path)
            await remote.close()
