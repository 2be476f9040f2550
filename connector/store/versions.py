"""Document version rules, shared by every store adapter (CI-SIS: replace and delete must target
the latest known version, application error 900).

`plan_versions` is pure: given a lookup of the current rows and the changes a request makes, it
returns either a conflict (why the request is refused) or the rows to write. Adapters run it inside
the transaction that stores the inbound row, so two requests racing on one document cannot both
win. Re-sending a request already applied (same target, same new id) is accepted as idempotent;
a document sent again as new after it was replaced or deleted is not (it would go out as a valid
report). A replacement of an original never received (accepted by policy) records that original
as replaced, so that a second, different replacement of it is refused as for a known one.

With `active_in_set` (`VersionCheck.exclusive_sets`: the legacy flows that make each order one
document set, and choose its next version from the store), a new document whose set already has
a current version is refused too: another report of the order was stored after this one read
the set, and both would go out as current.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from connector.store.model import (
    DocumentAction,
    DocumentChange,
    DocumentStatus,
    UnknownOriginalPolicy,
)


@dataclass(frozen=True, slots=True)
class DocumentRow:
    document_id: str
    set_id: str | None
    version: int | None
    status: DocumentStatus
    replaced_by: str | None = None


@dataclass(frozen=True, slots=True)
class VersionPlan:
    conflict: str | None = None
    writes: tuple[DocumentRow, ...] = ()
    unknown_originals: tuple[str, ...] = ()
    resent: tuple[str, ...] = ()


Lookup = Callable[[str], DocumentRow | None]


def plan_versions(lookup: Lookup, changes: Sequence[DocumentChange],
                  policy: UnknownOriginalPolicy, *, active_in_set: Lookup | None = None
                  ) -> VersionPlan:
    """`active_in_set(set_id)`: the set's current version, when new documents must open their
    set (see the module)."""
    pending: dict[str, DocumentRow] = {}
    unknown: list[str] = []
    resent: list[str] = []

    def current(document_id: str) -> DocumentRow | None:
        return pending.get(document_id) or lookup(document_id)

    def new_row(change: DocumentChange, status: DocumentStatus = DocumentStatus.ACTIVE
                ) -> DocumentRow:
        return DocumentRow(change.document_id, change.set_id, change.version, status)

    for change in changes:
        if change.action is DocumentAction.NEW:
            existing = current(change.document_id)
            if existing is None and active_in_set is not None and change.set_id is not None:
                opened = active_in_set(change.set_id)
                if opened is not None and opened.document_id != change.document_id:
                    return VersionPlan(conflict="its document set has a current version since:"
                                                " this one must replace it")
            if existing is None:
                pending[change.document_id] = new_row(change)
            elif existing.status is DocumentStatus.ACTIVE:
                resent.append(change.document_id)
            else:  # sent again as new, it would go out as a valid report
                return VersionPlan(conflict=f"the document sent as new was {existing.status.value}"
                                            " since: it is not the latest version")
            continue
        target_id = change.target_id or change.document_id
        target = current(target_id)
        verb = "replace" if change.action is DocumentAction.REPLACE else "delete"
        if target is None:
            if policy is UnknownOriginalPolicy.REFUSE:
                return VersionPlan(conflict=f"the document to {verb} was never received")
            unknown.append(target_id)
            if change.action is DocumentAction.REPLACE:  # the original, known from now on
                pending[target_id] = DocumentRow(target_id, change.set_id, None,
                                                 DocumentStatus.REPLACED,
                                                 replaced_by=change.document_id)
                pending[change.document_id] = new_row(change)
            else:
                pending[target_id] = DocumentRow(target_id, change.set_id, change.version,
                                                 DocumentStatus.DELETED)
            continue
        if change.action is DocumentAction.REPLACE:
            already = target.replaced_by == change.document_id
            if target.status is DocumentStatus.REPLACED and already:
                resent.append(change.document_id)
                continue
            if target.status is not DocumentStatus.ACTIVE:
                return VersionPlan(conflict=f"the document to replace is not the latest "
                                            f"version (it is {target.status.value})")
            if current(change.document_id) is not None:
                return VersionPlan(conflict="the new version reuses an existing document id")
            pending[target_id] = replace(target, status=DocumentStatus.REPLACED,
                                         replaced_by=change.document_id)
            pending[change.document_id] = new_row(change)
        else:
            if target.status is DocumentStatus.DELETED:
                resent.append(target_id)
                continue
            if target.status is not DocumentStatus.ACTIVE:
                return VersionPlan(conflict="the document to delete is not the latest version "
                                            f"(it is {target.status.value})")
            pending[target_id] = replace(target, status=DocumentStatus.DELETED)
    return VersionPlan(None, tuple(pending.values()), tuple(unknown), tuple(resent))
