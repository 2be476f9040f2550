"""The store contract: what intake relies on, run against every adapter.

Every test runs on SQLite and on PostgreSQL (the latter skipped, with the reason, when
MSSCONNECTOR_TEST_PG_DSN is unset or unreachable). The few checks that look at what a backend keeps
at rest go through the factory's helpers (tests/contract/conftest.py); the ones that only make sense
for one backend say so when they skip.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest

from connector.errors import PayloadDecryptionError, StoreError, StoreUnavailable
from connector.store import (
    DocumentAction,
    DocumentChange,
    DocumentStatus,
    InboundMessage,
    InboundStatus,
    OutboxItem,
    OutboxKind,
    SentRequest,
    UnknownOriginalPolicy,
    VersionCheck,
)
from connector.store.cipher import PayloadCipher
from connector.store.migrations import MIGRATIONS
from tests.contract.conftest import PostgresFactory, StoreFactory, only_on

KEY_A = b"A" * 32
KEY_B = b"B" * 32




def inbound(raw: bytes = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X1|P|2.5\rPID|1||279035121518989\r", *,
            control_id: str | None = "X1", sender: str = "A", at: float | None = None,
            status: InboundStatus = InboundStatus.ACCEPTED, tenant: str = "t1") -> InboundMessage:
    return InboundMessage(
        tenant_id=tenant, listener="l1", peer="127.0.0.1:1", received_at=at or time.time(),
        raw=raw, digest=hashlib.sha256(raw).digest(), sending_application=sender,
        sending_facility="B", message_type="ADT^A01", control_id=control_id, version="2.5",
        status=status, ack_code="AA" if status is InboundStatus.ACCEPTED else "AE",
        ack=b"MSH|ack-for-" + raw[-12:], error_code=None, error_detail=None)


async def test_record_then_read_back(make_store: StoreFactory) -> None:
    store = make_store()
    message = inbound()
    receipt = await store.record_inbound(message)
    assert receipt.ack == message.ack
    assert receipt.retransmission_of is None
    detail = await store.get_inbound(receipt.inbound_id)
    assert detail is not None
    assert detail.raw == message.raw
    assert detail.summary.control_id == "X1"
    assert detail.summary.size == len(message.raw)
    assert detail.summary.processing_id is None  # not given


async def test_listing_by_status_and_tenant_newest_first(make_store: StoreFactory) -> None:
    """What an operator lists: a tenant's rejected (or accepted) messages, newest first, in a
    time window; the other tenants' and statuses' rows left out."""
    store = make_store()
    start = time.time() - 100
    recorded: list[tuple[int, str, InboundStatus, int]] = []  # (n, tenant, status, id)
    for n in range(12):
        tenant = ("t1", "t2")[n % 2]
        status = InboundStatus.REJECTED if n % 3 == 0 else InboundStatus.ACCEPTED
        raw = f"MSH|^~\\&|A|B|C|D|1||ADT^A01|L{n}|P|2.5\r".encode()
        receipt = await store.record_inbound(
            inbound(raw, control_id=f"L{n}", at=start + n, status=status, tenant=tenant))
        recorded.append((n, tenant, status, receipt.inbound_id))

    def newest_first(tenant: str | None, status: InboundStatus, low: int = 0,
                     high: int = 12) -> list[int]:
        return [i for n, t, s, i in reversed(recorded)
                if tenant in (None, t) and s is status and low <= n < high]

    for tenant in ("t1", "t2"):
        for status in InboundStatus:
            listed = await store.list_inbound(tenant_id=tenant, status=status)
            assert [row.id for row in listed] == newest_first(tenant, status)
            assert len(listed) >= 2
    rejected = await store.list_inbound(status=InboundStatus.REJECTED, limit=2)
    assert [row.id for row in rejected] == newest_first(None, InboundStatus.REJECTED)[:2]
    window = await store.list_inbound(tenant_id="t1", status=InboundStatus.ACCEPTED,
                                      since=start + 4, until=start + 9)
    assert [row.id for row in window] == newest_first("t1", InboundStatus.ACCEPTED, 4, 9)
    assert len(window) == 2  # n = 4 and 8


async def test_msh11_is_kept_for_the_zams(make_store: StoreFactory) -> None:
    store = make_store()
    receipt = await store.record_inbound(replace(inbound(control_id="T1"), processing_id="T"))
    detail = await store.get_inbound(receipt.inbound_id)
    assert detail is not None
    assert detail.summary.processing_id == "T"
    (listed,) = await store.list_inbound(tenant_id="t1")
    assert listed.processing_id == "T"


async def test_msh5_and_msh6_are_kept_for_the_zams(make_store: StoreFactory) -> None:
    store = make_store()
    receipt = await store.record_inbound(replace(
        inbound(control_id="R1"), receiving_application="PFI-X^1.2.3^ISO",
        receiving_facility="Organisation-X"))
    summary = await store.get_inbound_summary(receipt.inbound_id)
    assert summary is not None
    assert (summary.receiving_application, summary.receiving_facility) == (
        "PFI-X^1.2.3^ISO", "Organisation-X")
    other = await store.record_inbound(inbound(control_id="R2"))
    (listed,) = [s for s in await store.list_inbound(tenant_id="t1") if s.id == other.inbound_id]
    assert (listed.receiving_application, listed.receiving_facility) == (None, None)


async def test_retransmission_within_window_returns_first_ack(make_store: StoreFactory) -> None:
    store = make_store()
    first = await store.record_inbound(inbound())
    receipt = await store.record_inbound(replace(inbound(), ack=b"another ack"))
    assert receipt.retransmission_of == first.inbound_id
    assert receipt.ack == first.ack
    rows = await store.list_inbound()
    assert len(rows) == 1
    assert rows[0].retransmissions == 1


async def test_retransmission_outside_window_is_new(make_store: StoreFactory) -> None:
    store = make_store(window=60)
    await store.record_inbound(inbound(at=time.time() - 120))
    receipt = await store.record_inbound(inbound())
    assert receipt.retransmission_of is None
    assert len(await store.list_inbound()) == 2


async def test_reused_control_id_with_other_content(make_store: StoreFactory) -> None:
    store = make_store()
    await store.record_inbound(inbound())
    receipt = await store.record_inbound(inbound(raw=b"MSH|other content"))
    assert receipt.control_id_reused
    assert receipt.retransmission_of is None
    assert [r.control_id_reused for r in await store.list_inbound()] == [True, False]


async def test_no_control_id_is_never_a_retransmission(make_store: StoreFactory) -> None:
    store = make_store()
    await store.record_inbound(inbound(control_id=None))
    await store.record_inbound(inbound(control_id=None))
    assert len(await store.list_inbound()) == 2


async def test_nul_in_header_fields_is_stored(make_store: StoreFactory) -> None:
    store = make_store()
    message = replace(inbound(control_id="X\x001"), sending_application="A\x00")
    first = await store.record_inbound(message)
    again = await store.record_inbound(message)
    assert again.retransmission_of == first.inbound_id
    other = await store.record_inbound(replace(message, control_id="X\x002"))
    assert other.retransmission_of is None
    detail = await store.get_inbound(first.inbound_id)
    assert detail is not None
    assert detail.raw == message.raw


async def test_tenants_are_separate(make_store: StoreFactory) -> None:
    store = make_store()
    await store.record_inbound(inbound(tenant="t1"))
    receipt = await store.record_inbound(inbound(tenant="t2"))
    assert receipt.retransmission_of is None
    assert len(await store.list_inbound(tenant_id="t2")) == 1


async def test_filter_by_status(make_store: StoreFactory) -> None:
    store = make_store()
    await store.record_inbound(inbound(control_id="ok"))
    await store.record_inbound(inbound(raw=b"bad", control_id="ko",
                                       status=InboundStatus.REJECTED))
    rejected = await store.list_inbound(status=InboundStatus.REJECTED)
    assert [r.control_id for r in rejected] == ["ko"]


async def test_concurrent_writes_share_commits(make_store: StoreFactory) -> None:
    store = make_store()
    messages = [inbound(raw=f"MSH|{i}".encode(), control_id=f"C{i}") for i in range(300)]
    receipts = await asyncio.gather(*(store.record_inbound(m) for m in messages))
    assert len({r.inbound_id for r in receipts}) == 300
    assert len(await store.list_inbound(limit=1000)) == 300
    assert store.jobs == 300
    assert store.batches < 300  # group commit: several messages per fsync
    stats = store.commit_stats()
    assert (stats.commits, stats.jobs) == (store.batches, 300)
    assert stats.seconds > 0
    assert list(stats.buckets) == sorted(stats.buckets)  # cumulative
    assert stats.buckets[-1] <= stats.commits  # the rest took longer than the last bound


async def test_concurrent_copies_are_stored_once(make_store: StoreFactory) -> None:
    store = make_store()
    messages = [inbound(raw=f"MSH|twin {i}".encode(), control_id=f"T{i}") for i in range(50)]
    receipts = await asyncio.gather(*(store.record_inbound(m) for m in messages for _ in (1, 2)))
    for i in range(len(messages)):
        pair = receipts[2 * i:2 * i + 2]
        assert [r.retransmission_of is None for r in pair].count(True) == 1
        assert len({r.inbound_id for r in pair}) == 1
    rows = await store.list_inbound(limit=1000)
    assert len(rows) == len(messages)
    assert all(r.retransmissions == 1 and not r.control_id_reused for r in rows)


async def test_rows_survive_reopen(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store()
    await store.record_inbound(inbound())
    await store.close()
    reopened = make_store()
    assert len(await reopened.list_inbound()) == 1


async def test_payload_encrypted_at_rest(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(cipher=PayloadCipher({"a": KEY_A}, "a"))
    message = inbound()
    receipt = await store.record_inbound(message)
    await store.close()
    on_disk = make_store.stored_bytes("store.db*")
    assert b"279035121518989" not in on_disk
    assert b"X1" in on_disk  # metadata for queries stays in clear
    reopened = make_store(cipher=PayloadCipher({"a": KEY_A, "b": KEY_B}, "b"))
    old = await reopened.get_inbound(receipt.inbound_id)
    assert old is not None
    assert old.raw == message.raw
    new_receipt = await reopened.record_inbound(inbound(raw=b"MSH|new", control_id="N1"))
    keys = dict(make_store.query("SELECT control_id, payload_key FROM inbound"))
    assert keys == {"X1": "a", "N1": "b"}
    assert new_receipt.inbound_id != receipt.inbound_id


async def test_missing_key_fails_loudly(make_store: StoreFactory) -> None:
    store = make_store(cipher=PayloadCipher({"a": KEY_A}, "a"))
    receipt = await store.record_inbound(inbound())
    await store.close()
    reopened = make_store(cipher=PayloadCipher({"b": KEY_B}, "b"))
    with pytest.raises(PayloadDecryptionError):
        await reopened.get_inbound(receipt.inbound_id)


async def test_closed_store_is_unavailable(make_store: StoreFactory) -> None:
    store = make_store()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.record_inbound(inbound())


async def test_locked_database_is_unavailable(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(busy_timeout_ms=100)
    with make_store.hold_write_lock(), pytest.raises(StoreUnavailable):
        await store.record_inbound(inbound())
    receipt = await store.record_inbound(inbound())  # recovers once the lock is gone
    assert receipt.inbound_id > 0


async def test_database_file_is_private(make_store: StoreFactory, tmp_path: Path) -> None:
    only_on(make_store, "sqlite", "PostgreSQL keeps its files private to the server")
    make_store()
    mode = stat.S_IMODE(os.stat(tmp_path / "store.db").st_mode)
    assert mode & 0o077 == 0


async def test_migrations_are_recorded_once(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store()
    await store.close()
    make_store()
    versions = [r[0] for r in make_store.query("SELECT version FROM schema_migrations")]
    assert versions == [m.version for m in MIGRATIONS]


LARGE = b"MSH|^~\\&|A|B|C|D|1||ORU^R01|L1|P|2.5\rPID|1||279035121518989\rOBX|1|ED|" + b"Q" * 70_000


@pytest.mark.parametrize("cipher", [None, PayloadCipher({"a": KEY_A}, "a")], ids=["clear", "aes"])
async def test_large_payload_round_trip(make_store: StoreFactory, tmp_path: Path,
                                        cipher: PayloadCipher | None) -> None:
    store = make_store(cipher=cipher)
    receipts = [await store.record_inbound(inbound(raw=LARGE + str(i).encode(),
                                                   control_id=f"L{i}")) for i in range(3)]
    await store.close()
    reopened = make_store(cipher=cipher)
    for i, receipt in enumerate(receipts):
        detail = await reopened.get_inbound(receipt.inbound_id)
        assert detail is not None
        assert detail.raw == LARGE + str(i).encode()
    if make_store.backend == "sqlite":
        segments = list(tmp_path.rglob("segment-*.log"))
        assert segments  # large payloads live in the payload log, not in SQLite pages
    else:  # PostgreSQL keeps them whole in the row's bytea (TOASTed)
        sizes = [r[0] for r in make_store.query("SELECT octet_length(payload) FROM inbound")]
        assert len(sizes) == 3
        assert min(sizes) > len(LARGE)
    on_disk = make_store.stored_bytes()
    assert (b"279035121518989" in on_disk) is (cipher is None)


async def test_corrupted_payload_record_is_detected(make_store: StoreFactory,
                                                    tmp_path: Path) -> None:
    only_on(make_store, "sqlite", "the CRC-checked payload log is SQLite's; PostgreSQL keeps "
            "payloads in bytea (tampering is caught by the cipher, see the next test)")
    store = make_store()
    receipt = await store.record_inbound(inbound(raw=LARGE, control_id="C1"))
    (segment,) = tmp_path.rglob("segment-*.log")
    data = bytearray(segment.read_bytes())
    data[1000] ^= 0xFF  # inside the first record
    segment.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="CRC"):
        await store.get_inbound(receipt.inbound_id)


async def test_tampered_sealed_payload_is_detected(make_store: StoreFactory) -> None:
    store = make_store(cipher=PayloadCipher({"a": KEY_A}, "a"))
    receipt = await store.record_inbound(inbound())
    ((blob,),) = make_store.query("SELECT payload FROM inbound WHERE id = ?",
                                  (receipt.inbound_id,))
    tampered = bytearray(blob)
    tampered[-1] ^= 0xFF
    make_store.execute("UPDATE inbound SET payload = ? WHERE id = ?",
                       (bytes(tampered), receipt.inbound_id))
    with pytest.raises(PayloadDecryptionError):
        await store.get_inbound(receipt.inbound_id)


def doc_request(n: int, *changes: DocumentChange,
                policy: UnknownOriginalPolicy = UnknownOriginalPolicy.ACCEPT) -> InboundMessage:
    return replace(inbound(raw=f"MSH|doc {n}".encode(), control_id=f"D{n}"),
                   versions=VersionCheck(changes, conflict_ack=f"AE-900 for D{n}".encode(),
                                         unknown_original=policy))


NEW_V1 = DocumentChange(DocumentAction.NEW, "1.2.3.1", set_id="1.2.3", version=1)
REPLACE_V1_BY_V2 = DocumentChange(DocumentAction.REPLACE, "1.2.3.2", "1.2.3", 2, "1.2.3.1")
REPLACE_V1_BY_V3 = DocumentChange(DocumentAction.REPLACE, "1.2.3.3", "1.2.3", 3, "1.2.3.1")
DELETE_V2 = DocumentChange(DocumentAction.DELETE, "1.2.3.2", "1.2.3", 2, "1.2.3.2")
DELETE_V1 = DocumentChange(DocumentAction.DELETE, "1.2.3.1", "1.2.3", 1, "1.2.3.1")


def with_mails(message: InboundMessage, key: str | None, *message_ids: str) -> InboundMessage:
    """`message` with its mail key and one queued mail per Message-ID (and a ZAM-like HL7 row)."""
    return replace(message, mail_key=key, outbox=(
        *(OutboxItem(tenant_id=message.tenant_id, kind=OutboxKind.SMTP, payload=b"mail",
                     message_id=mid) for mid in message_ids),
        OutboxItem(tenant_id=message.tenant_id, kind=OutboxKind.HL7, payload=b"MSH|",
                   message_id="Z1")))


@pytest.mark.parametrize("cipher", [None, PayloadCipher({"a": KEY_A}, "a")], ids=["clear", "aes"])
async def test_the_request_that_carried_a_document_and_its_mails(
        make_store: StoreFactory, cipher: PayloadCipher | None) -> None:
    """What a replacement's or a deletion's mails refer to: the key and the mails' Message-IDs
    of the request that wrote each document's version row; the key sealed at rest like a
    payload, and dropped with the payloads by the retention purge."""
    store = make_store(cipher=cipher)
    await store.record_inbound(with_mails(doc_request(1, NEW_V1), "k" * 32, "<a@x>", "<b@x>"))
    await store.record_inbound(with_mails(doc_request(2, REPLACE_V1_BY_V2), "m" * 32, "<c@x>"))
    await store.record_inbound(with_mails(doc_request(3, REPLACE_V1_BY_V3), None, "<d@x>"))
    found = await store.sent_requests("t1", ["1.2.3.1", "1.2.3.2", "1.2.3.3", "9.9"])
    assert found == {"1.2.3.1": SentRequest("k" * 32, frozenset({"<a@x>", "<b@x>"})),
                     "1.2.3.2": SentRequest("m" * 32, frozenset({"<c@x>"}))}
    assert await store.sent_requests("t2", ["1.2.3.1"]) == {}  # another tenant's documents
    assert await store.sent_requests("t1", []) == {}
    stored = make_store.query("SELECT mail_key_id, mail_key FROM inbound WHERE mail_key IS NOT"
                              " NULL ORDER BY id")
    assert [row[0] for row in stored] == ([None, None] if cipher is None else ["a", "a"])
    assert (b"k" * 32 in bytes(stored[0][1])) is (cipher is None)
    for row in await store.list_outbox():  # nothing owed any more: the requests can be purged
        assert await store.cancel(row.id)
    await store.purge_payloads(before=time.time() + 1, now=time.time() + 1)
    assert make_store.query("SELECT count(*) FROM inbound WHERE mail_key IS NOT NULL") == [(0,)]


async def test_document_versions_follow_replace_and_delete(make_store: StoreFactory) -> None:
    store = make_store()
    assert (await store.record_inbound(doc_request(1, NEW_V1))).version_conflict is None
    assert (await store.record_inbound(doc_request(2, REPLACE_V1_BY_V2))).version_conflict is None
    stale = await store.record_inbound(doc_request(3, REPLACE_V1_BY_V3))
    assert stale.version_conflict == (
        "the document to replace is not the latest version (it is replaced)")
    assert stale.ack == b"AE-900 for D3"
    deleted = await store.record_inbound(doc_request(4, DELETE_V2))
    assert deleted.version_conflict is None
    versions = {d.document_id: d.status for d in await store.get_documents("t1")}
    assert versions == {"1.2.3.1": DocumentStatus.REPLACED, "1.2.3.2": DocumentStatus.DELETED}
    rows = {r.control_id: r for r in await store.list_inbound()}
    assert rows["D3"].status is InboundStatus.REJECTED
    assert rows["D3"].error_code == "207"
    assert rows["D3"].ack_code == "AE"
    assert rows["D4"].status is InboundStatus.ACCEPTED


async def test_the_latest_version_of_a_set_is_its_highest_active_or_withdrawn(
        make_store: StoreFactory) -> None:
    """What a legacy report of an order replaces (`results.corrected: replace`), or, once
    withdrawn, numbers its next version from."""
    store = make_store()
    assert await store.latest_version("t1", "1.2.3") is None
    await store.record_inbound(doc_request(1, NEW_V1))
    first = await store.latest_version("t1", "1.2.3")
    assert first is not None
    assert (first.document_id, first.version, first.status) == ("1.2.3.1", 1,
                                                                DocumentStatus.ACTIVE)
    await store.record_inbound(doc_request(2, REPLACE_V1_BY_V2))
    second = await store.latest_version("t1", "1.2.3")
    assert second is not None
    assert (second.document_id, second.version) == ("1.2.3.2", 2)
    assert await store.latest_version("t2", "1.2.3") is None  # another tenant's set
    assert await store.latest_version("t1", "1.2") is None
    await store.record_inbound(doc_request(4, DELETE_V2))
    withdrawn = await store.latest_version("t1", "1.2.3")
    assert withdrawn is not None
    assert (withdrawn.document_id, withdrawn.version, withdrawn.status) == (
        "1.2.3.2", 2, DocumentStatus.DELETED)


async def test_a_message_answered_ar_is_processed_anew_when_sent_again(
        make_store: StoreFactory) -> None:
    """AR asks for the message again: its row (kept for operators) is no retransmission."""
    store = make_store()
    first = await store.record_inbound(replace(
        inbound(control_id="R1"), status=InboundStatus.REJECTED, ack_code="AR", ack=b"AR"))
    again = await store.record_inbound(inbound(control_id="R1"))
    assert again.retransmission_of is None
    assert again.inbound_id != first.inbound_id
    third = await store.record_inbound(inbound(control_id="R1"))  # now AA: a retransmission
    assert third.retransmission_of == again.inbound_id


def exclusive(message: InboundMessage) -> InboundMessage:
    assert message.versions is not None
    return replace(message, versions=replace(message.versions, exclusive_sets=True))


OTHER_V1 = DocumentChange(DocumentAction.NEW, "1.2.3.9", set_id="1.2.3", version=1)


async def test_a_new_document_must_open_an_exclusive_set(make_store: StoreFactory) -> None:
    """Legacy `corrected: replace`: a second version 1 of an order's set is refused (it would
    go out as current beside the first); CI-SIS requests keep their rules."""
    store = make_store()
    assert (await store.record_inbound(exclusive(doc_request(1, NEW_V1)))).version_conflict is None
    refused = await store.record_inbound(exclusive(doc_request(2, OTHER_V1)))
    assert refused.version_conflict == ("its document set has a current version since: this one"
                                        " must replace it")
    assert refused.ack == b"AE-900 for D2"
    again = await store.record_inbound(exclusive(doc_request(3, NEW_V1)))  # the same: a resend
    assert again.version_conflict is None
    assert (await store.record_inbound(exclusive(doc_request(4, REPLACE_V1_BY_V2)))
            ).version_conflict is None
    late = await store.record_inbound(exclusive(doc_request(5, OTHER_V1)))  # v2 is current
    assert late.version_conflict is not None
    other = make_store(name="other.db")
    assert (await other.record_inbound(doc_request(1, NEW_V1))).version_conflict is None
    assert (await other.record_inbound(doc_request(2, OTHER_V1))).version_conflict is None


async def test_two_first_versions_of_one_exclusive_set_at_once_one_wins(
        make_store: StoreFactory) -> None:
    store = make_store()
    receipts = await asyncio.gather(
        store.record_inbound(exclusive(doc_request(1, NEW_V1))),
        store.record_inbound(exclusive(doc_request(2, OTHER_V1))))
    assert sorted(r.version_conflict is None for r in receipts) == [False, True]
    active = [d for d in await store.get_documents("t1") if d.status is DocumentStatus.ACTIVE]
    assert len(active) == 1


@pytest.mark.parametrize("then", [REPLACE_V1_BY_V2, DELETE_V1])
async def test_a_version_sent_again_as_new_after_a_replace_or_delete_is_refused(
        make_store: StoreFactory, then: DocumentChange) -> None:
    """It would go out as a valid report; while it is the latest, the same NEW again is a
    harmless resend."""
    store = make_store()
    await store.record_inbound(doc_request(1, NEW_V1))
    assert (await store.record_inbound(doc_request(2, NEW_V1))).version_conflict is None
    assert (await store.record_inbound(doc_request(3, then))).version_conflict is None
    stale = await store.record_inbound(doc_request(4, NEW_V1))
    status = "replaced" if then is REPLACE_V1_BY_V2 else "deleted"
    assert stale.version_conflict == (
        f"the document sent as new was {status} since: it is not the latest version")
    assert stale.ack == b"AE-900 for D4"
    assert stale.queued == 0


async def test_resending_an_applied_replace_is_idempotent(make_store: StoreFactory) -> None:
    store = make_store()
    await store.record_inbound(doc_request(1, NEW_V1))
    await store.record_inbound(doc_request(2, REPLACE_V1_BY_V2))
    again = await store.record_inbound(doc_request(3, REPLACE_V1_BY_V2))
    assert again.version_conflict is None


@pytest.mark.parametrize("policy", list(UnknownOriginalPolicy))
async def test_unknown_original_follows_policy(make_store: StoreFactory,
                                               policy: UnknownOriginalPolicy) -> None:
    store = make_store()
    receipt = await store.record_inbound(doc_request(1, REPLACE_V1_BY_V2, policy=policy))
    if policy is UnknownOriginalPolicy.ACCEPT:
        assert receipt.version_conflict is None
        assert receipt.unknown_originals == ("1.2.3.1",)
        versions = {d.document_id: d.status for d in await store.get_documents("t1")}
        assert versions == {"1.2.3.1": DocumentStatus.REPLACED, "1.2.3.2": DocumentStatus.ACTIVE}
        # a second, different replacement of that original: refused as for a known one
        fork = await store.record_inbound(doc_request(2, REPLACE_V1_BY_V3, policy=policy))
        assert fork.version_conflict == (
            "the document to replace is not the latest version (it is replaced)")
        again = await store.record_inbound(doc_request(3, REPLACE_V1_BY_V2, policy=policy))
        assert again.version_conflict is None  # the same replacement again: idempotent
    else:
        assert receipt.version_conflict == "the document to replace was never received"
        assert await store.get_documents("t1") == []


async def test_racing_replaces_of_one_version_cannot_both_win(make_store: StoreFactory) -> None:
    store = make_store()
    await store.record_inbound(doc_request(1, NEW_V1))
    first, second = await asyncio.gather(store.record_inbound(doc_request(2, REPLACE_V1_BY_V2)),
                                         store.record_inbound(doc_request(3, REPLACE_V1_BY_V3)))
    assert [first.version_conflict is None, second.version_conflict is None].count(True) == 1


async def test_rejected_requests_do_not_touch_versions(make_store: StoreFactory) -> None:
    store = make_store()
    message = replace(doc_request(1, NEW_V1), status=InboundStatus.REJECTED)
    await store.record_inbound(message)
    assert await store.get_documents("t1") == []


async def test_validation_report_is_sealed(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(cipher=PayloadCipher({"a": KEY_A}, "a"))
    report = b"schematron: patient name DUPONT-SECRET does not match"
    receipt = await store.record_inbound(replace(inbound(), report=report))
    detail = await store.get_inbound(receipt.inbound_id)
    assert detail is not None
    assert detail.report == report
    await store.close()
    on_disk = make_store.stored_bytes()
    assert b"DUPONT-SECRET" not in on_disk


# -- several store instances on one database (replicas) ---------------------------------------

REPLICAS_REASON = ("SQLite is embedded: one store instance per database file (its payload log "
                   "has a single appender)")


async def test_concurrent_opens_migrate_once(make_store: StoreFactory) -> None:
    only_on(make_store, "postgres", REPLICAS_REASON)
    await asyncio.gather(*(asyncio.to_thread(make_store) for _ in range(4)))
    rows = make_store.query("SELECT version FROM schema_migrations")
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


async def test_racing_replaces_across_instances_cannot_both_win(
        make_store: StoreFactory) -> None:
    only_on(make_store, "postgres", REPLICAS_REASON)
    first, second = make_store(), make_store()
    rounds = 25
    for n in range(rounds):
        new = DocumentChange(DocumentAction.NEW, f"9.{n}.1", set_id=f"9.{n}", version=1)
        await first.record_inbound(doc_request(1000 + n, new))
    outcomes = await asyncio.gather(*(
        store.record_inbound(doc_request(
            2000 + 10 * n + k, DocumentChange(DocumentAction.REPLACE, f"9.{n}.{k + 2}",
                                              f"9.{n}", 2, f"9.{n}.1")))
        for n in range(rounds) for k, store in enumerate((first, second))))
    for n in range(rounds):
        pair = outcomes[2 * n:2 * n + 2]
        assert [r.version_conflict is None for r in pair].count(True) == 1
    documents = await second.get_documents("t1")
    replaced = {d.document_id: d.replaced_by for d in documents
                if d.status is DocumentStatus.REPLACED}
    assert len(replaced) == rounds
    active = {d.document_id for d in documents if d.status is DocumentStatus.ACTIVE}
    assert active == set(replaced.values())


async def test_racing_copies_across_instances_are_stored_once(make_store: StoreFactory) -> None:
    only_on(make_store, "postgres", REPLICAS_REASON)
    first, second = make_store(), make_store()
    messages = [inbound(raw=f"MSH|copy {i}".encode(), control_id=f"R{i}") for i in range(50)]
    receipts = await asyncio.gather(*(store.record_inbound(m) for m in messages
                                      for store in (first, second)))
    for i in range(len(messages)):
        pair = receipts[2 * i:2 * i + 2]
        assert [r.retransmission_of is None for r in pair].count(True) == 1
        assert pair[0].ack == pair[1].ack
        assert len({r.inbound_id for r in pair}) == 1
    rows = await first.list_inbound(limit=1000)
    assert len(rows) == len(messages)
    assert all(r.retransmissions == 1 for r in rows)


async def test_racing_new_documents_across_instances_are_created_once(
        make_store: StoreFactory) -> None:
    only_on(make_store, "postgres", REPLICAS_REASON)
    first, second = make_store(), make_store()
    receipts = await asyncio.gather(*(
        store.record_inbound(doc_request(3000 + 10 * n + k, DocumentChange(
            DocumentAction.NEW, f"8.{n}.1", set_id=f"8.{n}", version=1)))
        for n in range(25) for k, store in enumerate((first, second))))
    assert all(r.version_conflict is None for r in receipts)
    documents = await first.get_documents("t1")
    assert len(documents) == 25
    resent = make_store.query("SELECT count(*) FROM events WHERE kind = 'document_resent'")
    assert resent == [(25,)]


async def test_unreachable_database_is_unavailable(make_store: StoreFactory) -> None:
    only_on(make_store, "postgres", "reaching a server is PostgreSQL's concern")
    from connector.store.postgres import PostgresStore

    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout_seconds=2)
    with pytest.raises(StoreUnavailable):
        store.open()


async def test_writers_recover_from_a_lost_connection(make_store: StoreFactory) -> None:
    only_on(make_store, "postgres", "server connections are PostgreSQL's concern")
    from connector.store.postgres import PostgresStore

    assert isinstance(make_store, PostgresFactory)
    name = f"mssc-test-{make_store.token}"
    store = PostgresStore(make_store.dsn_for("store.db"), application_name=name)
    store.open()
    make_store.opened.append(store)
    await store.record_inbound(inbound(raw=b"MSH|before", control_id="B1"))
    killed = make_store.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
        (name,))
    assert killed
    failures: list[str] = []
    for i in range(4):  # a batch on a dead connection answers AR; its writer reconnects
        try:
            await store.record_inbound(inbound(raw=f"MSH|after {i}".encode(),
                                               control_id=f"A{i}"))
        except StoreUnavailable as exc:
            failures.append(str(exc))
    assert len(failures) <= 2  # at most one per writer connection (two by default)
    assert not any("279035121518989" in failure for failure in failures)
    receipt = await store.record_inbound(inbound(raw=b"MSH|last", control_id="Z1"))
    assert (await store.get_inbound(receipt.inbound_id)) is not None


async def test_a_second_sqlite_writer_is_refused(make_store: StoreFactory) -> None:
    only_on(make_store, "sqlite", "the single-writer lock is SQLite's")
    make_store()
    with pytest.raises(StoreUnavailable, match="in use by another connector process"):
        make_store()


async def test_read_only_open_reads_beside_the_writer(make_store: StoreFactory) -> None:
    writer = make_store()
    receipt = await writer.record_inbound(inbound())
    reader = type(writer)(writer.path) if make_store.backend == "sqlite" else writer
    reader.open(read_only=True)
    assert (await reader.get_inbound(receipt.inbound_id)) is not None
    if reader is not writer:
        with pytest.raises(StoreUnavailable, match="read-only"):
            await reader.record_inbound(inbound(control_id="X2"))
        await reader.close()


async def test_disk_usage_grows_with_what_is_stored(make_store: StoreFactory) -> None:
    store = make_store()
    before = await store.disk_usage()
    assert before.database > 0
    big = b"MSH|^~\\&|A|B|C|D|1||ORU^R01|BIG|P|2.5\rOBX|1|ED|||" + os.urandom(40_000).hex().encode()
    for n in range(5):
        await store.record_inbound(inbound(raw=big + str(n).encode(), control_id=f"BIG{n}"))
    after = await store.disk_usage()
    if make_store.backend == "sqlite":  # its payload segments and its file system
        assert after.payloads - before.payloads >= 5 * 80_000
        assert after.free is not None
        assert after.free > 0
    else:  # the whole database, on the server
        assert after.payloads == 0
        assert after.free is None
        assert after.database >= before.database


async def test_a_commit_cut_off_after_the_server_committed_is_confirmed(
        make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the PostgreSQL multi-replica audit: a connection dropped during COMMIT was answered
    AR although the server had committed (the sender, told to send again, was misled and the
    stored ACK said AA). The store now asks a new connection whether the transaction committed:
    yes, the caller gets its receipt; no, it gets StoreUnavailable and nothing is stored."""
    only_on(make_store, "postgres", "the in-doubt COMMIT of a client-server database")
    import contextlib

    import psycopg

    real = psycopg.Connection.transaction
    mode = {"drop": None}  # "after": the server committed; "before": it did not

    @contextlib.contextmanager
    def cut_off(self: psycopg.Connection, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        with contextlib.ExitStack() as stack:
            transaction = stack.enter_context(real(self, *args, **kwargs))
            yield transaction
            if mode["drop"] == "before":
                raise psycopg.OperationalError("server closed the connection unexpectedly")
        if mode["drop"] == "after":
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    store = make_store()
    monkeypatch.setattr(psycopg.Connection, "transaction", cut_off)
    mode["drop"] = "after"
    receipt = await store.record_inbound(inbound(control_id="IN-DOUBT-1"))
    assert receipt.inbound_id > 0
    mode["drop"] = "before"
    with pytest.raises(StoreUnavailable):
        await store.record_inbound(inbound(control_id="IN-DOUBT-2"))
    mode["drop"] = None
    rows = {r.control_id for r in await store.list_inbound()}
    assert rows == {"IN-DOUBT-1"}
