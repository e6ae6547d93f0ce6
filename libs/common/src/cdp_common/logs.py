"""Structured JSON logging that never writes raw e-mail addresses or phone numbers, and that
stays readable while a dependency is down: a warning or error repeated many times is written
once, then as a count every so often."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from pythonjsonlogger.json import JsonFormatter

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+\d[\d\s().-]{6,}\d")
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    """Replace e-mail addresses and international phone numbers in a text."""
    return _PHONE.sub("[phone]", _EMAIL.sub("[email]", text))


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts personal data in the message, its arguments and every extra field."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record in place; never drops it."""
        record.msg = redact(str(record.msg))
        if record.args:
            record.args = tuple(
                _redact_value(a) for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD_ATTRS:
                setattr(record, name, _redact_value(value))
        return True


LOG_LINES_SUPPRESSED = Counter(
    "cdp_log_lines_suppressed_total",
    "Warnings and errors not written because the same one was written within the repeat interval.",
    ["logger", "level"],
)
# Distinct repeating lines followed at once; past it the quietest are forgotten.
MAX_FOLLOWED = 10_000


@dataclass
class _Followed:
    written_at: float
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Lets a warning or an error through once per `interval_s` for each logger, message and
    exception type; the next one written says how many were held back since.

    A message is its template (the text before its arguments are put in), so a broker that
    refuses thousands of sends a minute writes one line a minute, not one per send.
    """

    def __init__(
        self,
        *,
        interval_s: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._level = level
        self._clock = clock
        self._followed: dict[tuple[str, int, str, str], _Followed] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Hold the record back if the same was written within the interval; else let it through."""
        if record.levelno < self._level:
            return True
        error = record.exc_info[1] if record.exc_info else None
        key = (record.name, record.levelno, str(record.msg), type(error).__name__ if error else "")
        now = self._clock()
        followed = self._followed.get(key)
        if followed is not None and now - followed.written_at < self._interval_s:
            followed.suppressed += 1
            LOG_LINES_SUPPRESSED.labels(record.name, record.levelname).inc()
            return False
        if followed is not None and followed.suppressed:
            record.repeated = followed.suppressed
            record.msg = (
                f"{record.msg} (repeated {followed.suppressed:,} times"
                f" in the last {now - followed.written_at:.0f} s)"
            )
        if followed is None and len(self._followed) >= MAX_FOLLOWED:
            self._forget_quietest()
        self._followed[key] = _Followed(written_at=now)
        return True

    def _forget_quietest(self) -> None:
        by_age = sorted(self._followed.items(), key=lambda item: item[1].written_at)
        for key, _ in by_age[: MAX_FOLLOWED // 2]:
            del self._followed[key]


class RedactingJsonFormatter(JsonFormatter):
    """JSON formatter that also redacts exception texts."""

    def formatException(self, ei: Any) -> str:  # noqa: N802
        """Format the traceback with personal data removed."""
        return redact(str(super().formatException(ei)))


def configure_logging(*, service: str, level: str = "INFO", repeat_interval_s: float = 60.0) -> None:
    """Send the process's logs to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(RepeatFilter(interval_s=repeat_interval_s))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
