"""The local mail catcher speaks enough SMTP for any sender: logins, several recipients, dot-stuffed
lines, pipelined commands, and it refuses what it cannot write safely."""

from __future__ import annotations

import email
import email.policy
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from cdp_common.testing import free_port, port_open, wait_until

from .conftest import ROOT


@pytest.fixture
def catcher(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    maildir = tmp_path / "mail"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "deploy/local/mailcatcher.py"),
            "--port",
            str(port),
            "--dir",
            str(maildir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def listening() -> bool:
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
            return port_open(port)

        wait_until(listening, timeout=20, what="the mail catcher to listen")
        yield port, maildir
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert proc.returncode == 0, output


def caught(maildir: Path) -> list[email.message.EmailMessage]:
    messages = []
    for path in sorted(maildir.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        messages.append(message)
    return messages


def test_a_logged_in_sender_reaches_every_recipient_with_dotted_lines_intact(
    catcher: tuple[int, Path],
) -> None:
    port, maildir = catcher
    message = EmailMessage()
    message["From"] = "platform@example.com"
    message["To"] = "one@example.com, two@example.com"
    message["Subject"] = "Dots"
    message.set_content(".leading dot\n..two dots\n.\nlast line\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("pipelining")
        client.login("anyone", "anything")
        client.send_message(message)

    (received,) = caught(maildir)
    assert received.get_all("Delivered-To") == ["one@example.com", "two@example.com"]
    assert received["Return-Path"] == "<platform@example.com>"
    assert received.get_content().replace("\r\n", "\n") == ".leading dot\n..two dots\n.\nlast line\n"


def test_pipelined_messages_each_get_their_answer_and_their_file(catcher: tuple[int, Path]) -> None:
    port, maildir = catcher
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(
            b"EHLO sender\r\n"
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: one\r\n\r\n1\r\n.\r\n"
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nSubject: two\r\n\r\n2\r\n.\r\n"
            b"QUIT\r\n"
        )
        replies = [line.decode().strip() for line in reader.readlines()]
    codes = [r[:3] for r in replies if not r.startswith("250-")]
    assert codes == ["250", "250", "250", "354", "250", "250", "250", "354", "250", "221"]
    assert [str(m["Subject"]) for m in caught(maildir)] == ["one", "two"]


def test_malformed_addresses_and_commands_out_of_order_are_refused(catcher: tuple[int, Path]) -> None:
    port, maildir = catcher
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 503  # no greeting yet
        client.ehlo()
        assert client.docmd("RCPT TO:<b@example.com>")[0] == 503  # no MAIL yet
        assert client.docmd("MAIL FROM:<a b@example.com>")[0] == 501  # would break the header line
        assert client.docmd("MAIL FROM:<a@example.com>")[0] == 250
        assert client.docmd("RCPT TO:<>")[0] == 501
        assert client.docmd("DATA")[0] == 503  # no recipient
        assert client.docmd("BOGUS")[0] == 500
    assert caught(maildir) == []
