"""Structured logs (structlog): JSON in production, console in development.

Call sites log only identifiers, codes and counts. The redaction processor is the last line of
defence, not the first: it drops values under keys that name patient-bearing data and masks
anything shaped like an INS/NIR or a patient MSSanté address in every string value.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

import structlog

from connector.settings import LogFormat, LoggingSettings

FORBIDDEN_KEYS = frozenset({
    "raw", "payload", "message", "body", "subject", "document", "cda", "name", "family",
    "given", "birth_date", "birthdate", "ins", "nir", "patient", "address_line",
})
# INS-NIR/NIA: 13 characters + 2-digit key (sex digit 1-4 or 7-8 first; the birth department,
# characters 6-7, is 2A or 2B for Corsica); and patient mailboxes.
_NIR = re.compile(r"(?<!\d)[1-478]\d{4}(?:\d{2}|2[AB])\d{6}(?:\d{2})?(?!\d)", re.IGNORECASE)
_PATIENT_MAILBOX = re.compile(r"[^\s@<>\"']+@patient\.mssante\.fr", re.IGNORECASE)
REDACTED = "[redacted]"


def redact_value(value: str) -> str:
    value = _PATIENT_MAILBOX.sub(REDACTED, value)
    return _NIR.sub(REDACTED, value)


_MAX_DEPTH = 8


def _redact_any(value: Any, depth: int = 0) -> Any:
    """Strings are masked, bytes sized; lists, tuples, sets and dicts are walked."""
    if isinstance(value, str):
        return redact_value(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict | list | tuple | set | frozenset) and depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, dict):
        return {k: REDACTED if k in FORBIDDEN_KEYS else _redact_any(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_redact_any(v, depth + 1) for v in value]
        if isinstance(value, list):
            return items
        if isinstance(value, tuple):
            return tuple(items)
        return frozenset(items) if isinstance(value, frozenset) else set(items)
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key in FORBIDDEN_KEYS and key != "event":
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_any(event_dict[key])
    return event_dict


def configure_logging(settings: LoggingSettings | None = None, *, cache: bool = True) -> None:
    """Configure structlog once at start-up. `cache=False` lets tests reconfigure."""
    settings = settings or LoggingSettings()
    level = getattr(logging, settings.level.upper(), logging.INFO)
    renderer: Any = (structlog.processors.JSONRenderer() if settings.format is LogFormat.JSON
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )


def exception_frames(exc: BaseException, limit: int = 8) -> str:
    """Where `exc` was raised, innermost frames last (`module.py:123 function`), without its
    message: a bug's exception may carry a value it was given (a name, a date), which the
    redaction cannot recognise. The type and the frames are enough to find the bug."""
    frames = traceback.extract_tb(exc.__traceback__)[-limit:]
    return " > ".join(f"{_short_path(f.filename)}:{f.lineno} {f.name}" for f in frames)


def _short_path(filename: str) -> str:
    marker = filename.rfind("/connector/")
    return filename[marker + 1:] if marker >= 0 else filename.rsplit("/", 1)[-1]


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler for what no code caught (a task's exception never retrieved, a
    callback that raised): logged through structlog, the exception's type and frames only.
    asyncio's own handler would print its message and the reprs of the callback's arguments,
    unredacted, through the standard library's logging."""
    exc = context.get("exception")
    if isinstance(exc, BaseException):
        structlog.get_logger(__name__).error(
            "unhandled_error", error=type(exc).__name__, where=exception_frames(exc))
    else:  # asyncio's own conditions (an unclosed transport...): no exception to show
        structlog.get_logger(__name__).error("unhandled_error", error=None)
