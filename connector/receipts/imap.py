"""The tenant's application mailbox over IMAP (blocking `imaplib`; the poller runs it in a thread).

STARTTLS on 143 or implicit TLS on 993, with the same client TLS as SMTP (IGC-Santé roots passed
explicitly, the application mailbox's certificate), then an optional LOGIN. Mails are read by UID
with `BODY.PEEK[]` (never marked seen by reading) and moved to the processed or unmatched folder
only after the caller committed what it learnt (`MoveMethod`). The capabilities are asked again
after the login: servers offer MOVE and UIDPLUS only to an authenticated client (Dovecot's
greeting lists neither), and without them the move used to end in a plain EXPUNGE, which removes
every message of the folder flagged \\Deleted, other clients' included. Where the connector
leaves its handled mails flagged (`MoveMethod.LEAVE_DELETED`), it searches `UNDELETED` so as not
to read them again (a mail another client flagged is then skipped too); elsewhere `ALL`.

IDLE (RFC 2177) is used when offered: the poller waits for the server's word instead of polling.
Whatever the wait saw, the next round searches the whole folder, so a notification lost in a
buffer only delays a mail until the wait ends.
"""

from __future__ import annotations

import contextlib
import imaplib
import select
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from connector.delivery.tls import ClientTls
from connector.errors import ConnectorError


class ImapError(ConnectorError):
    """The mailbox cannot be used now (connection, TLS, login, a refused command)."""


class ImapTlsMode(StrEnum):
    STARTTLS = "starttls"
    IMPLICIT_TLS = "implicit-tls"


class MoveMethod(StrEnum):
    """How a handled mail leaves the watched folder, by what the server offers."""

    MOVE = "move"  # UID MOVE (RFC 6851)
    UID_EXPUNGE = "uid-expunge"  # UID COPY, \Deleted, UID EXPUNGE of that mail only (UIDPLUS)
    # UID COPY and \Deleted only: a plain EXPUNGE would remove what other clients flagged too.
    # The mail stays in the folder, flagged, until the server's expunge policy removes it.
    LEAVE_DELETED = "leave-deleted"


@dataclass(frozen=True, slots=True)
class ImapEndpoint:
    host: str
    port: int = 993
    mode: ImapTlsMode = ImapTlsMode.IMPLICIT_TLS
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    mailbox: str = "INBOX"
    processed_folder: str = "processed"
    unmatched_folder: str = "unmatched"
    timeout_seconds: float = 30.0


