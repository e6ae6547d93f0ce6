"""Logs never carry raw e-mail addresses or phone numbers."""

from __future__ import annotations

import io
import json
import logging

from cdp_common.logs import RedactingFilter, RedactingJsonFormatter, redact


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
