"""Mail catcher of the local stack.

An SMTP server that accepts every message and writes it, unchanged, to one
``.eml`` file per message in a folder (``.run/mail/<timestamp>-<n>.eml``), so a
developer can read what the platform sent. It never relays anything.

    python deploy/local/mailcatcher.py --host 127.0.0.1 --port 1025 --dir .run/mail
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

log = logging.getLogger("mailcatcher")


class MailDir:
    """Writes each message atomically as ``<UTC timestamp>-<n>.eml``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def write(self, envelope: Envelope) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        header = f"Return-Path: <{envelope.mail_from or ''}>\r\n"
        header += "".join(f"Delivered-To: {rcpt}\r\n" for rcpt in envelope.rcpt_tos)
        content = envelope.original_content or b""
        while True:
            self.count += 1
            path = self.directory / f"{stamp}-{self.count}.eml"
            tmp = self.directory / f".{path.name}.tmp"
            try:
                with tmp.open("xb") as out:
                    out.write(header.encode())
                    out.write(content)
                    out.flush()
                    os.fsync(out.fileno())
            except FileExistsError:
                continue
            if path.exists():
                tmp.unlink()
                continue
            tmp.rename(path)
            return path


class Handler:
    def __init__(self, maildir: MailDir) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        path = self.maildir.write(envelope)
        log.info("caught a message for %d recipient(s): %s", len(envelope.rcpt_tos), path.name)
        return "250 Message accepted for delivery"


def accept_any_login(*_args: Any) -> AuthResult:
    return AuthResult(success=True)


async def serve(host: str, port: int, directory: Path) -> None:
    handler = Handler(MailDir(directory))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="mailcatcher.local",
            enable_SMTPUTF8=True,
            auth_require_tls=False,
            authenticator=accept_any_login,
        ),
        host=host,
        port=port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on %s:%d, writing messages to %s", host, port, directory)
    async with server:
        await stop.wait()
    log.info("stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("CDP_SMTP_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("CDP_SMTP_PORT", "1025")))
    parser.add_argument("--dir", type=Path, default=Path(".run/mail"))
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # aiosmtpd logs every SMTP command (with addresses) at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve(args.host, args.port, args.dir.resolve()))


if __name__ == "__main__":
    main()
