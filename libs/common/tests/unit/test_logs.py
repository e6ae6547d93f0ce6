"""Logs never carry raw e-mail addresses or phone numbers."""

from __future__ import annotations

import io
import json
import logging

from cdp_common.logs import RedactingFilter, RedactingJsonFormatter, RepeatFilter, redact
from prometheus_client import REGISTRY


def test_redact_replaces_emails_and_international_numbers() -> None:
    text = redact("mail Ada.Lovelace+news@Example.org or call +49 170 1234567, order 12345")
    assert "Lovelace" not in text
    assert "1234567" not in text
    assert text == "mail [email] or call [phone], order 12345"


def test_json_log_lines_are_redacted_in_message_args_and_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingJsonFormatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.warning("lookup of %s failed", "bob@example.com", extra={"subject": {"phone": "+44 20 7946 0958"}})
    line = json.loads(stream.getvalue())
    assert line["message"] == "lookup of [email] failed"
    assert line["subject"] == {"phone": "[phone]"}


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def json_logger(name: str, *filters: logging.Filter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingJsonFormatter("%(levelname)s %(name)s %(message)s"))
    for log_filter in filters:
        handler.addFilter(log_filter)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_repeated_error_is_written_once_then_as_a_count_every_interval() -> None:
    clock = FakeClock()
    logger, stream = json_logger("test.repeats", RepeatFilter(interval_s=60, clock=clock))
    suppressed = {"logger": "test.repeats", "level": "ERROR"}
    before = REGISTRY.get_sample_value("cdp_log_lines_suppressed_total", suppressed) or 0.0
    for attempt in range(6500):
        clock.now += 0.005  # 6,500 in 32.5 s
        logger.error("send to %s failed", f"broker-{attempt % 3}")
    assert [line["message"] for line in lines(stream)] == ["send to broker-0 failed"]
    clock.now += 60
    logger.error("send to %s failed", "broker-1")
    written = lines(stream)
    assert len(written) == 2
    assert written[1]["message"] == "send to broker-1 failed (repeated 6,499 times in the last 92 s)"
    assert written[1]["repeated"] == 6499
    after = REGISTRY.get_sample_value("cdp_log_lines_suppressed_total", suppressed)
    assert after == before + 6499


def test_other_loggers_messages_exceptions_and_info_lines_are_not_held_back() -> None:
    clock = FakeClock()
    repeats = RepeatFilter(interval_s=60, clock=clock)
    first, stream = json_logger("test.repeats.first", repeats)
    second, other_stream = json_logger("test.repeats.second", repeats)
    for _ in range(3):
        first.error("database down")
        first.warning("database down")
        second.error("database down")
        first.error("kafka down")
        first.info("request served")
        try:
            raise TimeoutError
        except TimeoutError:
            first.exception("database down")
    messages = [(line["levelname"], line["message"]) for line in lines(stream)]
    assert messages.count(("ERROR", "database down")) == 2  # without and with a TimeoutError
    assert messages.count(("WARNING", "database down")) == 1
    assert messages.count(("ERROR", "kafka down")) == 1
    assert messages.count(("INFO", "request served")) == 3
    assert [line["message"] for line in lines(other_stream)] == ["database down"]
