"""The store port: every state change is a committed row before anything is acknowledged."""

from __future__ import annotations

from typing import Protocol

from connector.store.model import (
    DocumentAction,
    DocumentChange,
    DocumentStatus,
    DocumentVersion,
    EventKind,
    InboundDetail,
    InboundMessage,
    InboundReceipt,
    InboundStatus,
    InboundSummary,
    UnknownOriginalPolicy,
    VersionCheck,
)

__all__ = [
    "DocumentAction",
    "DocumentChange",
    "DocumentStatus",
    "DocumentVersion",
    "EventKind",
    "InboundDetail",
    "InboundMessage",
    "InboundReceipt",
    "InboundStatus",
    "InboundSummary",
    "IntakeStore",
    "UnknownOriginalPolicy",
    "VersionCheck",
]


class IntakeStore(Protocol):
    """What intake and operators need from persistence."""

    def open(self, *, read_only: bool = False) -> None:
        """Connect (and migrate) before use; `read_only` for operators' commands."""
        ...

    async def record_inbound(self, message: InboundMessage) -> InboundReceipt:
        """Store `message` durably (on disk when this returns) unless it is a retransmission
        of a message received within the window, in which case return that one's ACK.
        Raises StoreUnavailable when the store cannot take it."""
        ...

    async def list_inbound(
        self, *, tenant_id: str | None = None, status: InboundStatus | None = None,
        limit: int = 100,
    ) -> list[InboundSummary]: ...

    async def get_inbound(self, inbound_id: int) -> InboundDetail | None: ...

    async def get_documents(self, tenant_id: str) -> list[DocumentVersion]: ...

    async def close(self) -> None: ...
