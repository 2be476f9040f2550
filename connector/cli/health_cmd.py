"""`mssante-connector healthcheck`: ask the running connector's admin listener if it is alive.

For container health checks (the image's HEALTHCHECK): it reads the configuration as `serve`
does and speaks what `[admin]` says, plain HTTP or, with `[admin.tls]`, HTTPS. The admin
listener's own certificate is the only one trusted (pinned: OpenSSL's partial-chain mode takes
it as the trust anchor), so verification stays on without a CA file to maintain and whatever
name the certificate carries.

Exit codes: 0 healthy (200), 1 not (another status, refused, a TLS failure), 2 a configuration
that names no admin listener or cannot be read. Plain `http.client`: no proxy from the
environment can capture the request.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
from typing import Any

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
        return report_config_error(exc)
    admin = settings.admin
    if admin is None:
        print("configuration error: no [admin] listener to ask", file=sys.stderr)
        return 2
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
            status = connection.getresponse().status
        finally:
            connection.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        print(f"unhealthy: {path} on {host}:{admin.port}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {path} on {host}:{admin.port} answered {status}", file=sys.stderr)
        return 1
    return 0


def pinned_context(tls: ListenerTLS) -> ssl.SSLContext:
    """TLS 1.2+, trusting the admin listener's own certificate file only (its certificates
    are the trust anchors, whoever issued them); the name is not checked, since the pinned
    certificate already says who answers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(tls.certificate))
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False  # before verify_mode: it stays CERT_REQUIRED
    return context
