"""Payload encryption at rest: AES-256-GCM, each sealed payload naming its key id.

Keys rotate by adding a new key and making it current: old rows still name the key that sealed
them, so they open as long as that key stays in the key ring. The associated data binds a payload
to its kind ("inbound", "mail"...), so a blob cannot be moved to another column unnoticed.

Identifiers the store must find rows by (a patient's IPP or INS) are not kept in clear either:
`index` gives a keyed digest (HMAC-SHA256 under a key derived from the current key) to store and
`index_candidates` the digests to look for, one per key of the ring, so rows indexed before a
rotation are still found. Without keys the digest is a plain SHA-256 (nothing is secret then).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector.errors import PayloadDecryptionError
from connector.recent import Recent

_NONCE_BYTES = 12
_TAG_BYTES = 16
_INDEX_LABEL = b"mssante-connector lookup index"


@dataclass(frozen=True, slots=True)
class SealedPayload:
    key_id: str | None  # None: stored in clear (no key configured)
    blob: bytes = field(repr=False)


class PayloadCipher:
    """Seals and opens payloads. With no keys it is the identity (clear storage)."""

    def __init__(self, keys: Mapping[str, bytes] | None = None, current_key_id: str | None = None
                 ) -> None:
        self._keys = {k: AESGCM(v) for k, v in (keys or {}).items()}
        self._index_keys = {k: hmac.digest(v, _INDEX_LABEL, "sha256")
                            for k, v in (keys or {}).items()}
        if current_key_id is not None and current_key_id not in self._keys:
            raise ValueError("current key id is not in the key ring")
        self._current = current_key_id
        # A patient's identifiers come back with each of its messages: their digests (one
        # HMAC per key of the ring) are computed once. The key ring never changes after this.
        self._candidates: Recent[tuple[bytes, str], tuple[bytes, ...]] = Recent(2048)

    @property
    def enabled(self) -> bool:
        return self._current is not None

    def seal(self, plaintext: bytes, kind: str) -> SealedPayload:
        if self._current is None:
            return SealedPayload(None, plaintext)
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = self._keys[self._current].encrypt(nonce, plaintext, kind.encode())
        return SealedPayload(self._current, nonce + ciphertext)

    def open(self, sealed: SealedPayload, kind: str) -> bytes:
        if sealed.key_id is None:
            return sealed.blob
        aead = self._keys.get(sealed.key_id)
        if aead is None:
            raise PayloadDecryptionError(f"payload key {sealed.key_id!r} is not configured")
        nonce, ciphertext = sealed.blob[:_NONCE_BYTES], sealed.blob[_NONCE_BYTES:]
        if len(ciphertext) < _TAG_BYTES:  # truncated: AESGCM would raise ValueError on the nonce
            raise PayloadDecryptionError(
                f"payload sealed with key {sealed.key_id!r} is truncated")
        try:
            return aead.decrypt(nonce, ciphertext, kind.encode())
        except InvalidTag as exc:
            raise PayloadDecryptionError(
                f"payload sealed with key {sealed.key_id!r} failed authentication") from exc

    def index(self, value: bytes, kind: str) -> bytes:
        """The lookup digest to store for `value` (an identifier) of `kind`."""
        return self._digest(self._current, value, kind)

    def index_candidates(self, value: bytes, kind: str) -> tuple[bytes, ...]:
        """Every digest `value` may be stored under: `index`'s first, then the other keys'
        (rows indexed before a rotation), then the keyless one (before encryption)."""
        known = self._candidates.get((value, kind))
        if known is not None:
            return known
        others = (k for k in (*self._index_keys, None) if k != self._current)
        digests = tuple(dict.fromkeys([self.index(value, kind),
                                       *(self._digest(k, value, kind) for k in others)]))
        self._candidates.put((value, kind), digests)
        return digests

    def _digest(self, key_id: str | None, value: bytes, kind: str) -> bytes:
        message = kind.encode() + b"\x00" + value
        if key_id is None:
            return hashlib.sha256(message).digest()
        return hmac.digest(self._index_keys[key_id], message, "sha256")
