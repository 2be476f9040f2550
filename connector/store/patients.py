"""The patient context rules both store adapters share: how a `PatientChange` is applied inside
the transaction that records its inbound message, and the lookups. Statements are written with
`?` placeholders (the PostgreSQL adapter turns them into `%s`, and an `Expr` parameter into its
SQL text).

Tables (migration 5):

* `patients`: one row per patient of a tenant, its context sealed (associated data "patient");
  `merged_into` is set on a patient absorbed by a merge, and the row is kept;
* `patient_identifiers`: (tenant, kind, authority, digest) → patient. Every IPP a patient was
  known by (its own, the ones merged into it, the one an A47 replaced) and its current INS. The
  value is kept only as `PayloadCipher.index` digest; lookups try the digests of every key of
  the ring (`index_candidates`), so a key rotation does not lose patients. A merge repoints the
  absorbed patient's identifiers, so a lookup is one hop whatever the chain of merges;
* `patient_history`: what each message did to which patient (created, updated, merged,
  absorbed, identifier_changed) and the sections it set, never values.

An INS finds the patient whose last message carried it (a message carries the whole PID: an INS
it no longer has stops finding it).

Reading and writing are apart so that PostgreSQL can read the patients of a whole group of
messages in the round trip it already makes, and queue every write: `PatientReads` holds what
was read, and what the changes applied so far did, so that a later change of the group sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from connector.recent import Recent
from connector.store._shared import placeholders
from connector.store.cipher import PayloadCipher, SealedPayload
from connector.store.model import (
    IdentifierKind,
    PatientAction,
    PatientChange,
    PatientHistoryEntry,
    PatientKey,
    StoredPatient,
)

PATIENT_KIND = "patient"  # cipher associated data of patient contexts
_INDEX_KINDS = {IdentifierKind.IPP: "patient-ipp", IdentifierKind.INS: "patient-ins"}

_INSERT_PATIENT = ("INSERT INTO patients (tenant_id, context_key, context, created_at,"
                   " updated_at, inbound_id) VALUES (?, ?, ?, ?, ?, ?)")
_UPDATE_PATIENT = ("UPDATE patients SET context_key = ?, context = ?, updated_at = ?,"
                   " inbound_id = ? WHERE id = ?")
_ABSORB_PATIENT = "UPDATE patients SET merged_into = ?, updated_at = ?, inbound_id = ? WHERE id = ?"
_REPOINT = ("UPDATE patient_identifiers SET patient_id = ?, inbound_id = ?, updated_at = ?"
            " WHERE patient_id = ?")
_DROP_INS = "DELETE FROM patient_identifiers WHERE patient_id = ? AND kind = 'ins'"
_UPSERT_IDENTIFIER = (
    "INSERT INTO patient_identifiers (tenant_id, kind, authority, digest, patient_id, inbound_id,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant_id, kind, authority, digest) DO UPDATE SET"
    " patient_id = excluded.patient_id, inbound_id = excluded.inbound_id,"
    " updated_at = excluded.updated_at")
_HISTORY = ("INSERT INTO patient_history (tenant_id, patient_id, inbound_id, event, action,"
            " other_patient_id, detail, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")

PATIENT_COLUMNS = ("p.id, p.tenant_id, p.context_key, p.context, p.created_at, p.updated_at,"
                   " p.inbound_id")
HISTORY_SQL = ("SELECT id, patient_id, inbound_id, event, action, other_patient_id, detail, at"
               " FROM patient_history WHERE tenant_id = ? AND patient_id = ? ORDER BY id")


@dataclass(frozen=True, slots=True)
class Expr:
    """A parameter the database computes (PostgreSQL: the id of the row this session inserted
    last, by `currval`), given where a value would be."""

    sql: str


Id = int | Expr


class Db(Protocol):
    """The transaction, as the rules need it."""

    def execute(self, sql: str, params: Sequence[Any]) -> None:
        """Run `sql` (PostgreSQL queues it in the pipeline)."""
        ...

    def insert(self, sql: str, params: Sequence[Any], table: str) -> Id:
        """Run an INSERT into `table`; the new row's id (or how the database names it)."""
        ...


@dataclass(frozen=True, slots=True)
class _Found:
    id: int
    context_key: str | None
    context: bytes
    digest: bytes  # the one of the identifier it was found by


