"""Mail catcher of the local stack.

An SMTP server that accepts every message and writes it, unchanged, to one
``.eml`` file per message in a folder (``.run/mail/<timestamp>-<n>.eml``), so a
developer can read what the platform sent. It never relays anything.

    python deploy/local/mailcatcher.py --host 127.0.0.1 --port 1025 --dir .run/mail

It speaks just enough ESMTP for a sender (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP,
VRFY, HELP, QUIT, and AUTH PLAIN/LOGIN accepting any login) and offers PIPELINING.
It is a small protocol of its own rather than aiosmtpd because aiosmtpd spends about a
millisecond of CPU per message (a coroutine step per line of data, address parsing
through the e-mail header parser), which made the catcher the bottleneck of the
campaign benchmark. A file is written (to a hidden temporary name, then renamed)
before the message is acknowledged; it is not fsynced: this is a development tool.
The newest ``--keep`` messages are kept (10,000 by default), so a folder in memory
(the local stack puts it in /dev/shm, as mail catchers usually keep mail in memory)
cannot grow without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

log = logging.getLogger("mailcatcher")

HOSTNAME = "mailcatcher.local"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MAX_LINE_BYTES = 4096
MAX_RECIPIENTS = 1000
EHLO_REPLY = (
    f"250-{HOSTNAME}\r\n250-SIZE {MAX_MESSAGE_BYTES}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    "250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 HELP"
)
HELP_REPLY = "250 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY"


class MailDir:
    """Writes each message atomically as ``<UTC timestamp>-<n>.eml``, keeping the newest `keep`."""

    def __init__(self, directory: Path, keep: int = 0) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.keep = keep
        # Oldest first; file names sort by time. Files deleted by someone else are skipped later.
        self.kept: deque[Path] = deque(sorted(directory.glob("*.eml"))) if keep else deque()
        self.prune()

    def prune(self) -> None:
        """Delete the oldest messages beyond `keep` (0 keeps everything)."""
        while self.keep and len(self.kept) > self.keep:
            self.kept.popleft().unlink(missing_ok=True)

    def write(self, *, mail_from: str, rcpt_tos: list[str], content: bytes) -> Path:
        """Write one message with its envelope as Return-Path and Delivered-To headers."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        header = f"Return-Path: <{mail_from}>\r\n"
        header += "".join(f"Delivered-To: {rcpt}\r\n" for rcpt in rcpt_tos)
        data = header.encode() + content
        while True:
            self.count += 1
            path = self.directory / f"{stamp}-{self.count}.eml"
            tmp = self.directory / f".{path.name}.tmp"
            try:
                with tmp.open("xb") as out:
                    out.write(data)
            except FileExistsError:
                continue
            if path.exists():
                tmp.unlink()
                continue
            tmp.rename(path)
            if self.keep:
                self.kept.append(path)
                self.prune()
            return path


def _address(argument: str, keyword: str) -> str | None:
    """Return the address of `FROM:<a> ...` or `TO:<a> ...`, or None when malformed."""
    if argument[: len(keyword)].upper() != keyword:
        return None
    rest = argument[len(keyword) :].strip()
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return None
        address = rest[1:end]
    else:
        address = rest.split(" ", 1)[0]
    # What goes into a header line of the file must not carry spaces or control characters.
    if len(address) > 320 or any(c <= " " or c == "\x7f" for c in address):
        return None
    return address


