"""Settings: TOML file, then `FILESTORE_SECTION__KEY` environment overrides, validated at start.

Every key has a type, a default and a parser. A bad value is rejected with one line that names the
key, the value and what was expected, so an operator never has to read a traceback to fix a typo.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "FILESTORE_"
CONFIG_ENV = "FILESTORE_CONFIG"

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*\Z")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")


MAX_SIZE = 2**60  # 1 EiB: beyond any disk, and far from float trouble
MAX_DURATION = 10 * 365 * 86400.0  # ten years


def parse_size(value: Any) -> int:
    """`"10GiB"`, `"512MB"`, `"0"` or a plain integer number of bytes."""
    if isinstance(value, bool):
        raise ValueError("a size like \"512MiB\" or \"10GiB\"")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(
                "a size like \"512MiB\" or \"10GiB\" (units B, KB, MB, GB, TB, KiB..TiB)")
        number = float(match.group(1)) * _SIZE_UNITS[unit]
        size = int(number) if number <= MAX_SIZE else MAX_SIZE + 1
    if not 0 <= size <= MAX_SIZE:
        raise ValueError("a size from 0 bytes to 1 EiB")
    return size


def parse_duration(value: Any) -> float:
    """`"10m"`, `"1h30m"`, `"500ms"`, `"0s"` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like \"30s\", \"10m\" or \"1h\"")
    if isinstance(value, int | float):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    else:
        text = str(value).strip().lower()
        parts = _DURATION_PART_RE.findall(text)
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            seconds = float(text)
        elif text and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        else:
            raise ValueError(
                "a duration like \"30s\", \"10m\", \"1h30m\" (units ms, s, m, h, d)")
    if not 0 <= seconds <= MAX_DURATION:
        raise ValueError("a duration from 0 seconds to ten years")
    return seconds


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("true or false")


def _int_between(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"a whole number from {low} to {high}")
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise ValueError(f"a whole number from {low} to {high}") from None
        if not low <= number <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return number

    return parse


def _size_at_least(low: int, why: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        size = parse_size(value)
        if size < low:
            raise ValueError(f"a size of at least {why}")
        return size

    return parse


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(f'"{c}"' for c in choices))
        return str(value)

    return parse


def parse_path(value: Any) -> str:
    """A directory: '~' and '~user' are expanded now, so one that cannot be is a config error."""
    text = parse_str(value)
    if "\0" in text:
        raise ValueError("a path without NUL characters")
    try:
        return str(Path(text).expanduser()) if text.startswith("~") else text
    except RuntimeError:
        raise ValueError("a path whose '~user' names a user with a home directory") from None


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def parse_dirs(value: Any) -> tuple[str, ...]:
    """Absolute directories: a TOML array of strings, or one string of them separated by ":"
    (as an environment variable gives them)."""
    items = value.split(":") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError('a list of absolute directories like ["/srv/cold"]')
    dirs = tuple(parse_path(item) for item in items if item)
    if not all(os.path.isabs(d) for d in dirs):
        raise ValueError('a list of absolute directories like ["/srv/cold"]')
    return dirs


def parse_listen(value: Any) -> str:
    """Empty, or "HOST:PORT" (an IPv6 host in brackets: "[::1]:8081")."""
    text = parse_str(value).strip()
    if not text:
        return text
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}", text) \
            or not 0 < int(text.rpartition(":")[2]) <= 65535:
        raise ValueError('"" or an address like "127.0.0.1:8081"')
    return text


def _field(default: Any, parse: Callable[[Any], Any], *, secret: bool = False) -> Any:
    # Secrets stay out of repr() so they never reach a log line or an error message.
    return dataclasses.field(default=default, metadata={"parse": parse}, repr=not secret)


# A URL path of segments of RFC 3986 path characters without "%": it goes into X-Accel-Redirect
# as it is, so it must need no encoding, and "." / ".." segments would make nginx refuse it.
_URL_PREFIX_RE = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]+/)*")


def parse_url_prefix(value: Any) -> str:
    """Empty, or an absolute URL path that starts and ends with "/" (an nginx location)."""
    text = parse_str(value)
    segments = text.strip("/").split("/")
    if text and (not _URL_PREFIX_RE.fullmatch(text) or "." in segments or ".." in segments):
        raise ValueError('"" or a URL path that starts and ends with "/", like "/_filestore/"')
    return text


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    host: str = _field("127.0.0.1", parse_str)
    port: int = _field(8080, _int_between(0, 65535))
    workers: int = _field(1, _int_between(1, 64))
    # Behind nginx: the internal location (e.g. "/_filestore/") that maps files/ and cache/ of
    # the data directory; local hits are then answered with X-Accel-Redirect. Empty: off.
    accel_redirect: str = _field("", parse_url_prefix)
    # "json": one JSON line per request on stdout (method, path, status, bytes, duration);
    # "": none. The query string is never logged: a signed URL's signature is a credential.
    access_log: str = _field("", _one_of("", "json"))


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


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    # Empty: generated on first start and kept (mode 0600) in the data directory.
    token: str = _field("", parse_str, secret=True)
    public_read: bool = _field(True, parse_bool)


