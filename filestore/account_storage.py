"""Storage an account configures for itself: remotes with its own credentials, and plan rules.

Kazoo's storage plans, for filestore's accounts: an account (its own token, or the administrator
for it) names remotes, e.g. the customer's own bucket, and rules that say which of its files go
where, at run time through `/admin/api/accounts/ID/storage`. Its files stay ordinary filestore
files under `ID/`; only where they are uploaded changes.

- **Remotes** have the admin page's remote keys (url, endpoint_url, region, access_key_id,
  secret_access_key) and are recorded as "ID:NAME" (`values.account_remote`): no configured
  remote name holds a ":", so the two never collide. Each is an `s3://` URL, scoped to the
  account's prefix (`remote.open_remote`): objects keep the file's whole path as their key, and
  listings and the clean-up after a crash look under "ID/" only. For an account's own token the
  credentials must be given (never the server's own credential chain: the account would borrow
  the operator's access), and `endpoint_url` must be AWS or lie under one of
  `storage.account_endpoints` (no requests to wherever the server can reach). The administrator
  may name any endpoint, and leave the credentials to the chain.
- **Rules** have the plan's storage keys (prefix, relative to "ID/"; content_type, remote,
  upload, upload_delay, keep_local). They decide where the account's matching files are stored,
  before the global plan does (`plan.route`); a rule's `remote` is one of the account's remotes,
  else a configured one. How files are served (inline, cache_control) stays the operator's.
- **A save** is checked like the admin page's: bad keys or values are a 400 naming them; each
  new or changed remote is probed (put, read, compare, delete, inside the account's scope) and
  refused with the failing step named; removing or moving a remote that holds files (or has
  remote deletes queued) is a 409; remotes must be apart from every other (a 400).
- **Kept** in the registry (`account_storage` table) as JSON, the secrets encrypted
  (`secrets.py`), never returned or logged. Saving moves the settings generations, so
  `overrides.effective` lays the change over the settings of every process within a second.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from .config import PlanRule, RemoteSettings, Settings, parse_section
from .errors import BadRequest, ConfigError, Conflict
from .registry import Tables, remote_counter_names
from .remote import display_url
from .secrets import SecretBox, is_sealed
from .values import account_remote, parse_remote_name

REMOTE_KEYS = ("url", "endpoint_url", "region", "access_key_id", "secret_access_key")
SECRET_KEY = "secret_access_key"
LOCATION_KEYS = ("url", "endpoint_url")  # where a remote's objects are
RULE_KEYS = ("prefix", "content_type", "remote", "upload", "upload_delay", "keep_local")
MAX_REMOTES = 8
MAX_RULES = 32
_ORIGIN = "account storage"


@dataclasses.dataclass(frozen=True)
class Storage:
    """One account's remotes (by their short names) and rules (prefixes relative to "ID/",
    remotes by the names the account gave), as checked."""

    remotes: dict[str, RemoteSettings] = dataclasses.field(default_factory=dict)
    plan: tuple[PlanRule, ...] = ()
    # The rules as the account sent them (only the keys it gave), to store and show.
    rule_texts: tuple[dict[str, Any], ...] = ()


# -- reading what is stored ------------------------------------------------------------------------


def stored(tx: Tables, account: str, box: SecretBox | None) -> Storage:
    """The account's storage as saved (empty if none); with `box` the secrets decrypted, else
    left out."""
    row = tx.account_storage.get(account)
    return _decoded(account, *row, box) if row else Storage()


def lay_over(settings: Settings, tx: Tables, box: SecretBox | None) -> Settings:
    """`settings` with every account's remotes and rules in `account_remotes` and
    `account_plan` (`box` None: without the secrets)."""
    remotes: dict[str, RemoteSettings] = {}
    plans: dict[str, tuple[PlanRule, ...]] = {}
    for account, remotes_json, plan_json in tx.account_storage.all():
        storage = _decoded(account, remotes_json, plan_json, box)
        remotes.update(_recorded_remotes(account, storage))
        if storage.plan:
            plans[account] = _recorded_rules(settings, account, storage)
    return dataclasses.replace(settings, account_remotes=remotes, account_plan=plans)


def with_storage(settings: Settings, account: str, storage: Storage) -> Settings:
    """`settings` with the account's storage replaced by `storage`."""
    remotes = {name: remote for name, remote in settings.account_remotes.items()
               if not name.startswith(account_remote(account, ""))}
    remotes.update(_recorded_remotes(account, storage))
    plans = {key: rules for key, rules in settings.account_plan.items() if key != account}
    if storage.plan:
        plans[account] = _recorded_rules(settings, account, storage)
    return dataclasses.replace(settings, account_remotes=remotes, account_plan=plans)