class CatcherProtocol(asyncio.Protocol):
    """One SMTP session: commands are answered in batches, so a pipelining client gets one write."""

    def __init__(self, maildir: MailDir, sessions: set[CatcherProtocol]) -> None:
        self.maildir = maildir
        self.sessions = sessions
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.greeted = False
        self.mail_from: str | None = None
        self.rcpt_tos: list[str] = []
        self.in_data = False
        self.data_scanned = 0
        self.data_too_big = False
        self.auth_steps: list[str] = []
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Greet the client."""
        # uvloop's transports do not derive from asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.sessions.add(self)
        self.transport.write(f"220 {HOSTNAME} ESMTP mail catcher\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the session."""
        self.sessions.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        """Answer every complete command or message in what arrived, in one write."""
        self.buffer += data
        replies: list[str] = []
        while not self.closing:
            if self.in_data:
                reply = self._take_message()
            else:
                line = self._take_line(replies)
                reply = None if line is None else self._command(line)
            if reply is None:
                break
            replies.append(reply)
        if replies and self.transport is not None:
            self.transport.write(("\r\n".join(replies) + "\r\n").encode())
        if self.closing and self.transport is not None:
            self.transport.close()

    def _take_line(self, replies: list[str]) -> str | None:
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > MAX_LINE_BYTES:
                replies.append("500 Line too long")
                self.closing = True
            return None
        raw = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return raw.decode("utf-8", errors="replace")

    def _take_message(self) -> str | None:
        buffer = self.buffer
        if buffer.startswith(b".\r\n"):
            end, content = 0, b""
            del buffer[:3]
        else:
            end = buffer.find(b"\r\n.\r\n", self.data_scanned)
            if end < 0:
                if len(buffer) > MAX_MESSAGE_BYTES:
                    # Keep only what may hold the start of the terminator.
                    self.data_too_big = True
                    del buffer[:-4]
                self.data_scanned = max(0, len(buffer) - 4)
                return None
            content = bytes(buffer[: end + 2])
            del buffer[: end + 5]
        self.in_data = False
        self.data_scanned = 0
        too_big, self.data_too_big = self.data_too_big, False
        mail_from, rcpt_tos = self.mail_from or "", self.rcpt_tos
        self.mail_from, self.rcpt_tos = None, []
        if too_big:
            return "552 Error: Too much mail data"
        # Undo the dot-stuffing of RFC 5321 section 4.5.2.
        content = content.replace(b"\r\n..", b"\r\n.")
        if content.startswith(b".."):
            content = content[1:]
        path = self.maildir.write(mail_from=mail_from, rcpt_tos=rcpt_tos, content=content)
        log.debug("caught a message for %d recipient(s): %s", len(rcpt_tos), path.name)
        return "250 Message accepted for delivery"

    def _command(self, line: str) -> str:
        if self.auth_steps:
            return self._auth_continue(line)
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        argument = argument.strip()
        if verb in ("EHLO", "HELO"):
            if not argument:
                return f"501 Syntax: {verb} hostname"
            self.greeted = True
            self.mail_from, self.rcpt_tos = None, []
            return EHLO_REPLY if verb == "EHLO" else f"250 {HOSTNAME}"
        if verb == "NOOP":
            return "250 OK"
        if verb == "QUIT":
            self.closing = True
            return "221 Bye"
        if verb == "RSET":
            self.mail_from, self.rcpt_tos = None, []
            return "250 OK"
        if verb == "HELP":
            return HELP_REPLY
        if verb == "VRFY":
            return "252 Cannot VRFY user, but will accept message and attempt delivery"
        if verb == "STARTTLS":
            return "454 TLS not available"
        if verb not in ("MAIL", "RCPT", "DATA", "AUTH"):
            return f'500 Error: command "{verb[:32]}" not recognized'
        if not self.greeted:
            return "503 Error: send HELO first"
        if verb == "AUTH":
            return self._auth_start(argument)
        if verb == "MAIL":
            if self.mail_from is not None:
                return "503 Error: nested MAIL command"
            address = _address(argument, "FROM:")
            if address is None:
                return "501 Syntax: MAIL FROM: <address>"
            self.mail_from = address
            return "250 OK"
        if verb == "RCPT":
            if self.mail_from is None:
                return "503 Error: need MAIL command"
            address = _address(argument, "TO:")
            if not address:
                return "501 Syntax: RCPT TO: <address>"
            if len(self.rcpt_tos) >= MAX_RECIPIENTS:
                return "452 Error: too many recipients"
            self.rcpt_tos.append(address)
            return "250 OK"
        if not self.rcpt_tos:
            return "503 Error: need RCPT command"
        if argument:
            return "501 Syntax: DATA"
        self.in_data = True
        return "354 End data with <CR><LF>.<CR><LF>"

    def _auth_start(self, argument: str) -> str:
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            if initial:
                return "235 2.7.0 Authentication successful"
            self.auth_steps = ["response"]
            return "334 "
        if mechanism == "LOGIN":
            self.auth_steps = ["password"] if initial else ["username", "password"]
            return "334 UGFzc3dvcmQ6" if initial else "334 VXNlcm5hbWU6"
        return "504 5.5.4 Unrecognized authentication type"

    def _auth_continue(self, line: str) -> str:
        self.auth_steps.pop(0)
        if line.strip() == "*":
            self.auth_steps = []
            return "501 5.7.0 Auth aborted"
        if self.auth_steps:
            return "334 UGFzc3dvcmQ6"
        return "235 2.7.0 Authentication successful"


async def serve(host: str, port: int, directory: Path, keep: int = 0) -> None:
    """Accept SMTP sessions until SIGTERM or SIGINT."""
    maildir = MailDir(directory, keep)
    sessions: set[CatcherProtocol] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: CatcherProtocol(maildir, sessions), host=host, port=port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on %s:%d, writing messages to %s", host, port, directory)
    async with server:
        await stop.wait()
        server.close()
        for session in list(sessions):
            if session.transport is not None:
                session.transport.close()
    log.info("stopped")


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("CDP_SMTP_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("CDP_SMTP_PORT", "1025")))
    parser.add_argument("--dir", type=Path, default=Path(".run/mail"))
    parser.add_argument(
        "--keep", type=int, default=10_000, help="keep the newest N messages, deleting older ones (0: all)"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.dir.resolve(), args.keep))
    else:
        uvloop.run(serve(args.host, args.port, args.dir.resolve(), args.keep))


if __name__ == "__main__":
    main()
