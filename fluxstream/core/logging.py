"""structlog set-up: JSON lines in production, readable console output in development.

Standard-library loggers (Faust, aiokafka, uvicorn) are routed through the same
renderer so every line of a process has one format, and through ``redact_secrets``,
so no password in a URL reaches a log whoever logged it.
"""

from __future__ import annotations

import logging
import logging.config
import re
from pathlib import Path
from typing import Any

import structlog

# scheme://user:password@ (the password may be empty-user style, redis://:pw@host) and key=value secrets
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*):[^@\s]+@")
_KEY_PASSWORD = re.compile(r"(?P<head>\bpassword=)(?!\*\*\*)[^\s&]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URL password (and ``password=`` value) replaced by ``***``:
    ``redis://user:***@host:6379/0``. For anything printed or logged that may hold a URL."""
    if "@" not in text and "=" not in text:
        return text
    return _KEY_PASSWORD.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>:***@", text))


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redacted(v) for v in value)
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)  # an exception, a settings object, ...: rendered as text anyway
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def redact_secrets(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``redact`` applied to every value of every log line (a safety net)."""
    return {key: value if key.startswith("_") else _redacted(value) for key, value in event_dict.items()}

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def logging_config(fmt: str = "json", level: str = "info") -> dict[str, Any]:
    """A ``logging.dictConfig`` mapping; also handed to Faust's worker."""
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                               structlog.processors.format_exc_info, redact_secrets, renderer],
                "foreign_pre_chain": _SHARED,
            }
        },
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "structlog"}},
        "root": {"handlers": ["default"], "level": level.upper()},
        # httpx logs every request at info: a line per readiness poll or API call is noise, not news.
        "loggers": {"aiokafka": {"level": "WARNING"}, "uvicorn.access": {"level": "WARNING"},
                    "httpx": {"level": "WARNING"}},
    }


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    logging.config.dictConfig(logging_config(fmt, level))
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


def log_to_file(path: str | Path, level: str = "info") -> None:
    """Send this process's log records and Python warnings to ``path`` instead of the terminal.

    `fluxstream dev` prints its own progress; what the libraries it drives say (embedded PostgreSQL's
    commands and initdb output, HTTP client lines, deprecation warnings) belongs in the state directory.
    """
    config = logging_config("console", level)
    config["handlers"]["default"] = {"class": "logging.FileHandler", "filename": str(path), "formatter": "structlog",
                                     "encoding": "utf-8"}
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