def _recorded_remotes(account: str, storage: Storage) -> dict[str, RemoteSettings]:
    return {account_remote(account, name): remote for name, remote in storage.remotes.items()}


def _recorded_rules(settings: Settings, account: str, storage: Storage) -> tuple[PlanRule, ...]:
    """The account's rules naming remotes as recorded: its own ("ID:NAME"), else configured
    ones (a `ConfigError` if the config no longer names one)."""
    rules = []
    for rule in storage.plan:
        remote = rule.remote
        if remote in storage.remotes:
            remote = account_remote(account, remote)
        elif remote not in settings.named_remotes():
            raise ConfigError(f"account {account!r}: a plan rule names the remote {remote!r}, "
                              "which neither the account nor the config has any more: change "
                              "the account's storage")
        rules.append(dataclasses.replace(rule, remote=remote))
    return tuple(rules)


def _decoded(account: str, remotes_json: str, plan_json: str,
             box: SecretBox | None) -> Storage:
    try:
        remotes, rules = json.loads(remotes_json), json.loads(plan_json)
        parsed = {name: _remote_settings(name, {
            key: _opened(box, account, name, value) if key == SECRET_KEY else value
            for key, value in values.items() if key != SECRET_KEY or box is not None})
            for name, values in remotes.items()}
        return Storage(parsed, tuple(_rule(account, n, r) for n, r in enumerate(rules, 1)),
                       tuple(rules))
    except (ValueError, TypeError, AttributeError, BadRequest) as exc:
        detail = exc.detail if isinstance(exc, BadRequest) else type(exc).__name__
        raise ConfigError(f"account {account!r}: its saved storage cannot be read ({detail}); "
                          "save it again") from None


def _opened(box: SecretBox | None, account: str, name: str, value: str) -> str:
    assert box is not None
    return box.decrypt(value, f"account {account!r}: remotes.{name}.{SECRET_KEY}") \
        if is_sealed(value) else value


# -- checking a change -----------------------------------------------------------------------------


def proposed(current: Storage, body: Any, *, replace: bool) -> dict[str, Any]:
    """The whole document a PUT (`replace`) or a PATCH asks for: {"remotes": {NAME: {key:
    value}}, "plan": [rule, ...]}. A PUT gives every remote whole; a PATCH merges remotes key
    by key (a remote given as null goes) and replaces the plan if it gives one. Either way an
    empty or missing secret keeps the one stored for that remote (`current` has it decrypted)."""
    if not isinstance(body, Mapping):
        raise BadRequest('send {"remotes": {"NAME": {"url": "s3://bucket"}}, "plan": [...]}')
    unknown = sorted(set(body) - {"remotes", "plan"})
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} (known: remotes, plan)")
    given = body.get("remotes") or {}
    if not isinstance(given, Mapping):
        raise BadRequest("remotes must be an object of remote names")
    before = {name: _as_texts(remote) for name, remote in current.remotes.items()}
    remotes = {} if replace else dict(before)
    for name, values in given.items():
        if values is None and not replace:
            remotes.pop(name, None)
            continue
        if not isinstance(values, Mapping):
            raise BadRequest(f"remotes.{name} must be an object of keys")
        kept = before.get(name, {})
        if replace:
            kept = {key: value for key, value in kept.items() if key == SECRET_KEY}
        remotes[name] = {**kept, **{key: value for key, value in values.items()
                                    if not (key == SECRET_KEY and value in ("", None))}}
    plan = body.get("plan")
    if plan is None:
        plan = [] if replace else list(current.rule_texts)
    return {"remotes": remotes, "plan": plan}


