"""The directory behind the legacy flows' `Resolver`: a PS national id to the MSSanté addresses
the mapping's mailbox choice picks (red list and trust space applied by the directory)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from connector.directory.annuaire import (
    DirectoryError,
    DirectoryLookup,
    MailboxPreference,
    MailboxRule,
    resolve,
)
from connector.legacy.mapping import MailboxChoice

log = structlog.get_logger(__name__)

_PREFERENCES = {MailboxChoice.PERSONAL: MailboxPreference.PERSONAL,
                MailboxChoice.ORGANISATION: MailboxPreference.ORGANISATION,
                MailboxChoice.ANY: MailboxPreference.ANY}


class DirectoryResolver:
    """`structure_id`: the tenant's structure (e.g. `1` + FINESS), preferred for ORG mailboxes."""

    def __init__(self, lookup: DirectoryLookup, structure_id: str | None = None) -> None:
        self.lookup = lookup
        self.structure_id = structure_id

    def addresses(self, national_id: str, choice: MailboxChoice) -> Sequence[str]:
        rule = MailboxRule(_PREFERENCES[choice], self.structure_id)
        try:
            return [str(m.address) for m in resolve(self.lookup, national_id, rule)]
        except DirectoryError as exc:  # unresolved: the mapping's policy applies
            log.warning("directory_lookup_failed", error=type(exc).__name__)
            return []
