"""`mssante-connector render FILE... --out DIR`: the MSSanté e-mails a message would produce.

For interface teams. Each message of each file (a new message starts at each `MSH`) goes through
the checks intake runs, offline and with the tenant's settings as `serve` builds them: decoding
(MSH-18, else `default_charset`), parsing, routing, the CI-SIS checks with the tenant's sending
matrix, the trust space (`[directory] whitelist`) and the CDA validator (`[validation]`). Then:

* refused: prints `<file>#<n> MSH-10=<id> AE ERR-3=<code> [ERR-5=<code>] [ERR-2=<location>]
  <detail>`, the answer `serve` would give (CE in enhanced mode, AE on a listener with
  `enhanced_ack = "application"`; AR, or CR, when a CDA has no PDF that this host can render and
  the tenant's `missing_pdf` refuses such requests), and the exit status is 1;
* accepted: builds the mails (`connector.pipeline.mails.build_mails`) and writes to DIR, for the
  k-th message of the run and its i-th mail: `<k>-<i>-<kind>.eml` (the message as sent, CRLF),
  `<k>-<i>-<kind>-IHE_XDM.zip` and `<k>-<i>-<kind>-pdf<j>.pdf`; for a legacy ORU (the tenant's
  `mappings`), also the generated CDA as `<k>-cda<j>.xml`. Files are named by number and
  recipient kind, never by patient, and created readable by the owner only (they hold health
  data). One line per mail gives the recipient address, the Message-ID and the sizes.

The messages are read as the tenant's listener `--listener` reads them (default: its first):
its forced `charset`, and its `enhanced_ack` for the answer printed. Not reproduced offline: the
store's version checks of replacements and deletions (error 900, unknown originals), and the
In-Reply-To/References that `serve` gives a replacement's or a deletion's mails when its store
knows the mails of the original, since render does not know what was sent before; a legacy
mapping with `results.corrected: replace` links the reports of an order within the run only
(the first one rendered is version 1, the next ones replace it), where `serve` starts from the
latest version in its store. Each run uses a fresh
random request key, so Message-IDs differ from run to run and from the ones `serve` will use. No
socket is opened and nothing is stored.

Exit status: 0 when every message is accepted and its mails built, 1 otherwise, 2 for a
configuration, tenant or file problem.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from connector.cda.header import InstanceId
from connector.cisis.model import Action
from connector.cli._common import add_config_argument, report_config_error, settings_from
from connector.cli.send_cmd import split_messages
from connector.errors import ConfigError, MessageError
from connector.hl7.ack import AckError, Outcome, choose_ack_code
from connector.hl7.header import MessageHeader
from connector.legacy.flow import ReportVersion
from connector.pipeline.decide import IntakeDecider, planning_outcome
from connector.pipeline.documents import CisisIntake
from connector.pipeline.mails import MailContext, OutgoingMail, build_mails
from connector.pipeline.outgoing import missing_pdf_policy, patient_mailbox_limit
from connector.settings import ListenerSettings, Settings, TenantSettings


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "render", help="check HL7 files offline and write the MSSanté e-mails they would produce")
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="directory for the .eml, IHE_XDM.zip and PDF files (created)")
    add_config_argument(parser)
    parser.add_argument("--tenant", help="tenant id (required when the configuration has several)")
    parser.add_argument("--listener", help="read the messages as this listener of the tenant "
                                           "does (its charset and enhanced_ack; default: its "
                                           "first listener)")
    parser.set_defaults(handler=run)


@dataclass(frozen=True, slots=True)
class _Offline:
    """The tenant's intake, as `serve` builds it, and where to write."""

    tenant: TenantSettings
    decider: IntakeDecider
    out: Path
    application_ack: bool  # the listener's `enhanced_ack = "application"`
    # The latest version of each legacy report set rendered so far in this run.
    report_sets: dict[InstanceId, ReportVersion] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    try:
        offline = _prepare(args)
    except ConfigError as exc:
        return report_config_error(exc)
    except OSError as exc:
        print(f"{args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    failures = 0
    number = 0
    for path in args.files:
        try:
            messages = split_messages(path.read_bytes())
        except OSError as exc:
            print(f"{path}: {exc.strerror}", file=sys.stderr)
            return 2
        if not messages:
            print(f"{path}: no HL7 message", file=sys.stderr)
            failures += 1
        for index, payload in enumerate(messages, start=1):
            number += 1
            if not _render_one(offline, f"{path}#{index}", number, payload):
                failures += 1
    return 1 if failures else 0


def _prepare(args: argparse.Namespace) -> _Offline:
    from connector.app import build_cda_checker
    from connector.directory.whitelist import load_whitelist
    from connector.observability.logs import configure_logging

    settings = settings_from(args)
    configure_logging(settings.logging)  # logs go to stderr; stdout is the report
    tenant = _tenant(settings, args.tenant)
    listener = _listener(settings, tenant, args.listener)
    MailContext.for_tenant(tenant, request_key="check", submitted_at=datetime.now().astimezone())
    whitelist = load_whitelist(settings.whitelist) if settings.whitelist else None
    checker = build_cda_checker(settings, tenant.cisis.schematron_policy)
    args.out.mkdir(parents=True, exist_ok=True, mode=0o700)
    from connector.app import open_directory
    from connector.tenants import build_legacy

    index = settings.tenants.index(tenant)
    directory = open_directory(settings, whitelist)
    decider = IntakeDecider(CisisIntake(tenant.cisis, checker, whitelist,
                                        returns_zams=tenant.returns_zams),
                            legacy=build_legacy(tenant, f"tenants[{index}]", settings.source,
                                                directory),
                            forced_charset=listener.charset if listener else None,
                            default_charset=settings.default_charset)
    return _Offline(tenant, decider, args.out, application_ack=(
        listener is not None and listener.application_ack))


def _tenant(settings: Settings, tenant_id: str | None) -> TenantSettings:
    if tenant_id is None:
        if len(settings.tenants) > 1:
            raise ConfigError("--tenant", "the configuration has several tenants: name one",
                              source=settings.source)
        return settings.tenants[0]
    try:
        return settings.tenant(tenant_id)
    except KeyError:
        raise ConfigError("--tenant", f"no tenant {tenant_id!r} in the configuration",
                          source=settings.source) from None


def _listener(settings: Settings, tenant: TenantSettings, name: str | None
              ) -> ListenerSettings | None:
    """The listener named, else the tenant's first; None for a tenant without listener."""
    if name is None:
        return tenant.listeners[0] if tenant.listeners else None
    for listener in tenant.listeners:
        if listener.name == name:
            return listener
    names = ", ".join(repr(listener.name) for listener in tenant.listeners)
    raise ConfigError("--listener", f"tenant {tenant.id!r} has no listener {name!r} (it has "
                                    f"{names})", source=settings.source)


# -- one message -----------------------------------------------------------------------------------


def _render_one(offline: _Offline, where: str, number: int, payload: bytes) -> bool:
    decider = offline.decider
    decision = decider.first_pass(payload)
    report_set = decider.report_set(decision)
    if report_set is not None:
        decision = replace(decision, previous=offline.report_sets.get(report_set))
    if decision.needs_document_checks:
        decision = decider.check_documents(decision)
    header = decision.header
    label = f"{where} [{number:03d}] MSH-10={header.control_id if header else '?'}"
    if decision.outcome is not Outcome.ACCEPTED:
        print(f"{label} {_ack_code(offline, header, decision.outcome)} "
              f"{_err(decision.errors[0])}")
        return False
    accepted = _ack_code(offline, header, Outcome.ACCEPTED)
    if decision.verdict is None:
        print(f"{label} {accepted} not a document request: no e-mail")
        return True
    request = decision.verdict.request
    context = MailContext.for_tenant(offline.tenant, request_key=str(uuid.uuid4()),
                                     submitted_at=datetime.now().astimezone())
    try:
        mails = build_mails(request, context)
    except MessageError as exc:
        print(f"{label} {accepted} (serve accepts it) but its e-mails cannot be built: "
              f"{_err(AckError.from_exception(exc))}")
        return False
    try:  # what serve's planner decides too (pipeline.outgoing, pipeline.decide)
        missing_pdf_policy(offline.tenant, mails)
        mails, withheld = patient_mailbox_limit(offline.tenant, mails)
    except MessageError as exc:
        print(f"{label} {_ack_code(offline, header, planning_outcome(exc))} "
              f"{_err(AckError.from_exception(exc))}")
        return False
    print(f"{label} {accepted} {len(mails)} e-mail(s), route {request.sending.route.value}")
    cda = request.documents[0].header
    if report_set is not None and cda.version_number is not None:
        offline.report_sets[report_set] = ReportVersion(
            cda.document_id, report_set, cda.version_number, request.documents[0].content,
            tuple(r.address for r in request.sending.recipients),
            withdrawn=request.action is Action.DELETE)
    if decision.legacy:  # the generated documents, to develop a mapping offline
        for k, document in enumerate(request.documents, start=1):
            _write(offline.out / f"{number:03d}-cda{k}.xml", document.content)
            print(f"  generated CDA {k}: {number:03d}-cda{k}.xml ({request.sending.matrix_source})")
    for warning in decision.verdict.warnings + withheld:
        print(f"  warning {_err(warning)}")
    for mail in mails:
        print(_write_mail(offline.out, number, mail))
    return True


def _ack_code(offline: _Offline, header: MessageHeader | None, outcome: Outcome) -> str:
    code = choose_ack_code(header, outcome, application_ack=offline.application_ack)
    return code.value if code is not None else "(no ACK: MSH-15/16)"


def _err(error: AckError) -> str:
    parts = [f"ERR-3={error.condition.code}"]
    if error.application_error is not None:
        parts.append(f"ERR-5={error.application_error.code}")
    if error.location is not None:
        parts.append(f"ERR-2={error.location.to_hl7()}")
    return " ".join([*parts, error.detail]).rstrip()


# -- files -----------------------------------------------------------------------------------------


def _write_mail(out: Path, number: int, mail: OutgoingMail) -> str:
    """Write the mail and its attachments; the report line for it."""
    stem = f"{number:03d}-{mail.index}-{mail.kind.value}"
    _write(out / f"{stem}.eml", mail.content)
    _write(out / f"{stem}-IHE_XDM.zip", mail.xdm_zip)
    for j, pdf in enumerate(mail.pdfs, start=1):
        _write(out / f"{stem}-pdf{j}.pdf", pdf.content)
    sizes = "+".join(str(len(p.content)) for p in mail.pdfs) or "none"
    line = (f"  mail {mail.index} {mail.kind.value} To={mail.recipient} "
            f"Message-ID={mail.message_id} eml={len(mail.content)} "
            f"IHE_XDM.zip={len(mail.xdm_zip)} pdf={sizes} files={stem}*")
    if mail.missing_pdfs:
        missing = ", ".join(f"OBX {m.obx_sequence}: {m.problem}" for m in mail.missing_pdfs)
        line += f" (no PDF rendition: {missing})"
    return line


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