def checked(account: str, document: Mapping[str, Any], settings: Settings, *,
            admin: bool) -> Storage:
    """The `proposed` document parsed and checked (400s naming what is wrong)."""
    remotes, rules = document["remotes"], document["plan"]
    if len(remotes) > MAX_REMOTES:
        raise BadRequest(f"an account has at most {MAX_REMOTES} remotes")
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise BadRequest(f"plan must be a list of at most {MAX_RULES} rules")
    parsed = {}
    for name, values in remotes.items():
        remote = _remote_settings(name, values)
        _check_remote(name, remote, settings, admin=admin)
        parsed[name] = remote
    plan = tuple(_rule(account, number, rule) for number, rule in enumerate(rules, 1))
    for number, rule in enumerate(plan, 1):
        if rule.remote not in parsed and rule.remote not in settings.named_remotes():
            names = [*parsed, *settings.named_remotes()]
            raise BadRequest(f"plan[{number}].remote = {rule.remote!r}: no such remote "
                             f"(the account's or the config's: {', '.join(names)})")
    return Storage(parsed, plan, tuple(rules))


def _remote_settings(name: Any, values: Any) -> RemoteSettings:
    try:
        parse_remote_name(name)
    except ValueError as exc:
        raise BadRequest(f"remote name {name!r}: expected {exc}") from None
    if not isinstance(values, Mapping):
        raise BadRequest(f"remotes.{name} must be an object of keys")
    for key, value in values.items():
        if key not in REMOTE_KEYS:
            raise BadRequest(f"remotes.{name}.{key} is not a remote key (known: "
                             f"{', '.join(REMOTE_KEYS)})")
        if not isinstance(value, str):  # checked here: a parser's error would show the value
            raise BadRequest(f"remotes.{name}.{key} must be a string")
    try:
        remote: RemoteSettings = parse_section(
            RemoteSettings, {k: v.strip() for k, v in values.items()}, f"remotes.{name}",
            _ORIGIN)
    except ConfigError as exc:
        raise BadRequest(exc.detail) from None
    return remote


def _check_remote(name: str, remote: RemoteSettings, settings: Settings, *,
                  admin: bool) -> None:
    where = f"remotes.{name}"
    if not remote.url.startswith("s3://") or remote.url == "s3://":
        raise BadRequest(f"{where}.url: an account's remote is an s3://bucket or "
                         "s3://bucket/prefix URL")
    endpoint = remote.endpoint_url.rstrip("/")
    if endpoint:
        if not endpoint.startswith(("https://", "http://")):
            raise BadRequest(f"{where}.endpoint_url: an http(s) URL, or empty for AWS")
        allowed = settings.storage.account_endpoints
        if not admin and not any(endpoint == url or endpoint.startswith(url + "/")
                                 for url in allowed):
            raise BadRequest(f"{where}.endpoint_url: an account may name only AWS (empty) or "
                             "an endpoint the operator allows (storage.account_endpoints: "
                             f"{', '.join(allowed) or 'none'})")
    if not admin and not (remote.access_key_id and remote.secret_access_key):
        raise BadRequest(f"{where}: an account's remote needs its own access_key_id and "
                         "secret_access_key")


