"""The outbox contract: leasing, fencing and operators' actions, run against every adapter.

Like tests/contract/test_store_contract.py: every test runs on SQLite and on PostgreSQL (skipped,
with the reason, without MSSCONNECTOR_TEST_PG_DSN); the replica tests are PostgreSQL's only.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from connector.errors import LeaseLost
from connector.store import (
    OutboxItem,
    OutboxKind,
    OutboxLease,
    OutboxState,
    OutboxStore,
)
from connector.store.cipher import PayloadCipher
from tests.contract.conftest import Store, StoreFactory, only_on

KEY_A = b"A" * 32
SMTP = (OutboxKind.SMTP,)
PATIENT_MAIL = (b"To: 279035121518989@patient.mssante.fr\r\nSubject: CR\r\n\r\n"
                b"Compte rendu de DUPONT Jeanne\r\n")
REPLICAS_REASON = ("SQLite is embedded: one store instance per database file (its payload log "
                   "has a single appender)")




def outbox(make_store: StoreFactory, *, cipher: PayloadCipher | None = None) -> Store:
    store = make_store(cipher=cipher)
    conforms: OutboxStore = store  # both adapters implement the port
    assert conforms is store
    return store


def item(n: int = 0, *, tenant: str = "t1", kind: OutboxKind = OutboxKind.SMTP,
         payload: bytes | None = None, not_before: float | None = None) -> OutboxItem:
    return OutboxItem(tenant_id=tenant, kind=kind,
                      payload=payload if payload is not None else f"mail {n}".encode(),
                      message_id=f"<m{n}@connector.example>", envid=f"env-{n}",
                      recipient_domain="hopital.mssante.fr", not_before=not_before)


async def lease(store: Store, *, tenant: str = "t1", limit: int = 10,
                lease_seconds: float = 60.0, now: float | None = None,
                kinds: tuple[OutboxKind, ...] = SMTP) -> list[OutboxLease]:
    return await store.lease(tenant_id=tenant, kinds=kinds, limit=limit,
                             lease_seconds=lease_seconds, now=now)


async def state_of(store: Store, row_id: int) -> OutboxState:
    detail = await store.get_outbox(row_id)
    assert detail is not None
    return detail.summary.state


async def test_enqueue_lease_mark_sent(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    ids = await store.enqueue([item(1), item(2)])
    assert len(ids) == 2
    assert ids[0] < ids[1]
    leases = await lease(store)
    assert [x.id for x in leases] == ids  # oldest first
    first = leases[0]
    assert first.payload == b"mail 1"
    assert first.attempt == 1
    assert first.message_id == "<m1@connector.example>"
    assert first.envid == "env-1"
    assert first.recipient_domain == "hopital.mssante.fr"
    assert first.kind is OutboxKind.SMTP
    assert first.token != leases[1].token
    assert await lease(store) == []  # leased rows are not handed out again
    await store.mark_sent(first.id, first.token, "250")
    detail = await store.get_outbox(first.id)
    assert detail is not None
    assert detail.summary.state is OutboxState.SENT
    assert detail.summary.smtp_code == "250"
    assert detail.summary.sent_at is not None
    assert detail.summary.lease_expires_at is None
    assert detail.payload == b"mail 1"
    with pytest.raises(LeaseLost):  # the token no longer owns the row
        await store.mark_sent(first.id, first.token, "250")
    listed = await store.list_outbox(tenant_id="t1", state=OutboxState.LEASED)
    assert [s.id for s in listed] == [ids[1]]


async def test_enqueue_is_atomic(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    with pytest.raises(ValueError, match="domain"):
        await store.enqueue([item(1), OutboxItem("t1", OutboxKind.SMTP, b"x",
                                                 recipient_domain="ins@patient.fr")])
    with pytest.raises(Exception):  # noqa: B017, PT011 - a foreign key violation, per backend
        await store.enqueue([item(2), OutboxItem("t1", OutboxKind.SMTP, b"x", inbound_id=999)])
    assert await store.list_outbox() == []


async def test_lease_limit_is_per_tenant_and_tenants_are_isolated(
        make_store: StoreFactory) -> None:
    store = outbox(make_store)
    await store.enqueue([item(n, tenant="big") for n in range(20)])
    small = await store.enqueue([item(100, tenant="small")])
    big = await lease(store, tenant="big", limit=5)
    assert len(big) == 5
    assert all(x.tenant_id == "big" for x in big)
    theirs = await lease(store, tenant="small", limit=5)
    assert [x.id for x in theirs] == small  # not behind the other tenant's backlog
    assert await lease(store, tenant="nobody") == []
    assert len(await store.list_outbox(tenant_id="big", state=OutboxState.READY)) == 15


async def test_lease_filters_kinds(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    smtp, hl7 = await store.enqueue([item(1), item(2, kind=OutboxKind.HL7)])
    assert [x.id for x in await lease(store, kinds=(OutboxKind.HL7,))] == [hl7]
    assert [x.id for x in await lease(store, kinds=(OutboxKind.SMTP, OutboxKind.HL7))] == [smtp]


async def test_stale_token_after_release_is_fenced(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    (row_id,) = await store.enqueue([item(1)])
    now = time.time()
    (old,) = await lease(store, lease_seconds=10, now=now)
    (new,) = await lease(store, lease_seconds=10, now=now + 11)  # the first lease expired
    assert new.id == row_id
    assert new.token != old.token
    assert new.attempt == old.attempt + 1 == 2
    before = await store.get_outbox(row_id)
    for transition in (
            store.mark_sent(row_id, old.token, "250"),
            store.mark_failed(row_id, old.token, "550", "refused"),
            store.mark_dead(row_id, old.token, "451", "too many tries"),
            store.schedule_retry(row_id, old.token, now + 100, "451", "later"),
            store.renew(row_id, old.token, 60),
            store.mark_sent(row_id, "not-a-token", "250"),
            store.mark_sent(row_id + 1000, new.token, "250")):
        with pytest.raises(LeaseLost):
            await transition
    assert await store.get_outbox(row_id) == before  # untouched
    await store.mark_sent(row_id, new.token, "250")
    assert await state_of(store, row_id) is OutboxState.SENT


async def test_unexpired_lease_is_not_taken_back_and_renew_extends_it(
        make_store: StoreFactory) -> None:
    store = outbox(make_store)
    (row_id,) = await store.enqueue([item(1)])
    now = time.time()
    (held,) = await lease(store, lease_seconds=10, now=now)
    assert held.expires_at == pytest.approx(now + 10)
    assert await lease(store, now=now + 9) == []
    expiry = await store.renew(row_id, held.token, 30, now=now + 9)
    assert expiry == pytest.approx(now + 39)
    assert await lease(store, now=now + 20) == []  # renewed: still held
    (taken,) = await lease(store, now=now + 40)
    assert taken.attempt == 2
    with pytest.raises(LeaseLost):
        await store.renew(row_id, held.token, 30)


async def test_schedule_retry_respects_available_at(make_store: StoreFactory) -> None:
    store = outbox(make_store, cipher=PayloadCipher({"a": KEY_A}, "a"))
    (row_id,) = await store.enqueue([item(1)])
    now = time.time()
    (first,) = await lease(store, now=now)
    await store.schedule_retry(row_id, first.token, now + 300, "451", "4.3.0 try <p@x> later",
                               error_class="TransientDeliveryError")
    detail = await store.get_outbox(row_id)
    assert detail is not None
    assert detail.summary.state is OutboxState.READY
    assert detail.summary.available_at == pytest.approx(now + 300)
    assert detail.summary.error_code == "451"
    assert detail.summary.error_class == "TransientDeliveryError"
    assert detail.error_detail == "4.3.0 try <p@x> later"
    assert await lease(store, now=now + 299) == []
    (second,) = await lease(store, now=now + 301)
    assert second.attempt == 2
    with pytest.raises(LeaseLost):
        await store.mark_sent(row_id, first.token)


async def test_not_before_delays_the_first_lease(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    now = time.time()
    late, early = await store.enqueue([item(1, not_before=now + 50), item(2)], now=now)
    assert [x.id for x in await lease(store, now=now)] == [early]
    assert [x.id for x in await lease(store, now=now + 51)] == [late]


async def test_failed_dead_and_settle(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    failing, dying, sent = await store.enqueue([item(1), item(2), item(3)])
    leases = {x.id: x for x in await lease(store)}
    await store.mark_failed(failing, leases[failing].token, "550", "5.1.1 user unknown",
                            error_class="PermanentDeliveryError")
    await store.mark_dead(dying, leases[dying].token, "451", "budget spent")
    await store.mark_sent(sent, leases[sent].token, "250")
    assert await state_of(store, failing) is OutboxState.FAILED
    assert await state_of(store, dying) is OutboxState.DEAD
    assert await lease(store) == []  # neither failed nor dead rows are leased
    assert not await store.settle(failing, delivered=True)  # only SENT rows settle
    assert await store.settle(sent, delivered=True)
    assert await state_of(store, sent) is OutboxState.DELIVERED
    summary = (await store.list_outbox(state=OutboxState.FAILED))[0]
    assert (summary.id, summary.error_code, summary.error_class) == (
        failing, "550", "PermanentDeliveryError")


async def test_cancel(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    ready, leased, sent = await store.enqueue([item(1), item(2), item(3)])
    leases = {x.id: x for x in await lease(store, limit=3)}
    await store.mark_sent(sent, leases[sent].token)
    await store.schedule_retry(ready, leases[ready].token, time.time())
    assert await store.cancel(ready)
    assert not await store.cancel(leased)  # being sent: whether it went is not known yet
    assert not await store.cancel(sent)  # never once sent
    assert not await store.cancel(ready)  # already cancelled
    assert await state_of(store, sent) is OutboxState.SENT
    await store.schedule_retry(leased, leases[leased].token, time.time() + 3600)
    assert await store.cancel(leased)  # the attempt over, and not sent: cancelled
    with pytest.raises(LeaseLost):  # the worker that held it can no longer move it
        await store.mark_sent(leased, leases[leased].token)
    assert await state_of(store, leased) is OutboxState.CANCELLED
    assert await lease(store, now=time.time() + 3600) == []
    assert not await store.cancel(12345)


async def test_retry_now(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    now = time.time()
    queued = now - 3 * 86400  # queued three days ago: a 48 h budget is spent
    dead, failed, waiting, leased = await store.enqueue([item(n) for n in range(4)], now=queued)
    leases = {x.id: x for x in await lease(store, now=now)}
    assert all(x.created_at == queued for x in leases.values())
    await store.mark_dead(dead, leases[dead].token, "451")
    await store.mark_failed(failed, leases[failed].token, "550")
    await store.schedule_retry(waiting, leases[waiting].token, now + 3600)
    assert await store.retry_now(dead, now=now)
    assert await store.retry_now(failed, now=now)
    assert await store.retry_now(waiting, now=now)
    assert not await store.retry_now(leased, now=now)  # a worker holds it
    again = await lease(store, now=now + 1)
    assert sorted(x.id for x in again) == sorted([dead, failed, waiting])
    assert all(x.attempt == 2 for x in again)  # attempts are kept
    assert all(x.created_at == now for x in again)  # the budget counts from the retry
    await store.mark_sent(again[0].id, again[0].token)
    assert not await store.retry_now(again[0].id)  # never once sent


async def test_payload_sealed_at_rest(make_store: StoreFactory) -> None:
    store = outbox(make_store, cipher=PayloadCipher({"a": KEY_A}, "a"))
    large = PATIENT_MAIL + b"Z" * 70_000  # SQLite keeps it in the payload log
    small_id, large_id = await store.enqueue([item(1, payload=PATIENT_MAIL),
                                              item(2, payload=large)])
    leases = {x.id: x for x in await lease(store)}
    assert leases[small_id].payload == PATIENT_MAIL
    assert leases[large_id].payload == large
    await store.mark_failed(large_id, leases[large_id].token, "550",
                            "5.1.1 <279035121518989@patient.mssante.fr> unknown")
    detail = await store.get_outbox(large_id)
    assert detail is not None
    assert detail.payload == large
    assert detail.error_detail is not None
    assert "279035121518989" in detail.error_detail
    await store.close()
    at_rest = make_store.stored_bytes()
    assert b"279035121518989" not in at_rest
    assert b"DUPONT" not in at_rest
    assert b"<m1@connector.example>" in at_rest  # metadata stays in clear
    assert b"hopital.mssante.fr" in at_rest
    keys = make_store.query("SELECT DISTINCT payload_key FROM outbox")
    assert keys == [("a",)]


async def test_outbox_rows_survive_reopen(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    (row_id,) = await store.enqueue([item(1)])
    (held,) = await lease(store)
    await store.close()
    reopened = outbox(make_store)
    await reopened.mark_sent(row_id, held.token, "250")  # the lease is durable too
    assert await state_of(reopened, row_id) is OutboxState.SENT


async def test_concurrent_leases_on_one_instance_never_overlap(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    ids = await store.enqueue([item(n) for n in range(60)])
    rounds = await asyncio.gather(*(lease(store, limit=7) for _ in range(12)))
    handed = [x.id for leases in rounds for x in leases]
    assert len(handed) == len(set(handed)) == len(ids)
    assert set(handed) == set(ids)


async def test_concurrent_leases_across_instances_never_overlap(
        make_store: StoreFactory) -> None:
    only_on(make_store, "postgres", REPLICAS_REASON)
    first, second = outbox(make_store), outbox(make_store)
    ids = await first.enqueue([item(n) for n in range(200)])
    rounds = await asyncio.gather(*(lease(store, limit=9)
                                    for _ in range(15) for store in (first, second)))
    handed = [x.id for leases in rounds for x in leases]
    assert len(handed) == len(set(handed))
    assert set(handed) <= set(ids)
    leftover = await asyncio.gather(*(lease(store, limit=200) for store in (first, second)))
    everything = handed + [x.id for leases in leftover for x in leases]
    assert sorted(everything) == sorted(ids)


async def test_concurrent_takeover_of_expired_leases_never_overlaps(
        make_store: StoreFactory) -> None:
    store = outbox(make_store)
    others = [store]
    if make_store.backend == "postgres":
        others.append(outbox(make_store))
    ids = await store.enqueue([item(n) for n in range(40)])
    now = time.time()
    await lease(store, limit=40, lease_seconds=5, now=now)
    rounds = await asyncio.gather(*(lease(s, limit=6, now=now + 10)
                                    for _ in range(8) for s in others))
    handed = [x.id for leases in rounds for x in leases]
    assert sorted(handed) == sorted(ids)
    assert all(x.attempt == 2 for leases in rounds for x in leases)


async def test_migrations_include_the_outbox_and_audit(make_store: StoreFactory) -> None:
    store = outbox(make_store)
    await store.close()
    outbox(make_store)
    versions = [r[0] for r in make_store.query("SELECT version FROM schema_migrations")]
    assert versions == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert make_store.query("SELECT count(*) FROM audit") == [(0,)]
    assert make_store.query("SELECT count(*) FROM receipts") == [(0,)]


async def test_a_row_that_cannot_be_opened_does_not_hold_up_the_batch(
        make_store: StoreFactory) -> None:
    """A row sealed with a key the store no longer has comes back leased with `unreadable`
    set and an empty payload; the rows of the same batch come back whole."""
    sealed_a = outbox(make_store, cipher=PayloadCipher({"a": KEY_A}, "a"))
    (lost_id,) = await sealed_a.enqueue([item(1)], now=time.time() - 10)
    await sealed_a.close()
    store = outbox(make_store, cipher=PayloadCipher({"b": b"B" * 32}, "b"))
    (good_id,) = await store.enqueue([item(2)])
    leases = {x.id: x for x in await lease(store)}
    assert set(leases) == {lost_id, good_id}
    assert leases[good_id].unreadable is None
    assert leases[good_id].payload == b"mail 2"
    assert leases[lost_id].payload == b""
    assert leases[lost_id].unreadable is not None
    assert "'a'" in leases[lost_id].unreadable  # the key id it needs, never the payload
    states = {row.id: row.state for row in await store.list_outbox()}
    assert states == {lost_id: OutboxState.LEASED, good_id: OutboxState.LEASED}
