"""The `filestore` log: `[log] level` and `format`, set up once per process, and its events.

Every action that changes or risks data is logged once, where it happens, as an *event*: a
stable name ("upload.failed"), the file's path when there is one, and the event's figures
(`event(log, "upload.failed", "...", path=p, attempt=2, ...)`). The text format writes one line
as people read it (`time level event: message`); the JSON format one object a line, with the
time, level, logger, event, message, path and figures as keys (docs/deploy.md lists the events).
Lines that are no event (an unexpected error and its traceback, a note) have the event `log`.

Secrets are never passed to a log line; as a safety net, a figure whose name says it is one
(secret, token, password, ...) is written as `[redacted]`. The JSON access log
(`server.access_log`, metrics.py) is a logger of its own on stdout, and stays as it is; uvicorn's
own lines stay at `warning` (in the JSON format they are JSON objects too, where this process
set up its log after uvicorn did); psycopg's pool's at `error`.

A background loop says an outage (the registry's server away) once and once more when it is over
(`Failing`), not with a traceback a round.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from .config import Settings

LOGGER = "filestore"
REDACTED = "[redacted]"
# The keys of every JSON line before the event's figures (which never replace them).
FIXED = ("time", "level", "logger", "event", "message", "path")
# Figure names that say their value is a credential: never written.
_SECRET_NAME = re.compile(r"secret|token|passw|credential|authorization|api_?key|signature",
                          re.IGNORECASE)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """The figures with the value of every secret-named one replaced."""
    return {key: REDACTED if _SECRET_NAME.search(key) else value for key, value in fields.items()}


def event(logger: logging.Logger, name: str, message: str, /, *, level: int = logging.INFO,
          path: str | None = None, exc_info: BaseException | None = None,
          **figures: Any) -> None:
    """Log the event `name`. `message` is a `str.format` template over `path` and the figures
    ("uploaded {path!r} ({size:,} bytes)"); the figures are also the JSON line's keys."""
    if not logger.isEnabledFor(level):
        return
    fields = redact(figures)
    try:
        text = message.format(path=path, **fields)
    except (KeyError, IndexError, ValueError, TypeError):
        text = message  # a template that does not fit its figures must not lose the event
    extra = {"event": name, "fields": {"path": path, **fields} if path is not None else fields}
    logger.log(level, "%s", text, exc_info=exc_info, extra=extra, stacklevel=2)


class Failing:
    """A background loop's failures, said once per run of them: a warning (the error's type and
    message, no traceback) at the first round that fails, nothing while the next ones fail too,
    and one info line ("... resumed") at the first round that works again. A PostgreSQL outage
    thus costs each loop two lines, however long it lasts, never a traceback a round."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what  # "cache upkeep": what failed and resumed
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        if not self.failing:
            detail = getattr(exc, "detail", "") or str(exc)
            self.logger.warning("%s failed: %s: %s; it tries again by itself", self.what,
                                type(exc).__name__, detail, stacklevel=2)
        self.failing = True

    def ok(self) -> None:
        if self.failing:
            self.logger.info("%s resumed", self.what, stacklevel=2)
        self.failing = False


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """`2025-01-31T12:00:00.000+00:00 WARNING upload.failed: upload of 'a.txt' failed ...`"""

    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, "event", None) or record.name
        line = f"{_time(record)} {record.levelname} {name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: the fixed keys, then the event's figures (secret ones redacted,
    again, for lines logged without `event`)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _time(record), "level": record.levelname.lower(), "logger": record.name,
            "event": getattr(record, "event", None) or "log", "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in redact(fields).items():
                out.setdefault(str(key), value)
        if record.exc_info:
            out.setdefault("traceback", self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class StderrHandler(logging.Handler):
    """Writes to the `sys.stderr` of the moment (a test runner may swap it), a line a write."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def formatter(format_name: str) -> logging.Formatter:
    return JsonFormatter() if format_name == "json" else TextFormatter()


def configure(settings: Settings, floor: int = logging.NOTSET) -> logging.Logger:
    """Set up the `filestore` logger from `[log]`: one stderr handler at `log.level` (or at
    `floor`, if that is higher), in `log.format`. Calling it again only applies the settings
    again: a process never gets a second handler."""
    logger = logging.getLogger(LOGGER)
    handler = next((h for h in logger.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(formatter(settings.log.format))
    logger.setLevel(max(_LEVELS[settings.log.level], floor))
    logger.propagate = False  # never twice, through a handler someone put on the root logger
    # The pool's own lines while PostgreSQL is away ("error connecting in ..." at every retry)
    # say nothing the registry's `RegistryUnavailable` and the loops' warnings do not.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    if settings.log.format == "json":
        # uvicorn's own handlers (it configured them before it built the app): their rare
        # lines (a worker that died, a broken request) must not break a JSON reader.
        for uvicorn_handler in logging.getLogger("uvicorn").handlers:
            if isinstance(uvicorn_handler, logging.StreamHandler) \
                    and uvicorn_handler.stream is sys.stderr:
                uvicorn_handler.setFormatter(JsonFormatter())
    return logger