def parse_duration_or_never(value: Any) -> float | None:
    """A duration, or "never" (None)."""
    if isinstance(value, str) and value.strip().lower() == "never":
        return None
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError("a duration like \"0s\" or \"1h\", or \"never\"") from None


@dataclasses.dataclass(frozen=True)
class UploadSettings:
    enabled: bool = _field(True, parse_bool)
    # Cool-down before a file is uploaded; a re-PUT restarts it. 0 uploads at once.
    delay: float = _field(600.0, parse_duration)
    concurrency: int = _field(4, _int_between(1, 256))
    max_attempts: int = _field(20, _int_between(1, 1000))
    # Backup mode: the local copy stays after the upload instead of moving to the cache.
    keep_local: bool = _field(False, parse_bool)
    # How long after a DELETE the remote copy goes; None ("never") keeps remote copies.
    delete_delay: float | None = _field(0.0, parse_duration_or_never)
    # Retry backoff: retry_base doubled per attempt, with jitter, capped at retry_max.
    retry_base: float = _field(1.0, parse_duration)
    retry_max: float = _field(300.0, parse_duration)


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
    addressing_style: str = _field("auto", _one_of("auto", "path", "virtual"))
    multipart_threshold: int = _field(64 * 1024**2, parse_size)
    part_size: int = _field(16 * 1024**2, _size_at_least(5 * 1024**2, "5MiB, S3's smallest part"))
    max_connections: int = _field(32, _int_between(1, 1024))


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    # The cache area (bytes of uploaded files) is kept below max_size, and evicts before the
    # data directory's disk falls below min_free.
    max_size: int = _field(10 * 1024**3, parse_size)
    min_free: int = _field(2 * 1024**3, parse_size)
    # Entries drawn per eviction; the least recently read of them goes (sampled LRU).
    sample: int = _field(5, _int_between(1, 64))
    # A download into the cache that delivers nothing for this long fails (503 to a client
    # still waiting for its headers).
    fill_timeout: float = _field(60.0, parse_duration)


# The remote `[remote]` describes; files no plan rule routes elsewhere go there.
DEFAULT_REMOTE = "default"
# Remote names are recorded per file and appear in env names (FILESTORE_REMOTES__NAME__KEY),
# metric labels and URLs: lower case, digits, and single "-" or "_" between them.
_REMOTE_NAME_RE = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
MAX_REMOTE_NAME = 32


def parse_remote_name(value: Any) -> str:
    text = parse_str(value)
    if len(text) > MAX_REMOTE_NAME or not _REMOTE_NAME_RE.fullmatch(text):
        raise ValueError(f"a remote name of at most {MAX_REMOTE_NAME} characters: lower-case "
                         "letters and digits, with single - or _ between them")
    return text


def parse_path_prefix(value: Any) -> str:
    """A plan rule's path prefix, compared with a file's normalised path as text: so it never
    starts with "/" and has no "." or ".." segments, or it could never match."""
    text = parse_str(value)
    segments = text.split("/")
    if text.startswith("/") or "\0" in text or any(s in (".", "..") for s in segments) \
            or "//" in text:
        raise ValueError('a path prefix like "recordings/" (no leading "/", no "." or ".." '
                         "segments)")
    return text


def parse_type_glob(value: Any) -> str:
    """A content-type glob like "audio/*" (fnmatch, case-insensitive; parameters ignored)."""
    text = parse_str(value).strip().lower()
    if text and not re.fullmatch(r"[a-z0-9*?!.+\[\]_-]+/[a-z0-9*?!.+\[\]_-]+", text):
        raise ValueError('a content-type glob like "audio/*" or "application/pdf"')
    return text


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
    # The other named remotes ([remotes.NAME]) and the plan's rules ([[plan]]), in file order.
    remotes: dict[str, RemoteSettings] = dataclasses.field(default_factory=dict)
    plan: tuple[PlanRule, ...] = ()

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir).expanduser().absolute()

    def named_remotes(self) -> dict[str, RemoteSettings]:
        """Every configured remote by name, "default" first."""
        return {DEFAULT_REMOTE: self.remote, **self.remotes}


# Section name -> its dataclass; the order is the order of config.example.toml. The named
# remotes and the plan are tables of their own kind (see `_named_remotes`, `_plan`).
SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Settings) if f.name not in ("remotes", "plan")
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


def value_text(value: Any, kind: Callable[[Any], Any]) -> str:
    """A parsed value as a config file would hold it, for a form field: `kind` is the key's
    parser (a duration prints as "10m", never as "600.0")."""
    if value is None:
        return "never"
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind in (parse_duration, parse_duration_or_never):
        seconds = float(value)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if seconds >= size and seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        return f"{int(seconds * 1000)}ms" if seconds < 1 and seconds else f"{seconds:g}s"
    return str(value)
