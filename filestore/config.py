"""Settings: TOML file, then `FILESTORE_SECTION__KEY` environment overrides, validated at start.

Every key has a type, a default and a parser. A bad value is rejected with one line that names the
key, the value and what was expected, so an operator never has to read a traceback to fix a typo.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .values import (
    int_between,
    one_of,
    parse_bandwidth,
    parse_bool,
    parse_dirs,
    parse_domain,
    parse_duration,
    parse_duration_or_never,
    parse_header_value,
    parse_header_value_or_unset,
    parse_hours,
    parse_listen,
    parse_node_name,
    parse_path,
    parse_path_prefix,
    parse_region,
    parse_remote_name,
    parse_size,
    parse_str,
    parse_type_glob,
    parse_url_list,
    parse_url_or_empty,
    parse_url_prefix,
    size_at_least,
)

ENV_PREFIX = "FILESTORE_"
CONFIG_ENV = "FILESTORE_CONFIG"

def _field(default: Any, parse: Callable[[Any], Any], *, secret: bool = False) -> Any:
    # Secrets stay out of repr() so they never reach a log line or an error message.
    return dataclasses.field(default=default, metadata={"parse": parse}, repr=not secret)


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    host: str = _field("127.0.0.1", parse_str)
    port: int = _field(8080, int_between(0, 65535))
    workers: int = _field(1, int_between(1, 64))
    # Behind nginx: the internal location (e.g. "/_filestore/") that maps files/ and cache/ of
    # the data directory; local hits are then answered with X-Accel-Redirect. Empty: off.
    accel_redirect: str = _field("", parse_url_prefix)
    # Behind nginx: nginx answers public hits itself, from DATA/static (a tree of hard links to
    # the current versions whose headers nginx gives exactly as filestore would, `static.py`),
    # and logs each to DATA/hits.log, which filestore counts (`hitlog.py`). Single node only.
    static_hits: bool = _field(False, parse_bool)
    # "json": one JSON line per request on stdout (method, path, status, bytes, duration);
    # "": none. The query string is never logged: a signed URL's signature is a credential.
    access_log: str = _field("", one_of("", "json"))
    # Cache-Control sent with every file's GET, HEAD and 304 (a plan rule may set its own), so a
    # CDN or nginx proxy_cache in front knows how long it may keep a file. Empty: none.
    cache_control: str = _field("", parse_header_value)


@dataclasses.dataclass(frozen=True)
class RegistrySettings:
    # Empty: SQLite in the data directory (the embedded default). Else
    # "postgresql://user:password@host:port/database": a PostgreSQL registry that several
    # filestore nodes share (registry/postgres/).
    url: str = _field("", parse_str, secret=True)
    # Connections each process keeps to PostgreSQL (psycopg-pool); SQLite ignores it.
    pool_size: int = _field(4, int_between(1, 64))


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    # This node's name, unique among the nodes sharing a registry: the registry records it as
    # the holder of the files PUT here (cluster.py). Empty: the host name.
    node: str = _field("", parse_node_name)
    # The URL the other nodes reach this one on ("http://10.0.0.5:8080"). Empty:
    # http://server.host:server.port.
    advertise: str = _field("", parse_url_or_empty)
    # Shared by every node: node-to-node calls are signed with it (HMAC-SHA256). Empty: no
    # peer may read this node's files (and this node reads none of theirs).
    secret: str = _field("", parse_str, secret=True)
    # A node whose last heartbeat is older than this is shown dead, and not asked for bytes.
    dead_after: float = _field(30.0, parse_duration)
    # 1: a PUT is acknowledged only once another live node holds its bytes too (fsync'd), so
    # losing a node before an upload loses nothing acknowledged; 0: the receiving node alone.
    replicas: int = _field(0, int_between(0, 1))


@dataclasses.dataclass(frozen=True)
class S3Settings:
    # The S3-compatible endpoint (`s3api/`): 0 is off; else it answers on server.host:port,
    # in the same worker processes as the files.
    port: int = _field(0, int_between(0, 65535))
    # The region signatures must name (their credential scope), as a bucket's region would.
    region: str = _field("us-east-1", parse_region)
    # Virtual-hosted addressing: a request for Host "BUCKET.DOMAIN" names the bucket in its
    # host ("s3.example.com"); empty: path-style alone (always accepted).
    domain: str = _field("", parse_domain)
    # Unfinished multipart uploads (their parts on disk) are removed this long after they began.
    multipart_expiry: float = _field(7 * 86400.0, parse_duration)


@dataclasses.dataclass(frozen=True)
class LogSettings:
    # What the `filestore` logger writes to stderr: "debug", "info", "warning" or "error".
    level: str = _field("info", one_of("debug", "info", "warning", "error"))
    # "text": one line as people read it; "json": one JSON object a line (time, level, event,
    # path, and the event's figures).
    format: str = _field("text", one_of("text", "json"))


@dataclasses.dataclass(frozen=True)
class AdminSettings:
    # "HOST:PORT": the admin page and its API answer only there (a listener of their own), and
    # not on server.host:server.port, so uploaded files never share its origin. Empty: both
    # on the one listener.
    listen: str = _field("", parse_listen)
    # True: the session cookie is always marked Secure (behind a TLS proxy that does not say
    # X-Forwarded-Proto); false: when the request came over https.
    cookie_secure: bool = _field(False, parse_bool)


@dataclasses.dataclass(frozen=True)
class SigningSettings:
    # The longest a signed URL may be valid: `filestore sign` and the admin API refuse more.
    max_expiry: float = _field(7 * 86400.0, parse_duration)


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    data_dir: str = _field("./filestore-data", parse_path)
    max_upload_size: int = _field(5 * 1024**3, parse_size)
    # PUTs are refused with 507 when the data directory's disk has less than this free.
    min_free: int = _field(1024**3, parse_size)
    # Directories a `file://` remote saved from the admin page may point into (the config file
    # may name any): empty, the admin page can set `s3://` remotes only.
    allowed_file_roots: tuple[str, ...] = _field((), parse_dirs)
    # The S3 endpoints (URL prefixes, e.g. "https://s3.eu-central-1.wasabisys.com") an account
    # may name for a remote of its own: empty, AWS only. (The administrator may name any.)
    account_endpoints: tuple[str, ...] = _field((), parse_url_list)


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    # Empty: generated on first start and kept (mode 0600) in the data directory.
    token: str = _field("", parse_str, secret=True)
    public_read: bool = _field(True, parse_bool)


@dataclasses.dataclass(frozen=True)
class UploadSettings:
    enabled: bool = _field(True, parse_bool)
    # Cool-down before a file is uploaded; a re-PUT restarts it. 0 uploads at once.
    delay: float = _field(600.0, parse_duration)
    concurrency: int = _field(4, int_between(1, 256))
    max_attempts: int = _field(20, int_between(1, 1000))
    # Backup mode: the local copy stays after the upload instead of moving to the cache.
    keep_local: bool = _field(False, parse_bool)
    # How long after a DELETE the remote copy goes; None ("never") keeps remote copies.
    delete_delay: float | None = _field(0.0, parse_duration_or_never)
    # Retry backoff: retry_base doubled per attempt, with jitter, capped at retry_max.
    retry_base: float = _field(1.0, parse_duration)
    retry_max: float = _field(300.0, parse_duration)
    # Bytes per second all uploads of this node send together, 0: no cap (see bandwidth.py).
    bandwidth: int = _field(0, parse_bandwidth)
    # When the queue works: windows of local time, "01:00-06:00" or "22:00-02:00, 12:00-13:00";
    # outside them uploads and remote deletes wait. Empty: always (see upload_window.py).
    hours: str = _field("", parse_hours)


@dataclasses.dataclass(frozen=True)
class RemoteSettings:
    # Empty: a "remote" folder inside data_dir (the embedded default). Else "file:///srv/cold",
    # "file://./relative/dir" or "s3://bucket/prefix".
    url: str = _field("", parse_str)
    endpoint_url: str = _field("", parse_str)  # S3-compatible endpoint; empty for AWS
    region: str = _field("", parse_str)
    access_key_id: str = _field("", parse_str, secret=True)  # empty: the AWS credential chain
    secret_access_key: str = _field("", parse_str, secret=True)
    # "auto": path-style for custom endpoints, virtual-hosted for AWS; or "path" / "virtual".
    addressing_style: str = _field("auto", one_of("auto", "path", "virtual"))
    multipart_threshold: int = _field(64 * 1024**2, parse_size)
    part_size: int = _field(16 * 1024**2, size_at_least(5 * 1024**2, "5MiB, S3's smallest part"))
    max_connections: int = _field(32, int_between(1, 1024))


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    # The cache area (bytes of uploaded files) is kept below max_size, and evicts before the
    # data directory's disk falls below min_free.
    max_size: int = _field(10 * 1024**3, parse_size)
    min_free: int = _field(2 * 1024**3, parse_size)
    # Entries drawn per eviction; the least recently read of them goes (sampled LRU).
    sample: int = _field(5, int_between(1, 64))
    # A download into the cache that delivers nothing for this long fails (503 to a client
    # still waiting for its headers).
    fill_timeout: float = _field(60.0, parse_duration)
    # Bytes per second all cache fills of this node download together, 0: no cap.
    download_bandwidth: int = _field(0, parse_bandwidth)


# The remote `[remote]` describes; files no plan rule routes elsewhere go there.
DEFAULT_REMOTE = "default"
@dataclasses.dataclass(frozen=True)
class PlanRule:
    """A `[[plan]]` rule: files whose path starts with `prefix` and whose content type matches
    `content_type` (either may be empty: any) go to `remote`; the first matching rule wins."""
    prefix: str = _field("", parse_path_prefix)
    content_type: str = _field("", parse_type_glob)
    remote: str = _field(DEFAULT_REMOTE, parse_remote_name)
    # False: matching files stay local, never uploaded.
    upload: bool = _field(True, parse_bool)
    # None: the [upload] section's value.
    upload_delay: float | None = _field(None, parse_duration)
    keep_local: bool | None = _field(None, parse_bool)
    # True: files of active types (HTML, SVG, XML, JavaScript) are served inline (still under
    # a sandboxing Content-Security-Policy) instead of as attachments.
    inline: bool = _field(False, parse_bool)
    # Cache-Control for matching files; unset: server.cache_control.
    cache_control: str | None = _field(None, parse_header_value_or_unset)


@dataclasses.dataclass(frozen=True)
class Settings:
    server: ServerSettings = dataclasses.field(default_factory=ServerSettings)
    storage: StorageSettings = dataclasses.field(default_factory=StorageSettings)
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)
    admin: AdminSettings = dataclasses.field(default_factory=AdminSettings)
    signing: SigningSettings = dataclasses.field(default_factory=SigningSettings)
    upload: UploadSettings = dataclasses.field(default_factory=UploadSettings)
    # The remote named "default" ([remote], or [remotes.default]).
    remote: RemoteSettings = dataclasses.field(default_factory=RemoteSettings)
    cache: CacheSettings = dataclasses.field(default_factory=CacheSettings)
    log: LogSettings = dataclasses.field(default_factory=LogSettings)
    s3: S3Settings = dataclasses.field(default_factory=S3Settings)
    registry: RegistrySettings = dataclasses.field(default_factory=RegistrySettings)
    cluster: ClusterSettings = dataclasses.field(default_factory=ClusterSettings)
    # The other named remotes ([remotes.NAME]) and the plan's rules ([[plan]]), in file order.
    remotes: dict[str, RemoteSettings] = dataclasses.field(default_factory=dict)
    plan: tuple[PlanRule, ...] = ()
    # What accounts configured for themselves (`account_storage.py`, kept in the registry):
    # their remotes, named "ACCOUNT:NAME", and their rules by account, each rule's prefix
    # relative to "ACCOUNT/" and its remote a recorded name. An account's rule decides where
    # its matching files are stored before the plan's rules do.
    account_remotes: dict[str, RemoteSettings] = dataclasses.field(default_factory=dict)
    account_plan: dict[str, tuple[PlanRule, ...]] = dataclasses.field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir).expanduser().absolute()

    @property
    def node(self) -> str:
        """This node's name: `cluster.node`, or the host name."""
        return self.cluster.node or socket.gethostname()

    @property
    def advertise(self) -> str:
        """The URL this node's peers reach it on."""
        host = self.server.host if ":" not in self.server.host else f"[{self.server.host}]"
        return self.cluster.advertise or f"http://{host}:{self.server.port}"

    def named_remotes(self) -> dict[str, RemoteSettings]:
        """Every remote by name: "default" first, the config's, then the accounts' own."""
        return {DEFAULT_REMOTE: self.remote, **self.remotes, **self.account_remotes}