class ImapMailbox:
    def __init__(self, endpoint: ImapEndpoint, tls: ClientTls) -> None:
        self.endpoint = endpoint
        self._tls = tls
        self._conn: imaplib.IMAP4 | None = None
        self.capabilities: frozenset[str] = frozenset()

    @property
    def where(self) -> str:
        return f"imap://{self.endpoint.host}:{self.endpoint.port}"

    def connect(self) -> None:
        e = self.endpoint
        try:
            if e.mode is ImapTlsMode.IMPLICIT_TLS:
                conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(e.host, e.port,
                                                        ssl_context=self._tls.context,
                                                        timeout=e.timeout_seconds)
            else:
                conn = imaplib.IMAP4(e.host, e.port, timeout=e.timeout_seconds)
                conn.starttls(ssl_context=self._tls.context)
            if e.username is not None:
                conn.login(e.username, e.password or "")
            for folder in (e.processed_folder, e.unmatched_folder):
                conn.create(folder)  # NO when it exists: fine
            self._ok(conn.select(e.mailbox), "SELECT")
        except ssl.SSLError as exc:
            raise ImapError(f"TLS with {self.where} failed ({exc.reason}); trusted: "
                            f"{self._tls.trust}") from exc
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"{self.where}: {_reason(exc)}") from exc
        self._conn = conn
        self.capabilities = self._capabilities(conn)

    def _capabilities(self, conn: imaplib.IMAP4) -> frozenset[str]:
        """CAPABILITY asked again, authenticated (RFC 3501 §6.2.3: they may change after the
        login); imaplib keeps the ones of the greeting."""
        try:
            data = self._ok(conn.capability(), "CAPABILITY")
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"{self.where}: {_reason(exc)}") from exc
        last = data[-1] if data else b""
        words = last.decode("ascii", "replace").split() if isinstance(last, bytes) else []
        return frozenset(w.upper() for w in words) or frozenset(
            c.upper() for c in conn.capabilities)

    @property
    def move_method(self) -> MoveMethod:
        if "MOVE" in self.capabilities:
            return MoveMethod.MOVE
        if "UIDPLUS" in self.capabilities:
            return MoveMethod.UID_EXPUNGE
        return MoveMethod.LEAVE_DELETED

    def _ok(self, answer: tuple[str, Sequence[object]], command: str) -> list[object]:
        status, data = answer
        if status != "OK":
            raise ImapError(f"{self.where}: {command} refused")
        return list(data)

    @property
    def conn(self) -> imaplib.IMAP4:
        if self._conn is None:
            raise ImapError(f"{self.where}: not connected")
        return self._conn

    def uids(self) -> list[str]:
        """Every mail of the watched folder, oldest first; without those flagged \\Deleted
        when that is how this connector leaves the mails it handled."""
        which = "UNDELETED" if self.move_method is MoveMethod.LEAVE_DELETED else "ALL"
        data = self._call(lambda c: c.uid("SEARCH", which), "UID SEARCH")
        first = data[0] if data else b""
        return [uid.decode() for uid in first.split()] if isinstance(first, bytes) else []

    def fetch(self, uid: str) -> bytes | None:
        """The mail's bytes, or None when it is gone (moved by someone else)."""
        data = self._call(lambda c: c.uid("FETCH", uid, "(BODY.PEEK[])"), "UID FETCH")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                return item[1]
        return None

    def move(self, uid: str, folder: str) -> tuple[str, ...]:
        """Move the mail to `folder` as the server allows; the commands it took."""
        method = self.move_method
        if method is MoveMethod.MOVE:
            self._call(lambda c: c.uid("MOVE", uid, folder), "UID MOVE")
            return ("UID MOVE",)
        self._call(lambda c: c.uid("COPY", uid, folder), "UID COPY")
        self._call(lambda c: c.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "UID STORE")
        if method is MoveMethod.UID_EXPUNGE:
            self._call(lambda c: c.uid("EXPUNGE", uid), "UID EXPUNGE")
            return ("UID COPY", "UID STORE", "UID EXPUNGE")
        return ("UID COPY", "UID STORE")

    def wait(self, seconds: float) -> None:
        """IDLE up to `seconds` (or until the server reports a change); NOOP without IDLE."""
        conn = self.conn
        if "IDLE" not in self.capabilities:
            self._call(lambda c: c.noop(), "NOOP")
            return
        try:
            tag: bytes = conn._new_tag()  # imaplib has no IDLE before Python 3.14
            conn.send(tag + b" IDLE\r\n")
            if not conn.readline().startswith(b"+"):
                raise ImapError(f"{self.where}: IDLE refused")
            sock = conn.socket()
            pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            if not pending:
                select.select([sock], [], [], seconds)
            conn.send(b"DONE\r\n")
            while True:
                line = conn.readline()
                if not line:
                    raise ImapError(f"{self.where}: connection closed during IDLE")
                if line.startswith(tag):
                    if b" OK" not in line[:len(tag) + 4]:
                        raise ImapError(f"{self.where}: IDLE ended with an error")
                    return
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"{self.where}: {_reason(exc)}") from exc

    def abort(self) -> None:
        """Cut the connection from another thread: a blocked IDLE or read ends at once."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.socket().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.logout()
        except (OSError, imaplib.IMAP4.error):
            with contextlib.suppress(OSError):
                conn.shutdown()

    def _call(self, command: Callable[[imaplib.IMAP4], tuple[str, Sequence[object]]],
              name: str) -> list[object]:
        try:
            answer = command(self.conn)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ImapError(f"{self.where}: {name}: {_reason(exc)}") from exc
        return self._ok(answer, name)


def _reason(exc: BaseException) -> str:
    """The error without the server's free text beyond its first line (it may quote a mail)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