class PatientReads:
    """The patients a group of changes finds by their identifiers (one query, `query()`, whose
    rows go to `load()`), and what the changes applied since did to them."""

    def __init__(self, cipher: PayloadCipher,
                 changes: Iterable[tuple[str, PatientChange]]) -> None:
        self.cipher = cipher
        self._candidates: dict[tuple[str, PatientKey], tuple[bytes, ...]] = {}
        for tenant_id, change in changes:
            for key in (*change.lookup_keys, *((change.ins,) if change.ins else ())):
                if (tenant_id, key) not in self._candidates:
                    self._candidates[tenant_id, key] = cipher.index_candidates(
                        _value(key), _INDEX_KINDS[key.kind])
        self._rows: dict[tuple[str, str, str], list[tuple[bytes, int]]] = {}
        self._contexts: dict[int, tuple[str | None, bytes]] = {}
        self._merged_into: dict[int, int] = {}
        self._later: Callable[[], Iterable[Sequence[Any]]] | None = None

    def query(self, lock: str = "") -> tuple[str, tuple[Any, ...]] | None:
        """The read (`?` placeholders), None when there is nothing to read. `lock` ends it
        (PostgreSQL: ` FOR UPDATE OF p`, so that a writer reaching one of these patients
        through another identifier waits for this transaction)."""
        if not self._candidates:
            return None
        params: list[Any] = []
        for (tenant_id, key), digests in self._candidates.items():
            params += [_text(tenant_id), key.kind.value, _text(key.authority), *digests]
        shape = (tuple(len(digests) for digests in self._candidates.values()), lock)
        sql = _LOOKUPS.get(shape)
        if sql is None:
            sql = _lookup_sql(*shape)
            _LOOKUPS.put(shape, sql)
        return sql, tuple(params)

    def load_later(self, fetch: Callable[[], Iterable[Sequence[Any]]]) -> None:
        """The rows of `query()`, to `load()` when first needed (PostgreSQL: they come back
        with the next round trip, which the group makes anyway)."""
        self._later = fetch

    def load(self, rows: Iterable[Sequence[Any]]) -> None:
        for tenant_id, kind, authority, digest, patient_id, context_key, context in rows:
            self._rows.setdefault((tenant_id, kind, authority), []).append(
                (bytes(digest), int(patient_id)))
            self._contexts.setdefault(int(patient_id), (context_key, bytes(context)))

    def find(self, tenant_id: str, key: PatientKey) -> _Found | None:
        """The patient `key` finds (under its most current digest when several rows match),
        through the merges applied since the read, with its latest context."""
        if self._later is not None:
            fetch, self._later = self._later, None
            self.load(fetch())
        candidates = self._candidates[tenant_id, key]
        rank = {digest: n for n, digest in enumerate(candidates)}
        rows = [row for row in self._rows.get((_text(tenant_id), key.kind.value,
                                               _text(key.authority)), ())
                if row[0] in rank]
        if not rows:
            return None
        digest, patient_id = min(rows, key=lambda row: rank[row[0]])
        while patient_id in self._merged_into:
            patient_id = self._merged_into[patient_id]
        context_key, context = self._contexts[patient_id]
        return _Found(patient_id, context_key, context, digest)

    def current_digest(self, tenant_id: str, key: PatientKey) -> bytes:
        return self._candidates[tenant_id, key][0]

    def wrote(self, patient_id: int, context_key: str | None, context: bytes) -> None:
        self._contexts[patient_id] = (context_key, context)

    def absorbed(self, patient_id: int, into: int) -> None:
        self._merged_into[patient_id] = into

    def pointed(self, tenant_id: str, key: PatientKey, patient_id: Id) -> None:
        """`key` finds `patient_id` now (an `Expr`: a patient this group created, which no
        later change of the group can reach: forget the rows)."""
        candidates = set(self._candidates[tenant_id, key])
        where = (_text(tenant_id), key.kind.value, _text(key.authority))
        rows = [row for row in self._rows.get(where, ()) if row[0] not in candidates]
        if isinstance(patient_id, int):
            rows.append((self.current_digest(tenant_id, key), patient_id))
        self._rows[where] = rows

    def dropped_ins(self, patient_id: int) -> None:
        for where, rows in self._rows.items():
            if where[1] == IdentifierKind.INS.value:
                self._rows[where] = [row for row in rows if row[1] != patient_id]