# What no config file sets: the accounts' own storage, laid over from the registry.
FROM_THE_REGISTRY = ("account_remotes", "account_plan")
# Section name -> its dataclass; the order is the order of config.example.toml. The named
# remotes and the plan are tables of their own kind (see `_named_remotes`, `_plan`).
SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Settings)
    if f.name not in ("remotes", "plan", *FROM_THE_REGISTRY)
}
REMOTES_SECTION = "remotes"
PLAN_SECTION = "plan"


def _build_section(cls: type, raw: Mapping[str, tuple[Any, str]], section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, (value, origin) in raw.items():
        if key not in known:
            expected = ", ".join(known)
            raise ConfigError(f"{origin}: unknown key {section}.{key} (known keys: {expected})")
        try:
            values[key] = known[key].metadata["parse"](value)
        except ValueError as exc:
            raise ConfigError(f"{origin}: {section}.{key} = {value!r}: expected {exc}") from None
    return cls(**values)


def parse_section(cls: type, values: Mapping[str, Any], section: str, origin: str) -> Any:
    """One section's dataclass from raw values, each parsed and checked as the config file's
    own: an unknown key or a bad value is a `ConfigError` naming `section.key`."""
    return _build_section(cls, {key: (value, origin) for key, value in values.items()}, section)


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from `path` (or `$FILESTORE_CONFIG`), overridden by `FILESTORE_SECTION__KEY`.

    No file at all gives the embedded default, which runs on a fresh machine as it is.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    raw: dict[str, Any] = {}
    origin = "config"
    if path is not None:
        origin = str(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"config file is a directory: {path}") from None
        except PermissionError:
            raise ConfigError(f"config file not readable: {path}") from None
        except OSError as exc:  # below a file, too long a name, ...
            raise ConfigError(f"config file not readable: {path} ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: invalid TOML: not UTF-8 text") from None

    merged: dict[str, dict[str, tuple[Any, str]]] = {}
    named: dict[str, dict[str, tuple[Any, str]]] = {}
    rules: list[dict[str, tuple[Any, str]]] = []
    for name, table in raw.items():
        if name == REMOTES_SECTION:
            for remote, values in _tables(table, origin, "[remotes.NAME]").items():
                named[_remote_name(remote, origin)] = {k: (v, origin) for k, v in values.items()}
        elif name == PLAN_SECTION:
            if not isinstance(table, list) or not all(isinstance(t, dict) for t in table):
                raise ConfigError(f"{origin}: plan must be [[plan]] tables (an array of them)")
            rules = [{k: (v, origin) for k, v in rule.items()} for rule in table]
        elif name not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section [{name}] (known: "
                              f"{', '.join([*SECTIONS, REMOTES_SECTION, PLAN_SECTION])})")
        elif not isinstance(table, dict):
            raise ConfigError(f"{origin}: {name} must be a [{name}] table, not a value")
        else:
            merged[name] = {key: (value, origin) for key, value in table.items()}
    if DEFAULT_REMOTE in named:
        if "remote" in merged:
            raise ConfigError(f"{origin}: the remote named {DEFAULT_REMOTE!r} is given twice, "
                              f"as [remote] and as [remotes.{DEFAULT_REMOTE}]: keep one")
        merged["remote"] = named.pop(DEFAULT_REMOTE)

    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        section, sep, key = var[len(ENV_PREFIX):].lower().partition("__")
        if not sep:
            continue  # not a FILESTORE_SECTION__KEY override
        if section == REMOTES_SECTION:  # FILESTORE_REMOTES__NAME__KEY
            remote, sep, key = key.partition("__")
            if not sep:
                raise ConfigError(f"environment {var}: expected FILESTORE_REMOTES__NAME__KEY")
            remote = _remote_name(remote, f"environment {var}")
            target = merged.setdefault("remote", {}) if remote == DEFAULT_REMOTE \
                else named.setdefault(remote, {})
            target[key] = (value, f"environment {var}")
            continue
        if section not in SECTIONS:
            raise ConfigError(f"environment {var}: unknown section {section!r}")
        merged.setdefault(section, {})[key] = (value, f"environment {var}")

    settings = Settings(
        **{name: _build_section(cls, merged.get(name, {}), name) for name, cls in SECTIONS.items()},
        remotes={name: _build_section(RemoteSettings, values, f"remotes.{name}")
                 for name, values in named.items()},
        plan=tuple(_build_section(PlanRule, rule, f"plan[{number}]")
                   for number, rule in enumerate(rules, 1)),
    )
    check_plan(settings, origin)
    if settings.server.static_hits and settings.registry.url:
        raise ConfigError(f"{origin}: server.static_hits needs a single node (an empty "
                          "registry.url): a change on another node could not unlink this "
                          "node's links before it is answered")
    return settings


def _tables(value: Any, origin: str, shape: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"{origin}: expected {shape} tables")
    return value


def _remote_name(name: str, origin: str) -> str:
    try:
        return parse_remote_name(name)
    except ValueError as exc:
        raise ConfigError(f"{origin}: remote name {name!r}: expected {exc}") from None


def check_plan(settings: Settings, origin: str) -> None:
    """Every rule names a configured remote."""
    names = settings.named_remotes()
    for number, rule in enumerate(settings.plan, 1):
        if rule.remote not in names:
            raise ConfigError(f"{origin}: plan[{number}].remote = {rule.remote!r} is not a "
                              f"configured remote (configured: {', '.join(names)})")


def override(settings: Settings, changes: Mapping[str, Mapping[str, Any]],
             origin: str) -> Settings:
    """`settings` with `changes` ({section: {key: value}}) parsed and laid over it, checked
    exactly as the config file's own values are."""
    sections: dict[str, Any] = {}
    remotes = dict(settings.remotes)
    for name, values in changes.items():
        remote = name.removeprefix(REMOTES_SECTION + ".") if name != REMOTES_SECTION else name
        if remote != name and remote not in remotes:
            raise ConfigError(f"{origin}: no remote named {remote!r} is configured")
        if remote == name and name not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
        cls = RemoteSettings if remote != name else SECTIONS[name]
        parsed = _build_section(cls, {k: (v, origin) for k, v in values.items()}, name)
        given = {key: getattr(parsed, key) for key in values}
        if remote != name:
            remotes[remote] = dataclasses.replace(remotes[remote], **given)
        else:
            sections[name] = dataclasses.replace(getattr(settings, name), **given)
    return dataclasses.replace(settings, **sections, remotes=remotes)


def section_class(name: str) -> type:
    """The dataclass of a section name as `override` takes it ("upload", "remotes.archive")."""
    return RemoteSettings if name.startswith(REMOTES_SECTION + ".") else SECTIONS[name]
