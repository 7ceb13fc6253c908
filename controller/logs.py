"""How the controller's processes (API, worker, beat, CLI) log: text or one JSON object a line.

``RELAYFLEET_LOG_FORMAT=json`` makes every record one line of JSON with ``time`` (UTC,
ISO 8601), ``level``, ``logger``, ``message``, ``process``, ``job_id`` / ``host`` /
``status`` / ``tenant`` when the record carries them (the worker passes them as
``extra=``; the API's tenant comes from the request), and ``exception`` (the traceback
text) when there is one; ``text`` (the default) keeps the classic line. Either way, the
values of the controller's own secrets (``RELAYFLEET_SECRET_KEY``, the old keys, the
callback secret, the passwords in the database and broker URLs) are replaced by
``[redacted]`` in what is written, with the Redactor operation results already use.

Gunicorn's own loggers get the same handler through :func:`dict_config` (see
:mod:`controller.gunicorn_conf`); Celery's worker and beat leave an already configured root
logger alone, so their records go through it as well.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import os
import re
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from shared.errors import ConfigError
from shared.results import Redactor

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: record attributes copied into the JSON object when a record carries them
CONTEXT_FIELDS = ("job_id", "host", "status", "tenant")


def log_format(environ: Mapping[str, str] | None = None) -> str:
    """``RELAYFLEET_LOG_FORMAT`` (``text`` or ``json``; default ``text``)."""
    env = os.environ if environ is None else environ
    raw = (env.get("RELAYFLEET_LOG_FORMAT") or "text").strip().lower()
    if raw not in FORMATS:
        raise ConfigError(f"RELAYFLEET_LOG_FORMAT must be text or json, not {raw!r}")
    return raw


def secrets_in(environ: Mapping[str, str]) -> list[str]:
    """The secret values of the controller's settings found in ``environ``."""
    found = [environ.get("RELAYFLEET_SECRET_KEY", ""),
             environ.get("RELAYFLEET_CALLBACK_SECRET", "")]
    found += re.split(r"[,\s]+", environ.get("RELAYFLEET_SECRET_KEY_OLD", ""))
    for name in ("RELAYFLEET_DATABASE_URL", "RELAYFLEET_BROKER_URL"):
        try:
            password = urlsplit(environ.get(name, "")).password
        except ValueError:
            password = None
        if password:
            found += [password, unquote(password)]
    # A short value ("a", "0") would blank out ordinary words: the settings refuse keys
    # under 16 characters anyway, and a database password that short protects little.
    return [value for value in found if len(value) >= 6]


class ContextFilter(logging.Filter):
    """Adds ``tenant`` to the API's records of a tenant-scoped request, unless the record
    already carries one."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops one."""
        if not hasattr(record, "tenant"):
            tenant = _request_tenant()
            if tenant is not None:
                record.tenant = tenant
        return True


def _request_tenant() -> int | None:
    """The tenant of the API request this thread is handling, if any (no Flask import:
    the worker and beat log without it)."""
    flask = sys.modules.get("flask")
    if flask is None or not flask.has_request_context():
        return None
    principal = flask.g.get("principal")
    return getattr(principal, "tenant_id", None)


class TextFormatter(logging.Formatter):
    """The classic line, with the controller's secrets redacted."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = redactor or Redactor(secrets_in(os.environ))

    def format(self, record: logging.LogRecord) -> str:
        """The line for ``record``."""
        return self.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, secrets redacted."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redactor or Redactor(secrets_in(os.environ))

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for ``record``."""
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
            "process": record.process,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value if isinstance(value, int | float) else self.redact(
                    str(value))
        if record.exc_info:
            entry["exception"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self.redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.redact(self.formatStack(record.stack_info))
        # ensure_ascii: a newline or control character in a message stays inside the line
        return json.dumps(entry, ensure_ascii=True, default=str)


def dict_config(level: str | int = "INFO", fmt: str | None = None) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` document: the root logger writes to stderr in
    ``fmt`` (default: :func:`log_format`); gunicorn's loggers pass their records to it."""
    chosen = fmt or log_format()
    formatter = JsonFormatter if chosen == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"relayfleet": {"()": formatter}},
        "handlers": {"relayfleet": {"class": "logging.StreamHandler",
                                    "stream": "ext://sys.stderr",
                                    "formatter": "relayfleet", "filters": ["context"]}},
        "root": {"level": level, "handlers": ["relayfleet"]},
        "loggers": {name: {"level": "INFO", "handlers": [], "propagate": True}
                    for name in ("gunicorn.error", "gunicorn.access")},
    }


def configure(level: str | int = "INFO", fmt: str | None = None) -> str:
    """Set up the process's logging as ``RELAYFLEET_LOG_FORMAT`` says; return the format."""
    chosen = fmt or log_format()
    logging.config.dictConfig(dict_config(level, chosen))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Warnings (Celery's about running as root, deprecations) as records in the same format,
    # not bare lines on stderr.
    logging.captureWarnings(True)
    return chosen
