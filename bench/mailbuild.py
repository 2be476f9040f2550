"""Offline micro-benchmark: `build_mails` on the ~70 KB request of `bench/delivery.py` (one
recipient, one mail of ~100 KB), in this process: no MLLP, no store, no SMTP.

    .venv/bin/python bench/mailbuild.py [--rounds 300] [--message-kb 70] [--digest]

Prints the process CPU time of one call (median and minimum over `--rounds` calls, after two
warm-up calls) of `build_mails` and of its steps, on the same inputs:

* `pdf`: `extract_pdf(parse_xml(cda))`, the PDF rendition (once per request);
* `metadata`: `build_metadata_xml`; `xdm zip`: `build_xdm_zip` (METADATA.XML included);
* `render`: `render_mail` (what `build_mails` uses), with the PDF part's header cache cleared
  before each call (`render cold`: a request whose PDF name was not seen before, the case of
  every request of a real flow) and kept (`render warm`: the next recipients of a request);
* `compose+as_bytes`: `as_bytes(compose_mail(spec))`, the `email`-generated reference that
  `render_mail` must equal (checked here on this request, and by the unit tests);
* `aiosmtplib DATA`: the line-ending normalisation and dot-stuffing that `SMTP.data()` applies to
  every message before sending it (on the delivery worker's event loop, not in `build_mails`).

The machine is shared: compare minimums, and run before/after in alternation.
`--digest` prints the SHA-256 of the mail, the archive and the PDF for a fixed request key and
time: equal digests before and after a change mean the output did not change.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings  # noqa: E402

from bench.delivery import SENDER, build_template  # noqa: E402
from connector.cda.pdf import extract_pdf  # noqa: E402
from connector.cda.safe_xml import parse_xml  # noqa: E402
from connector.cisis.model import DocumentRequest  # noqa: E402
from connector.hl7.message import parse_message  # noqa: E402
from connector.mail import compose  # noqa: E402
from connector.pipeline import mails  # noqa: E402
from connector.pipeline.documents import CisisIntake, UnconfiguredCdaChecker  # noqa: E402
from connector.settings import (  # noqa: E402
    CisisSettings,
    MailboxSettings,
    SendingMatrixProfile,
    TenantSettings,
    TransportSettings,
)
from connector.xdm.archive import build_xdm_zip  # noqa: E402
from connector.xdm.metadata import build_metadata_xml  # noqa: E402

TENANT = TenantSettings(
    id="bench", name="CHU Test", finess=None, application="PFI", facility="CHX",
    listeners=(), transport=TransportSettings(),
    mailbox=MailboxSettings(SENDER, "CHU Test - PFI", "DEV935997"),
    oid="1.2.250.1.71.4.2.2.1120456789",
)
SUBMITTED_AT = datetime(2024, 5, 6, 10, 11, 12, tzinfo=timezone(timedelta(hours=2)))
KEY = "9b0f4f7e-2a7c-4c1e-8d2f-5f3e6a7b8c9d"


def request_of(message_kb: int) -> DocumentRequest:
    """The request `bench/delivery.py` sends, through the CI-SIS intake (no CDA validator)."""
    payload = build_template(message_kb * 1000).message("BENCH1", 1)
    intake = CisisIntake(CisisSettings(sending_matrix=SendingMatrixProfile.ANS_EXAMPLES),
                         UnconfiguredCdaChecker())
    return intake.check(parse_message(payload.decode("utf-8"))).request


def cpu_ms(step: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median and minimum process CPU time of one call, in ms."""
    step()
    step()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        step()
        times.append(1000 * (time.process_time() - start))
    return statistics.median(times), min(times)


def aiosmtplib_data(message: bytes) -> bytes:
    """What `aiosmtplib.SMTP.data()` does to the message before writing it (5.x)."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--message-kb", type=int, default=70)
    parser.add_argument("--digest", action="store_true", help="print output digests and exit")
    args = parser.parse_args()

    request = request_of(args.message_kb)
    context = mails.MailContext.for_tenant(TENANT, request_key=KEY, submitted_at=SUBMITTED_AT)
    (mail,) = mails.build_mails(request, context)
    if args.digest:
        for name, data in (("mail", mail.content), ("zip", mail.xdm_zip),
                           *(("pdf", pdf.content) for pdf in mail.pdfs)):
            print(f"{name:<5}{len(data):>8} bytes  sha256 {hashlib.sha256(data).hexdigest()}")
        return

    document = request.documents[0]
    common = mails._common(request, context)
    recipient = request.sending.recipients[0]
    to_address = mails._recipient_address(recipient)
    submission = mails._submission(request, context, common, recipient, to_address)
    spec = mails._mail_spec(request, context, common, recipient, to_address, mail.xdm_zip)
    if compose.render_mail(spec) != compose.as_bytes(compose.compose_mail(spec)):
        raise SystemExit("render_mail differs from as_bytes(compose_mail(spec))")

    def render_cold() -> bytes:
        compose._pdf_part_headers.cache_clear()
        return compose.render_mail(spec)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("build_mails", lambda: mails.build_mails(request, context)),
        ("pdf", lambda: extract_pdf(parse_xml(document.content))),
        ("metadata", lambda: build_metadata_xml(submission)),
        ("xdm zip", lambda: build_xdm_zip(submission)),
        ("render cold", render_cold),
        ("render warm", lambda: compose.render_mail(spec)),
        ("compose+as_bytes", lambda: compose.as_bytes(compose.compose_mail(spec))),
        ("aiosmtplib DATA", lambda: aiosmtplib_data(mail.content)),
    ]
    print(f"request: CDA {len(document.content) / 1000:.1f} KB; mail "
          f"{len(mail.content) / 1000:.1f} KB (zip {len(mail.xdm_zip) / 1000:.1f} KB, PDF "
          f"{sum(len(p.content) for p in mail.pdfs) / 1000:.1f} KB); CPU ms per call over "
          f"{args.rounds} calls")
    for name, step in steps:
        median, best = cpu_ms(step, args.rounds)
        print(f"  {name:<18} median {median:6.2f}   min {best:6.2f}")


if __name__ == "__main__":
    main()
