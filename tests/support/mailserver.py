"""A real Postfix (and Dovecot) on loopback, standing in for an MSSanté operator in e2e tests.

`MailServer` writes a private Postfix configuration under a fresh directory of the system
temporary directory and runs `postfix -c DIR start-fg` as a subprocess. Its submission service
listens on a free 127.0.0.1 port, requires STARTTLS and a client certificate issued by the test CA
(`permit_tls_all_clientcerts`), and delivers into virtual Maildirs that the tests read back.
A domain routed to a `pipe` transport exiting 67 (EX_NOUSER) makes Postfix accept the mail and
then bounce it with a real RFC 3464 failure DSN; NOTIFY=SUCCESS gets a real success DSN.

`DovecotServer` serves the same Maildirs over IMAP (STARTTLS and implicit TLS, client
certificate required, then a password login), run as `dovecot -F -c FILE`.

Run as root, `postfix -c DIR` needs no `alternate_config_directories` entry in the system
main.cf (Postfix only checks that for a non-root caller), so the harness leaves /etc alone.
A run killed before its clean-up leaves `<tmp>/mssconnector-mail-*`: the next run kills the
servers left there and removes it (`reap_leftovers`).

Both need root and the Debian packages `postfix` and `dovecot-imapd` (`.ci/run` installs them);
`postfix_unavailable()` / `dovecot_unavailable()` give the reason to skip otherwise.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

from tests.support.pki import Issued, TestCA

HOST = "127.0.0.1"
SENDER = "pfi-auto@chu-test.mssante.fr"
BOUNCE_DOMAIN = "bounce.mssante.fr"
DEFAULT_MAILBOXES: tuple[str, ...] = (
    "dr.hoda@medecin.mssante.fr",
    "dr.martin@medecin.mssante.fr",
    "146026322000196@patient.mssante.fr",
    SENDER,
)
CLIENT_CN = "BAL applicative CHU test"
DIR_PREFIX = "mssconnector-mail-"
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
# Mail is delivered, and read by Dovecot, as this unprivileged account.
MAIL_USER = "nobody"
STARTUP_TIMEOUT = 20.0
IMAP_PASSWORD = "test-password"


class MailServerError(RuntimeError):
    """The mail server could not be configured, started or stopped; carries its log tail."""


def _command(name: str) -> str | None:
    """Where a program is: on PATH, else in /usr/sbin (root's PATH may lack it)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def postfix_unavailable() -> str | None:
    """Why a real Postfix cannot run here, or None when it can."""
    if _command("postfix") is None:
        return "postfix is not installed (bash .ci/run installs the Debian package)"
    if os.geteuid() != 0:
        return "running Postfix from a private configuration needs root"
    return None


def dovecot_unavailable() -> str | None:
    """Why a real Dovecot cannot run here, or None when it can."""
    if _command("dovecot") is None:
        return "dovecot is not installed (bash .ci/run installs the Debian dovecot-imapd)"
    if os.geteuid() != 0:
        return "running Dovecot from a private configuration needs root"
    return None


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes], what: str,
               log_tail: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MailServerError(f"{what} exited with {proc.returncode} at start-up:\n"
                                  f"{log_tail()}")
        if port_open(host, port, 0.2):
            return
        time.sleep(0.05)
    raise MailServerError(f"{what} did not listen on {host}:{port} within {timeout}s:\n"
                          f"{log_tail()}")


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise ValueError(f"not a mailbox address: {address!r}")
    return local, domain.lower()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _process_is(pid: int, executable: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == executable
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


_DOVECOT = os.path.realpath(_command("dovecot") or "/usr/sbin/dovecot")


def reap_leftovers(max_age: float = 600.0) -> list[Path]:
    """Kills the servers and removes the directories of harness runs whose process is gone.

    A test run killed with SIGKILL leaves its Postfix and Dovecot running under
    `<tmp>/mssconnector-mail-*`; each run calls this first. Returns the directories removed.
    """
    removed: list[Path] = []
    for directory in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        owner = _read_pid(directory / "owner.pid")
        if owner is not None and _alive(owner):
            continue
        if owner is None:
            try:
                if time.time() - directory.stat().st_mtime < max_age:
                    continue  # being created right now
            except OSError:
                continue
        for pid_file, executable in (
                (directory / "queue" / "pid" / "master.pid", POSTFIX_MASTER),
                (directory / "dovecot" / "run" / "master.pid", _DOVECOT)):
            pid = _read_pid(pid_file)
            if pid is not None and executable and _process_is(pid, executable):
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


class MailServer:
    """A private Postfix on loopback: submission with STARTTLS and a required client cert.

    Use as a context manager (or `start()` then `close()`). `stop()` and `start()` may be
    called in between to simulate the operator going down and coming back on the same port.
    """

    def __init__(self, mailboxes: Iterable[str] = DEFAULT_MAILBOXES, *,
                 bounce_domains: Iterable[str] = (BOUNCE_DOMAIN,),
                 directory: Path | None = None, ca: TestCA | None = None,
                 client_cn: str = CLIENT_CN) -> None:
        reason = postfix_unavailable()
        if reason is not None:
            raise MailServerError(reason)
        self._postfix = _command("postfix") or "postfix"
        self.mailboxes: tuple[str, ...] = tuple(a.lower() for a in mailboxes)
        self.bounce_domains: tuple[str, ...] = tuple(d.lower() for d in bounce_domains)
        self._own_directory = directory is None
        if directory is None:
            reap_leftovers()
            directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
            (directory / "owner.pid").write_text(f"{os.getpid()}\n")
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        # Postfix daemons and the mail user must traverse it.
        self.directory.chmod(0o755)
        self.config_dir = self.directory / "postfix"
        self.queue_dir = self.directory / "queue"
        self.data_dir = self.directory / "data"
        self.mail_base = self.directory / "mail"
        self.log_file = self.directory / "postfix.log"
        self.host = HOST
        self.submission_port = free_port()
        self.ca = ca if ca is not None else TestCA(self.directory / "pki")
        self.server_cert: Issued = self.ca.issue("mx.operator.test", server=True,
                                                 hosts=("localhost", HOST, "mx.operator.test"))
        self.client_cert: Issued = self.ca.issue(client_cn, server=False, hosts=())
        entry = pwd.getpwnam(MAIL_USER)
        self.mail_uid, self.mail_gid = entry.pw_uid, entry.pw_gid
        self._proc: subprocess.Popen[bytes] | None = None
        self._checked = False
        self._write_config()

    # -- configuration ----------------------------------------------------------------------

    def _write_config(self) -> None:
        for path in (self.config_dir, self.queue_dir, self.mail_base):
            path.mkdir(parents=True, exist_ok=True)
        self.queue_dir.chmod(0o755)
        self.data_dir.mkdir(exist_ok=True)
        os.chown(self.data_dir, pwd.getpwnam("postfix").pw_uid, -1)
        self.data_dir.chmod(0o700)
        os.chown(self.mail_base, self.mail_uid, self.mail_gid)
        self.mail_base.chmod(0o755)
        virtual_domains = sorted({_split(a)[1] for a in self.mailboxes})
        for address in self.mailboxes:
            self._make_maildir(self.mailbox_dir(address))
        (self.config_dir / "vmailbox").write_text(
            "".join(f"{a} {_split(a)[1]}/{_split(a)[0]}/\n" for a in self.mailboxes))
        (self.config_dir / "transport").write_text(
            "".join(f"{d} bouncer:\n" for d in self.bounce_domains))
        bouncer = self.config_dir / "no-such-user.sh"
        bouncer.write_text("#!/bin/sh\necho 'no such user here (test bounce domain)' >&2\n"
                           "exit 67\n")
        bouncer.chmod(0o755)
        cfg = self.config_dir
        main = {
            "compatibility_level": "3.6",
            "maillog_file": "/dev/stdout",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "myhostname": "mx.operator.test",
            "mydomain": "operator.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "",
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "smtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
            "smtpd_peername_lookup": "no",
            "biff": "no",
            "append_dot_mydomain": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "relay_domains": ", ".join(self.bounce_domains),
            "relay_recipient_maps": "",
            "transport_maps": f"texthash:{cfg}/transport",
            "default_transport": "error:5.1.2 no such domain at this test operator",
            "virtual_mailbox_domains": ", ".join(virtual_domains),
            "virtual_mailbox_maps": f"texthash:{cfg}/vmailbox",
            "virtual_mailbox_base": str(self.mail_base),
            "virtual_uid_maps": f"static:{self.mail_uid}",
            "virtual_gid_maps": f"static:{self.mail_gid}",
            "virtual_minimum_uid": "1",
            "smtpd_tls_cert_file": str(self.server_cert.certificate),
            "smtpd_tls_key_file": str(self.server_cert.private_key),
            "smtpd_tls_CAfile": str(self.ca.certificate),
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
            "smtpd_tls_protocols": ">=TLSv1.2",
            "smtpd_tls_session_cache_database": "",
            "smtp_tls_security_level": "none",
            "smtpd_relay_restrictions": "permit_tls_all_clientcerts, reject",
            "smtpd_recipient_restrictions": "",
            "message_size_limit": str(64 * 1024 * 1024),
            "virtual_mailbox_limit": "0",
            "bounce_queue_lifetime": "0",
            "maximal_queue_lifetime": "1h",
            "queue_run_delay": "10s",
            "minimal_backoff_time": "10s",
            "maximal_backoff_time": "30s",
            "delay_warning_time": "0",
            "bounce_notice_recipient": "postmaster",
            "notify_classes": "",
            "smtputf8_enable": "no",
        }
        (cfg / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        submission = "\n".join(f"  -o {option}" for option in (
            "syslog_name=postfix/submission",
            "smtpd_tls_security_level=encrypt",
            "smtpd_tls_ask_ccert=yes",
            "smtpd_tls_req_ccert=yes",
            "smtpd_client_restrictions=permit_tls_all_clientcerts,reject",
            "smtpd_relay_restrictions=permit_tls_all_clientcerts,reject",
        ))
        master = f"""\
{HOST}:{self.submission_port} inet n - n - - smtpd
{submission}
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
bouncer   unix  -       n       n       -       -       pipe
  flags=q user={MAIL_USER} argv={bouncer} ${{recipient}}
"""
        (cfg / "master.cf").write_text(master)

    def _make_maildir(self, path: Path) -> None:
        for sub in ("", "new", "cur", "tmp"):
            directory = path / sub
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (path.parent, path, path / "new", path / "cur", path / "tmp"):
            os.chown(directory, self.mail_uid, self.mail_gid)
            directory.chmod(0o755 if directory == path.parent else 0o700)

    # -- life cycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Starts Postfix in the foreground and waits until the submission port answers."""
        if self.running:
            return
        if not self._checked:
            # Creates the queue directories with Postfix's owners and modes (a few seconds).
            checked = subprocess.run([self._postfix, "-c", str(self.config_dir), "check"],
                                     capture_output=True, text=True, check=False)
            if checked.returncode != 0:
                raise MailServerError(f"postfix check failed ({checked.returncode}):\n"
                                      f"{checked.stdout}{checked.stderr}")
            self._checked = True
        # Tells postfix-script not to run the same checks again at start-up.
        (self.queue_dir / "quick-start").touch()
        log = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._proc = subprocess.Popen(
                [self._postfix, "-c", str(self.config_dir), "start-fg"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            os.close(log)
        try:
            _wait_port(self.host, self.submission_port, timeout, self._proc, "postfix",
                       self.log_tail)
        except BaseException:
            self.stop()
            raise

    def _master_pid(self) -> int | None:
        pid = _read_pid(self.queue_dir / "pid" / "master.pid")
        return pid if pid is not None and _process_is(pid, POSTFIX_MASTER) else None

    def stop(self, timeout: float = 15.0) -> None:
        """Stops Postfix (master and all its children); the submission port is free after."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # `start-fg` runs the master as a child of postfix-script; the master is a session
        # leader whose process group holds all the daemons. SIGTERM to it stops them all.
        master = self._master_pid()
        if master is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(master, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if master is not None:
            # Daemons that outlive the master would exit at their next idle check otherwise.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(master, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while port_open(self.host, self.submission_port, 0.2):
            if time.monotonic() > deadline:
                raise MailServerError(f"port {self.submission_port} still open after stop:\n"
                                      f"{self.log_tail()}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stops Postfix and removes its directory (when the harness created it)."""
        try:
            self.stop()
        finally:
            if self._own_directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> MailServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- inspection -------------------------------------------------------------------------

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the Postfix log (its maillog_file, captured from stdout)."""
        return _tail(self.log_file, lines)

    def mailbox_dir(self, address: str) -> Path:
        """The Maildir of a virtual mailbox (`<base>/<domain>/<local part>/`)."""
        local, domain = _split(address.lower())
        return self.mail_base / domain / local

    def message_files(self, address: str) -> list[Path]:
        """Delivered message files of a mailbox, oldest first (new/ and cur/)."""
        base = self.mailbox_dir(address)
        files = [p for sub in ("new", "cur") for p in (base / sub).glob("*") if p.is_file()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def messages(self, address: str) -> list[bytes]:
        """The raw delivered messages of a mailbox, oldest first."""
        return [p.read_bytes() for p in self.message_files(address)]

    def wait_for_messages(self, address: str, count: int = 1,
                          timeout: float = 10.0) -> list[bytes]:
        """Waits until the mailbox holds at least `count` messages; returns all of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(address)
            if len(found) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if len(found) < count:
            raise AssertionError(f"{address}: {len(found)} message(s) after {timeout}s, "
                                 f"expected {count}; postfix queue:\n{self.queue()}")
        return found

    def clear(self, address: str | None = None) -> None:
        """Empties one mailbox (or all of them)."""
        for mailbox in (address,) if address else self.mailboxes:
            for path in self.message_files(mailbox):
                path.unlink()

    def queue(self) -> str:
        """`postqueue -p` for this instance (what is deferred or active)."""
        postqueue = _command("postqueue") or "postqueue"
        result = subprocess.run([postqueue, "-c", str(self.config_dir), "-p"],
                                capture_output=True, text=True, check=False)
        return result.stdout + result.stderr

    def client_context(self, *, with_certificate: bool = True,
                       ca: Path | None = None) -> ssl.SSLContext:
        """A client TLS context trusting the test CA (or `ca`), presenting the client cert."""
        context = ssl.create_default_context(cafile=str(ca or self.ca.certificate))
        if with_certificate:
            context.load_cert_chain(self.client_cert.certificate, self.client_cert.private_key)
        return context


class DovecotServer:
    """A private Dovecot serving the Maildirs of a `MailServer` over IMAP on loopback.

    `imap_port` offers STARTTLS, `imaps_port` implicit TLS; both require a client certificate
    from the test CA and then a password login (`password(address)`). `capability`: the
    CAPABILITY list to announce after the login instead of Dovecot's own (e.g. without MOVE
    and UIDPLUS, as an older server; Dovecot still accepts the commands it does not announce).
    """

    def __init__(self, mail: MailServer, *, directory: Path | None = None,
                 password: str = IMAP_PASSWORD, capability: str | None = None) -> None:
        reason = dovecot_unavailable()
        if reason is not None:
            raise MailServerError(reason)
        self._dovecot = _command("dovecot") or "dovecot"
        self.mail = mail
        self.directory = (directory or mail.directory / "dovecot").resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        self.host = HOST
        self.imap_port = free_port()
        self.imaps_port = free_port()
        while self.imaps_port == self.imap_port:
            self.imaps_port = free_port()
        self._password = password
        self._capability = capability
        self.config_file = self.directory / "dovecot.conf"
        self.log_file = self.directory / "dovecot.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    def password(self, address: str) -> str:
        return self._password

    def _write_config(self) -> None:
        passwd = self.directory / "passwd"
        passwd.write_text("".join(f"{a}:{{PLAIN}}{self._password}::::::\n"
                                  for a in self.mail.mailboxes))
        # Read by the auth process, which runs as the `dovecot` user.
        os.chown(passwd, 0, pwd.getpwnam("dovecot").pw_gid)
        passwd.chmod(0o640)
        run = self.directory / "run"
        state = self.directory / "state"
        for path in (run, state):
            path.mkdir(exist_ok=True)
            path.chmod(0o755)
        uid, gid = self.mail.mail_uid, self.mail.mail_gid
        announced = f"imap_capability = {self._capability}\n" if self._capability else ""
        self.config_file.write_text(f"""\
{announced}protocols = imap
listen = {HOST}
base_dir = {run}
state_dir = {state}
instance_name = mssconnector-{self.imap_port}
log_path = {self.log_file}
info_log_path = {self.log_file}
debug_log_path = {self.log_file}
auth_verbose = yes
auth_failure_delay = 0
auth_mechanisms = plain login
disable_plaintext_auth = yes
ssl = required
ssl_cert = <{self.mail.server_cert.certificate}
ssl_key = <{self.mail.server_cert.private_key}
ssl_ca = <{self.mail.ca.certificate}
ssl_verify_client_cert = yes
ssl_require_crl = no
ssl_min_protocol = TLSv1.2
auth_ssl_require_client_cert = yes
first_valid_uid = {min(uid, 1)}
first_valid_gid = {min(gid, 1)}
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:{self.mail.mail_base}/%d/%n
mail_privileged_group =
namespace inbox {{
  inbox = yes
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.mail.mail_base}/%Ld/%Ln
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
""")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        if self.running:
            return
        log = os.open(self.directory / "dovecot.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o644)
        try:
            self._proc = subprocess.Popen(
                [self._dovecot, "-F", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            os.close(log)
        try:
            for port in (self.imap_port, self.imaps_port):
                _wait_port(self.host, port, timeout, self._proc, "dovecot", self.log_tail)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> DovecotServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def log_tail(self, lines: int = 60) -> str:
        out = _tail(self.directory / "dovecot.out", lines)
        return f"{_tail(self.log_file, lines)}\n{out}"

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        return self.mail.client_context(with_certificate=with_certificate)
