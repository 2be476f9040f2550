"""`mssante-connector healthcheck`: ask the running connector's admin listener if it is alive.

For container health checks (the image's HEALTHCHECK): it reads the configuration as `serve`
does and speaks what `[admin]` says, plain HTTP or, with `[admin.tls]`, HTTPS. The admin
listener's own certificate (the first of its certificate file) is the only one trusted
(pinned: OpenSSL's partial-chain mode takes it as the trust anchor; the intermediates that
follow it in the file are not anchors, or any certificate of that CA would pass), so
verification stays on without a CA file to maintain and whatever name the certificate carries.

Exit codes, Docker's: 0 healthy (200), 1 not (another status, refused, a TLS failure, a
configuration that names no admin listener or cannot be read; Docker reserves 2). Plain
`http.client`: no proxy from the environment can capture the request.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connector.cli._common import add_config_argument, report_config_error, settings_from
from connector.errors import ConfigError
from connector.settings import ListenerTLS

# A listener bound to every address answers on the loopback one.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 (nothing binds)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "healthcheck", help="GET /healthz (or /readyz) of the admin listener: exit 0 when 200")
    add_config_argument(parser)
    parser.add_argument("--ready", action="store_true",
                        help="ask /readyz (ready to take messages) instead of /healthz (alive)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        report_config_error(exc)
        return 1
    admin = settings.admin
    if admin is None:
        print("configuration error: no [admin] listener to ask", file=sys.stderr)
        return 1
    host = _WILDCARDS.get(admin.host, admin.host)
    path = "/readyz" if args.ready else "/healthz"
    try:
        connection: http.client.HTTPConnection
        if admin.tls is None:
            connection = http.client.HTTPConnection(host, admin.port, timeout=args.timeout)
        else:
            connection = http.client.HTTPSConnection(
                host, admin.port, timeout=args.timeout, context=pinned_context(admin.tls))
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            status = response.status
            # The reason /readyz gives (`tenant not running: chu-x`): short plain text.
            reason = response.read(500).decode("utf-8", errors="replace").strip()
        finally:
            connection.close()
    except (OSError, ValueError, ssl.SSLError, http.client.HTTPException) as exc:
        print(f"unhealthy: {path} on {host}:{admin.port}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {path} on {host}:{admin.port} answered {status}"
              f"{': ' + reason if reason else ''}", file=sys.stderr)
        return 1
    return 0


def pinned_context(tls: ListenerTLS) -> ssl.SSLContext:
    """TLS 1.2+, trusting the admin listener's own certificate only (the first of its file,
    whoever issued it); the name is not checked, since the pinned certificate already says who
    answers. ValueError when the file holds no PEM certificate (as `delivery.tls` reads them)."""
    leaf = x509.load_pem_x509_certificates(Path(tls.certificate).read_bytes())[0]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=leaf.public_bytes(serialization.Encoding.PEM).decode())
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False  # before verify_mode: it stays CERT_REQUIRED
    return context