def apply_change(db: Db, reads: PatientReads, tenant_id: str, change: PatientChange,
                 inbound_id: Id, now: float) -> None:
    """Apply `change`, recorded with the inbound row `inbound_id`, to the patients `reads`
    found (and tell it what changed)."""
    cipher = reads.cipher
    keys = change.lookup_keys
    found = [reads.find(tenant_id, key) for key in keys]
    survivor, *others = found
    absorbed = list({row.id: row for row in others
                     if row is not None and (survivor is None or row.id != survivor.id)
                     }.values())
    action = (PatientAction.IDENTIFIER_CHANGED if change.identifier_change
              else PatientAction.UPDATED)
    if survivor is None and absorbed:  # the IPP is new: the (first) absorbed patient takes it
        survivor, action = absorbed.pop(0), PatientAction.IDENTIFIER_CHANGED
    current = (cipher.open(SealedPayload(survivor.context_key, survivor.context), PATIENT_KIND)
               if survivor is not None else None)
    sealed = cipher.seal(change.apply(current), PATIENT_KIND)
    patient_id: Id
    if survivor is None:
        patient_id = db.insert(_INSERT_PATIENT, (_text(tenant_id), sealed.key_id, sealed.blob,
                                                 now, now, inbound_id), "patients")
        action = PatientAction.CREATED
    else:
        patient_id = survivor.id
        db.execute(_UPDATE_PATIENT, (sealed.key_id, sealed.blob, now, inbound_id, patient_id))
        reads.wrote(patient_id, sealed.key_id, sealed.blob)

    def history(patient: Id, what: PatientAction, other: Id | None, detail: str | None
                ) -> None:
        db.execute(_HISTORY, (_text(tenant_id), patient, inbound_id, change.event, what.value,
                              other, detail, now))

    def upsert(key: PatientKey) -> None:
        db.execute(_UPSERT_IDENTIFIER, (
            _text(tenant_id), key.kind.value, _text(key.authority),
            reads.current_digest(tenant_id, key), patient_id, inbound_id, now))
        reads.pointed(tenant_id, key, patient_id)

    history(patient_id, action, None, ",".join(change.sections) or None)
    for other in absorbed:
        db.execute(_REPOINT, (patient_id, inbound_id, now, other.id))
        db.execute(_ABSORB_PATIENT, (patient_id, now, inbound_id, other.id))
        history(other.id, PatientAction.ABSORBED, patient_id, None)
        history(patient_id, PatientAction.MERGED, other.id, None)
        if isinstance(patient_id, int):
            reads.absorbed(other.id, patient_id)
    for key, row in zip(keys, found, strict=True):
        if not _holds(row, patient_id, reads.current_digest(tenant_id, key)):
            upsert(key)
    ins = change.ins
    if ins is None or absorbed or not _holds(reads.find(tenant_id, ins), patient_id,
                                             reads.current_digest(tenant_id, ins)):
        if survivor is not None:
            db.execute(_DROP_INS, (survivor.id,))
            reads.dropped_ins(survivor.id)
        if ins is not None:
            upsert(ins)


def _lookup_sql(digests_per_key: tuple[int, ...], lock: str) -> str:
    """`PatientReads.query`'s text for identifiers with these numbers of candidate digests."""
    clauses = [f"(i.tenant_id = ? AND i.kind = ? AND i.authority = ? AND i.digest IN"
               f" ({placeholders(count)}))" for count in digests_per_key]
    # Only placeholders and constant column names are interpolated.
    return ("SELECT i.tenant_id, i.kind, i.authority, i.digest, p.id, p.context_key,"  # noqa: S608
            " p.context FROM patient_identifiers i JOIN patients p ON p.id = i.patient_id"
            f" WHERE {' OR '.join(clauses)} ORDER BY p.id{lock}")


# The lookup's text by its shape: a few shapes (the IPP and the INS, the keys of the ring).
_LOOKUPS: Recent[tuple[tuple[int, ...], str], str] = Recent(64)


def find_patient_query(cipher: PayloadCipher, tenant_id: str, *, ipp: str | None,
                       authority: str | None, ins: str | None) -> tuple[str, tuple[Any, ...]]:
    """The patients (`PATIENT_COLUMNS`) an IPP or an INS finds (`?` placeholders)."""
    if (ipp is None) == (ins is None):
        raise ValueError("look a patient up by its IPP or by its INS")
    key = (PatientKey(IdentifierKind.IPP, authority or "", ipp) if ipp is not None
           else PatientKey(IdentifierKind.INS, authority or "", ins or ""))
    digests = cipher.index_candidates(_value(key), _INDEX_KINDS[key.kind])
    where = f"i.tenant_id = ? AND i.kind = ? AND i.digest IN ({placeholders(len(digests))})"
    params: tuple[Any, ...] = (_text(tenant_id), key.kind.value, *digests)
    if authority is not None:
        where += " AND i.authority = ?"
        params += (_text(authority),)
    # Only placeholders and constant column names are interpolated.
    sql = (f"SELECT {PATIENT_COLUMNS} FROM patients p WHERE p.id IN"  # noqa: S608
           f" (SELECT i.patient_id FROM patient_identifiers i WHERE {where})")
    return sql, params


def patient_from_rows(cipher: PayloadCipher, rows: Sequence[Sequence[Any]]
                      ) -> StoredPatient | None:
    """The one patient of `find_patient_query`'s rows, opened; ValueError when several."""
    if not rows:
        return None
    if len(rows) > 1:
        raise ValueError("this identifier finds several patients: give its authority")
    row = rows[0]
    context = cipher.open(SealedPayload(row[2], bytes(row[3])), PATIENT_KIND)
    return StoredPatient(int(row[0]), row[1], context, row[4], row[5], int(row[6]))


def history_from_row(row: Sequence[Any]) -> PatientHistoryEntry:
    return PatientHistoryEntry(int(row[0]), int(row[1]), int(row[2]), row[3],
                               PatientAction(row[4]), None if row[5] is None else int(row[5]),
                               row[6], row[7])


def _holds(found: _Found | None, patient_id: Id, digest: bytes) -> bool:
    """Whether the identifier row `found` came from already says what the change writes."""
    return found is not None and found.id == patient_id and found.digest == digest


def _value(key: PatientKey) -> bytes:
    return key.value.encode("utf-8", "surrogatepass")


def _text(text: str) -> str:
    """PostgreSQL text cannot hold NUL (SQLite can): both store the same replacement."""
    return text.replace("\x00", "\ufffd")
