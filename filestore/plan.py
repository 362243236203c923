"""Storage plans: which remote a file goes to, when, and whether its local copy stays.

`[[plan]]` rules are matched in order on the file's path (a text prefix) and its content type (a
glob such as "audio/*"); the first that matches decides. A file no rule matches follows the
`[upload]` section and goes to the remote named "default". An account's own rules
(`account_storage.py`) come first for the files under its prefix, matched on the path relative
to it: they decide where such a file is stored (remote, upload, delay, keep_local); how it is
served (`inline`, `cache_control`) stays the plan's, the operator's.

The plan decides where a file *goes*; where it *is* is the registry's `files.remote`, recorded
when the upload is verified. Reads, deletes and moves use the recorded remote, so changing the plan
never strands an uploaded file: it changes where the next upload of each path goes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from typing import Any

from .config import DEFAULT_REMOTE, PlanRule, Settings
from .errors import ConfigError
from .registry import Tables, remote_counter_names
from .remote import display_url
from .responses import active_type
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
    # The Cache-Control of the file's GET, HEAD, 206 and 304: the rule's `cache_control`, else
    # `server.cache_control`; "": none (docs/http.md "Caches in front").
    cache_control: str = ""
    # The number (from 1) of the account's own rule that decided where the file is stored,
    # which then overrides the plan's storage choices; None: none of the account's matched.
    account_rule: int | None = None

    def public(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @property
    def decided_by(self) -> str:
        """Which rule decided where the file is stored, as a message says it."""
        if self.account_rule is not None:
            return f"the account's rule {self.account_rule}"
        return f"rule {self.rule}" if self.rule is not None else "no rule"


def _type_matches(rule: PlanRule, content_type: str) -> bool:
    base_type = content_type.split(";", 1)[0].strip().lower()
    return not rule.content_type or fnmatch.fnmatchcase(base_type, rule.content_type)


def matches(rule: PlanRule, path: str, content_type: str) -> bool:
    return path.startswith(rule.prefix) and _type_matches(rule, content_type)


def _cache_control(settings: Settings, rule: PlanRule) -> str:
    return settings.server.cache_control if rule.cache_control is None else rule.cache_control


def route(settings: Settings, path: str, content_type: str) -> Route:
    """Where the plan sends the file at `path` with this content type."""
    found = _plan_route(settings, path, content_type)
    account, sep, relative = path.partition("/")
    rules = settings.account_plan.get(account, ()) if sep else ()
    for number, rule in enumerate(rules, 1):
        if matches(rule, relative, content_type):
            upload = settings.upload
            return dataclasses.replace(
                found, remote=rule.remote, upload=rule.upload, account_rule=number,
                delay=upload.delay if rule.upload_delay is None else rule.upload_delay,
                keep_local=upload.keep_local if rule.keep_local is None else rule.keep_local)
    return found


def _plan_route(settings: Settings, path: str, content_type: str) -> Route:
    upload = settings.upload
    for number, rule in enumerate(settings.plan, 1):
        if matches(rule, path, content_type):
            return Route(
                number, rule.remote, rule.upload,
                upload.delay if rule.upload_delay is None else rule.upload_delay,
                upload.keep_local if rule.keep_local is None else rule.keep_local,
                rule.inline, _cache_control(settings, rule),
            )
    return Route(None, DEFAULT_REMOTE, True, upload.delay, upload.keep_local,
                 cache_control=settings.server.cache_control)


# (Cache-Control, whether the file is an attachment: an active type its rule does not serve
# inline); a prefix and the answer of a rule that matches its path.
Answer = tuple[str, bool]
_Rules = tuple[tuple[str, Answer], ...]


class Serving:
    """How the plan serves files (`Route.cache_control`, `Route.inline`) under one Settings,
    for the GET hot path (`served`): `route` matches every rule's type glob on every call,
    this does it once per content type."""

    _MAX_TYPES = 4096  # bounded: the types are the uploaders' to choose

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rules = [(rule, _cache_control(settings, rule)) for rule in settings.plan]
        self.by_type: dict[str, tuple[_Rules, Answer]] = {}

    def for_type(self, content_type: str) -> tuple[_Rules, Answer]:
        """The (prefix, answer) of the rules that match this type, in order and as far as
        they decide anything, and the answer when none matches the path."""
        active = active_type(content_type)
        fallback = (self.settings.server.cache_control, active)
        rules: list[tuple[str, Answer]] = []
        for rule, cache_control in self._rules:
            if _type_matches(rule, content_type):
                rules.append((rule.prefix, (cache_control, active and not rule.inline)))
                if not rule.prefix:
                    break  # matches every path: the rules after it never decide
        # A rule that answers what no match answers only matters where it hides a later rule
        # that answers otherwise from a path both match: `faxes/` before `media/` need not
        # be tried, `media/` before `media/live/` must.
        decisive = tuple(
            (prefix, answer) for n, (prefix, answer) in enumerate(rules)
            if answer != fallback or any(
                later != fallback and (other.startswith(prefix) or prefix.startswith(other))
                for other, later in rules[n + 1:]))
        if len(self.by_type) >= self._MAX_TYPES:
            self.by_type.clear()
        found = self.by_type[content_type] = (decisive, fallback)
        return found


# The Serving of the settings in force, and of a few more (an admin save makes new settings;
# tests run several servers in one process), by the settings' identity.
_current = Serving(Settings())
_made: dict[int, Serving] = {}


def served(settings: Settings, path: str, content_type: str) -> Answer:
    """(Cache-Control, attachment) of the file at `path` with this content type: the
    Cache-Control `route` says ("": none), and whether it is an active type
    (`responses.active_type`) its rule does not serve inline. For the GET hot path: a dict
    lookup, and a `startswith` per rule of the type that sets `cache_control` or `inline`."""
    serving = _current
    if serving.settings is not settings:
        serving = _serving(settings)
    rules, answer = serving.by_type.get(content_type) or serving.for_type(content_type)
    for prefix, found in rules:
        if path.startswith(prefix):
            return found
    return answer


def _serving(settings: Settings) -> Serving:
    global _current
    serving = _made.get(id(settings))
    if serving is None or serving.settings is not settings:
        if len(_made) >= 8:
            _made.clear()
        serving = _made[id(settings)] = Serving(settings)
    _current = serving
    return serving


def describe(rule: PlanRule) -> str:
    """A rule as one line, the way a config file would hold it."""
    parts = [f'prefix = "{rule.prefix}"'] if rule.prefix else []
    if rule.content_type:
        parts.append(f'content_type = "{rule.content_type}"')
    if not parts:
        parts.append("every file")
    serving = ["inline = true"] if rule.inline else []
    if rule.cache_control is not None:  # a TOML string: JSON's escapes are TOML's
        serving.append(f"cache_control = {json.dumps(rule.cache_control)}")
    if not rule.upload:
        return ", ".join([*parts, "upload = false", *serving])
    parts.append(f'remote = "{rule.remote}"')
    if rule.upload_delay is not None:
        parts.append(f'upload_delay = "{value_text(rule.upload_delay, parse_duration)}"')
    if rule.keep_local is not None:
        parts.append(f"keep_local = {value_text(rule.keep_local, bool)}")
    return ", ".join([*parts, *serving])


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
