"""The files of the local stack, checked without starting it."""

from __future__ import annotations

import email
import email.policy
import signal
import smtplib
import socket
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from cdp_common.testing import port_open, wait_until

from .conftest import ROOT, SERVICES, STACK_SH

KAFKA_DIR = ROOT / "deploy/local/kafka"


def properties(path: Path) -> dict[str, str]:
    result = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            result[key.strip()] = value.strip()
    return result


def test_kafka_is_a_single_kraft_node_for_a_small_machine() -> None:
    props = properties(KAFKA_DIR / "server.properties")
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:@KAFKA_CONTROLLER_PORT@"
    assert props["listeners"].startswith("PLAINTEXT://127.0.0.1:@KAFKA_PORT@")
    assert props["auto.create.topics.enable"] == "false"
    assert props["delete.topic.enable"] == "true"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert int(props["log.cleaner.dedupe.buffer.size"]) <= 16 * 1024 * 1024
    assert int(props["num.network.threads"]) <= 2
    assert int(props["num.io.threads"]) <= 2


def test_kafka_pom_pins_the_broker_and_a_logging_backend() -> None:
    pom = (KAFKA_DIR / "pom.xml").read_text()
    assert "<packaging>pom</packaging>" in pom
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "<kafka.version>3.9.2</kafka.version>" in pom
    assert "<artifactId>slf4j-reload4j</artifactId>" in pom
    assert "<artifactId>reload4j</artifactId>" in pom


def test_stack_gives_every_service_its_port_and_the_shared_keys() -> None:
    for service in SERVICES:
        out = subprocess.run(
            ["bash", str(STACK_SH), "env-keys", service],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        assert f"CDP_{service.upper()}_PORT" in out
        for key in ("CDP_ENV", "CDP_DEFAULT_WRITE_KEY", "CDP_HASH_KEY", "CDP_ADMIN_TOKEN"):
            assert key in out
        others = {f"CDP_{other.upper()}_PORT" for other in SERVICES if other != service}
        assert not others & set(out), "a service is given another service's port"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_mail_catcher_keeps_the_newest_messages_each_as_an_eml_file(tmp_path: Path) -> None:
    port = free_port()
    maildir = tmp_path / "mail"
    maildir.mkdir()
    # Mail from before a restart counts towards what is kept, oldest first.
    (maildir / "20000101T000000.000000Z-1.eml").write_bytes(b"Subject: old\r\n\r\nold\r\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "deploy/local/mailcatcher.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(maildir),
            "--keep",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def listening() -> bool:
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")
            return port_open(port)

        wait_until(listening, timeout=20, what="the mail catcher to listen")

        subjects = ["First message", "Zweite Nachricht über Umlaute"]
        for subject in subjects:  # the old message makes way for the second
            message = EmailMessage()
            message["From"] = "platform@example.com"
            message["To"] = "someone@example.com"
            message["Subject"] = subject
            message.set_content(f"Body of {subject}\n")
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.send_message(message)

        files = sorted(maildir.glob("*.eml"))
        assert len(files) == 2
        assert not list(maildir.glob(".*")), "a temporary file was left behind"
        caught = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]
        assert sorted(str(m["Subject"]) for m in caught) == sorted(subjects)
        for message in caught:
            assert message["Delivered-To"] == "someone@example.com"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert proc.returncode == 0, output
