"""What an operator asks of the store, in one place for the HTTP API and the CLI.

Everything returned is plain JSON-ready data without patient data: identifiers, times, codes,
states, the recipient's domain (never the address: a patient's holds the INS), actors.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from connector.store import (
    AuditAction,
    AuditEntry,
    AuditRecord,
    InboundStatus,
    InboundSummary,
    OutboxKind,
    OutboxSummary,
)

if TYPE_CHECKING:
    from connector.store.postgres import PostgresStore
    from connector.store.sqlite import SQLiteStore

    Store = SQLiteStore | PostgresStore

AUDIT_FIELDS = ("id", "at", "tenant_id", "actor", "action", "outbox_id", "inbound_id", "result",
                "detail")


def _plain(value: object) -> Any:
    return value.value if hasattr(value, "value") else value


def as_json(value: InboundSummary | OutboxSummary | AuditRecord) -> dict[str, Any]:
    """A summary row as JSON-ready data (enums as their values)."""
    return {k: _plain(v) for k, v in asdict(value).items()}


async def search_requests(store: Store, *, tenant_id: str | None = None,
                          status: InboundStatus | None = None, since: float | None = None,
                          until: float | None = None, control_id: str | None = None,
                          limit: int = 100) -> list[dict[str, Any]]:
    rows = await store.list_inbound(tenant_id=tenant_id, status=status, since=since,
                                    until=until, control_id=control_id, limit=limit)
    return [as_json(row) for row in rows]


async def timeline(store: Store, inbound_id: int) -> dict[str, Any] | None:
    """received → accepted/rejected → each mail → what happened to it (audit) → each receipt →
    each ZAM, in time order."""
    detail = await store.get_inbound(inbound_id)
    if detail is None:
        return None
    s = detail.summary
    events: list[dict[str, Any]] = [
        {"at": s.received_at, "event": "received", "type": s.message_type,
         "control_id": s.control_id},
        {"at": s.received_at, "event": s.status.value, "ack": s.ack_code,
         "error": s.error_code, "detail": s.error_detail},
    ]
    rows = sorted(await store.list_outbox(inbound_id=inbound_id, limit=10_000),
                  key=lambda r: r.id)
    for row in rows:
        event = "mail" if row.kind is OutboxKind.SMTP else "zam"
        events.append({"at": row.created_at, "event": event, "outbox_id": row.id,
                       "state": row.state.value, "to_domain": row.recipient_domain,
                       "message_id": row.message_id, "delivery": row.delivery_status,
                       "reading": row.read_status})
        for entry in await store.list_audit(outbox_id=row.id):
            events.append({"at": entry.at, "event": entry.action.value, "outbox_id": row.id,
                           "actor": entry.actor, "result": entry.result})
        for receipt in await store.list_returned_mails(outbox_id=row.id):
            events.append({"at": receipt.received_at, "event": "receipt", "outbox_id": row.id,
                           "kind": receipt.kind, "outcome": receipt.outcome,
                           "receipt_id": receipt.id})
    if detail.purged_at is not None:  # the retention purge dropped the message and its mails
        events.append({"at": detail.purged_at, "event": "purged"})
    order = {"received": 0, "accepted": 1, "rejected": 1, "mail": 2, "zam": 2}
    events.sort(key=lambda e: (e["at"], order.get(e["event"], 3)))
    return {"request": as_json(s), "mails": [as_json(r) for r in rows],
            "events": events}


async def retry(store: Store, outbox_id: int, actor: str) -> bool:
    return await store.retry_now(outbox_id, audit=AuditEntry(actor, AuditAction.RETRIED))


async def cancel(store: Store, outbox_id: int, actor: str) -> bool:
    return await store.cancel(outbox_id, audit=AuditEntry(actor, AuditAction.CANCELLED))


AUDIT_PAGE = 10_000  # rows per page of `/api/audit`, and per query of `audit export`
AUDIT_PAGE_MAX = 100_000


async def audit_records(store: Store, *, since: float | None, until: float | None,
                        tenant_id: str | None = None, limit: int = AUDIT_PAGE,
                        after_id: int | None = None) -> list[AuditRecord]:
    """One page of the audit trail, oldest first; `after_id`: the last row of the page before."""
    return await store.list_audit(tenant_id=tenant_id, since=since, until=until, limit=limit,
                                  after_id=after_id)


async def all_audit_records(store: Store, *, since: float | None, until: float | None,
                            tenant_id: str | None = None) -> list[AuditRecord]:
    """The whole audit trail of the period, read a page at a time."""
    records: list[AuditRecord] = []
    while True:
        page = await audit_records(store, since=since, until=until, tenant_id=tenant_id,
                                   limit=AUDIT_PAGE, after_id=records[-1].id if records else None)
        records += page
        if len(page) < AUDIT_PAGE:
            return records


def audit_as_json(records: Sequence[AuditRecord]) -> str:
    return json.dumps([as_json(r) for r in records],
                      ensure_ascii=False, indent=1) + "\n"


def audit_as_csv(records: Sequence[AuditRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(AUDIT_FIELDS)
    for record in records:
        row = asdict(record)
        writer.writerow([_plain(row[name]) if row[name] is not None else ""
                         for name in AUDIT_FIELDS])
    return out.getvalue()