def _rule(account: str, number: int, raw: Any) -> PlanRule:
    if not isinstance(raw, Mapping):
        raise BadRequest(f"plan[{number}] must be an object of keys")
    unknown = sorted(set(raw) - set(RULE_KEYS))
    if unknown:
        raise BadRequest(f"plan[{number}].{unknown[0]} is not a rule key an account may set "
                         f"(known: {', '.join(RULE_KEYS)})")
    try:
        rule: PlanRule = parse_section(PlanRule, raw, f"plan[{number}]", _ORIGIN)
    except ConfigError as exc:
        raise BadRequest(exc.detail) from None
    return rule


def _as_texts(remote: RemoteSettings) -> dict[str, str]:
    return {key: getattr(remote, key) for key in REMOTE_KEYS if getattr(remote, key)}


# -- comparing -------------------------------------------------------------------------------


def _own(account: str, settings: Settings) -> dict[str, RemoteSettings]:
    mine = account_remote(account, "")
    return {name: remote for name, remote in settings.account_remotes.items()
            if name.startswith(mine)}


def changed(account: str, before: Settings, after: Settings) -> list[str]:
    """The account's remotes that are new or whose settings change (to be probed)."""
    old, new = _own(account, before), _own(account, after)
    return [name for name, remote in new.items() if old.get(name) != remote]


def gone(account: str, before: Settings, after: Settings) -> list[str]:
    new = _own(account, after)
    return [name for name in _own(account, before) if name not in new]


def moved(account: str, before: Settings, after: Settings) -> list[str]:
    """The account's remotes that go, or whose objects would be elsewhere."""
    old, new = _own(account, before), _own(account, after)
    return [name for name, remote in old.items() if name not in new or any(
        getattr(remote, key) != getattr(new[name], key) for key in LOCATION_KEYS)]


def refuse_stranding(tx: Tables, account: str, before: Settings, after: Settings) -> None:
    """Removing or moving a remote would make every file only it holds unreadable, and send
    its pending remote deletes to the wrong store: refused (409) while there are any."""
    for name in moved(account, before, after):
        files = tx.counters.get(remote_counter_names(name).files)
        deletes = tx.queue.deletes_to(name)
        if files or deletes:
            what = f"{files:,} files in the cloud" if files else f"{deletes:,} remote deletes"
            short = name.partition(":")[2]
            where = display_url(name, before.named_remotes()[name], before.data_dir)
            raise Conflict(f"{what} at the remote {short!r} ({where}) would "
                           "become unreachable: move them to another remote or to local "
                           f"first (and let remote deletes finish), then change or remove "
                           f"remotes.{short}")


def encoded(document: Mapping[str, Any], storage: Storage, box: SecretBox) -> tuple[str, str]:
    """(remotes, plan) as the registry keeps them: JSON, the secrets encrypted."""
    remotes = {name: {key: box.encrypt(value) if key == SECRET_KEY else value
                      for key, value in values.items() if value}
               for name, values in document["remotes"].items()}
    return json.dumps(remotes, sort_keys=True), json.dumps(list(storage.rule_texts))


# -- showing -----------------------------------------------------------------------------------


def public(tx: Tables, account: str, settings: Settings) -> dict[str, Any]:
    """The account's storage as the API shows it: no secret, only whether one is set; each
    remote with the files and bytes the registry records there."""
    row = tx.account_storage.get(account)
    storage = _decoded(account, *row, None) if row else Storage()
    secrets = {name for name, values in json.loads(row[0]).items()
               if values.get(SECRET_KEY)} if row else set()
    counters = tx.counters.with_prefix(f"files.remote.{account}:", f"bytes.remote.{account}:")
    remotes = {}
    for name, remote in storage.remotes.items():
        recorded = account_remote(account, name)
        names = remote_counter_names(recorded)
        remotes[name] = {
            **{key: getattr(remote, key) for key in REMOTE_KEYS if key != SECRET_KEY},
            "secret_access_key_set": name in secrets,
            "display_url": display_url(recorded, remote, settings.data_dir),
            "files": counters.get(names.files, 0), "bytes": counters.get(names.bytes, 0)}
    return {"account": account, "remotes": remotes, "plan": list(storage.rule_texts)}
