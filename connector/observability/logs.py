"""Structured logs (structlog): JSON in production, console in development.

Call sites log only identifiers, codes and counts. The redaction processor is the last line of
defence, not the first: it drops values under keys that name patient-bearing data and masks
anything shaped like an INS/NIR or a patient MSSanté address in every string value.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from connector.settings import LogFormat, LoggingSettings

FORBIDDEN_KEYS = frozenset({
    "raw", "payload", "message", "body", "subject", "document", "cda", "name", "family",
    "given", "birth_date", "birthdate", "ins", "nir", "patient", "address_line",
})
# INS-NIR/NIA: 13 digits + 2-digit key (sex digit 1-4 or 7-8 first); and patient mailboxes.
_NIR = re.compile(r"(?<!\d)[1-478]\d{12}(?:\d{2})?(?!\d)")
_PATIENT_MAILBOX = re.compile(r"[^\s@<>\"']+@patient\.mssante\.fr", re.IGNORECASE)
REDACTED = "[redacted]"


def redact_value(value: str) -> str:
    value = _PATIENT_MAILBOX.sub(REDACTED, value)
    return _NIR.sub(REDACTED, value)


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        value = event_dict[key]
        if key in FORBIDDEN_KEYS and key != "event":
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_value(value)
        elif isinstance(value, bytes):
            event_dict[key] = f"<{len(value)} bytes>"
    return event_dict


def configure_logging(settings: LoggingSettings | None = None) -> None:
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
        cache_logger_on_first_use=True,
    )
