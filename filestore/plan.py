"""Storage plans: which remote a file goes to, when, and whether its local copy stays.

`[[plan]]` rules are matched in order on the file's path (a text prefix) and its content type (a
glob such as "audio/*"); the first that matches decides. A file no rule matches follows the
`[upload]` section and goes to the remote named "default".

The plan decides where a file *goes*; where it *is* is the registry's `files.remote`, recorded
when the upload is verified. Reads, deletes and moves use the recorded remote, so changing the plan
never strands an uploaded file: it changes where the next upload of each path goes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

from .config import DEFAULT_REMOTE, PlanRule, Settings
from .errors import ConfigError
from .registry import Tables, remote_counter_names
from .remote import display_url
from .values import parse_duration, value_text


@dataclasses.dataclass(frozen=True)
class Route:
    rule: int | None  # the matching rule's number, from 1; None: no rule matched
    remote: str
    upload: bool  # False: the file stays local, never uploaded
    delay: float  # the upload's cool-down, in seconds
    keep_local: bool  # the local copy stays after the upload (backup mode)
    # Files of active types (HTML, SVG, XML, JavaScript: `responses.active_type`) are served
    # inline, still sandboxed, instead of as attachments.
    inline: bool = False

    def public(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def matches(rule: PlanRule, path: str, content_type: str) -> bool:
    base_type = content_type.split(";", 1)[0].strip().lower()
    return path.startswith(rule.prefix) and (
        not rule.content_type or fnmatch.fnmatchcase(base_type, rule.content_type))


def route(settings: Settings, path: str, content_type: str) -> Route:
    """Where the plan sends the file at `path` with this content type."""
    upload = settings.upload
    for number, rule in enumerate(settings.plan, 1):
        if matches(rule, path, content_type):
            return Route(
                number, rule.remote, rule.upload,
                upload.delay if rule.upload_delay is None else rule.upload_delay,
                upload.keep_local if rule.keep_local is None else rule.keep_local,
                rule.inline,
            )
    return Route(None, DEFAULT_REMOTE, True, upload.delay, upload.keep_local)


def describe(rule: PlanRule) -> str:
    """A rule as one line, the way a config file would hold it."""
    parts = [f'prefix = "{rule.prefix}"'] if rule.prefix else []
    if rule.content_type:
        parts.append(f'content_type = "{rule.content_type}"')
    if not parts:
        parts.append("every file")
    inline = ["inline = true"] if rule.inline else []
    if not rule.upload:
        return ", ".join([*parts, "upload = false", *inline])
    parts.append(f'remote = "{rule.remote}"')
    if rule.upload_delay is not None:
        parts.append(f'upload_delay = "{value_text(rule.upload_delay, parse_duration)}"')
    if rule.keep_local is not None:
        parts.append(f"keep_local = {value_text(rule.keep_local, bool)}")
    return ", ".join([*parts, *inline])


def check_recorded(settings: Settings, tx: Tables) -> list[str]:
    """Refuse a config that drops a remote still holding files the registry records there:
    their only copies would be unreadable (a one-line error at start, naming the remote). What
    else names a dropped remote is only leftovers (older copies of local files, queued remote
    deletes, which will fail): warnings, returned."""
    names = settings.named_remotes()
    for counter, count in tx.counters.with_prefix("files.remote.").items():
        remote = counter.removeprefix("files.remote.")
        if count > 0 and remote not in names:
            raise ConfigError(f"{count:,} files are in the cloud at the remote {remote!r}, which "
                              f"the config no longer names: add [remotes.{remote}] back (or "
                              "move those files to local with the old config first)")
    warnings = []
    for remote in tx.files.recorded_remotes():
        if remote not in names:
            warnings.append(f"local files have older copies in the remote {remote!r}, which the "
                            "config no longer names: they stay there (deleting those files "
                            f"will fail to remove them until [remotes.{remote}] is back)")
    for remote, count in tx.queue.count_by_remote().items():
        if remote not in names:
            warnings.append(f"{count:,} queued remote deletes or uploads name the remote "
                            f"{remote!r}, which the config no longer names: deletes will fail "
                            f"until [remotes.{remote}] is back (`filestore queue drop` forgets "
                            "one); uploads go where the plan says now")
    return warnings




def overview(settings: Settings, tx: Tables) -> dict[str, Any]:
    """The remotes by name, with the files and bytes the registry records in each, and the
    rules in order: for the admin page, the stats API and `filestore plan show`."""
    counters = tx.counters.with_prefix("files.remote.", "bytes.remote.")
    remotes = {}
    for name, remote_settings in settings.named_remotes().items():
        names = remote_counter_names(name)
        url = display_url(name, remote_settings, settings.data_dir)
        remotes[name] = {"url": url, "files": counters.get(names.files, 0),
                         "bytes": counters.get(names.bytes, 0),
                         "rules": [n for n, rule in enumerate(settings.plan, 1)
                                   if rule.upload and rule.remote == name]}
    rules = [{"number": number, "text": describe(rule), **dataclasses.asdict(rule)}
             for number, rule in enumerate(settings.plan, 1)]
    return {"remotes": remotes, "rules": rules}
