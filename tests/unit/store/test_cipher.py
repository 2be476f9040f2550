"""AES-GCM payload sealing: round trip, rotation, tampering, kind binding, clear storage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import PayloadDecryptionError
from connector.store.cipher import PayloadCipher, SealedPayload
from tests.conftest import CISIS_FIXTURES

K1 = bytes(range(32))
K2 = bytes(range(64, 96))
PAYLOAD = b"MSH|^~\\&|SIL-Y|labo|PFI-X|Organisation-X|202106060931||ORU^R01^ORU_R01|015|P|2.5\r"


@pytest.fixture
def cipher() -> PayloadCipher:
    return PayloadCipher({"k1": K1}, "k1")


def test_round_trip(cipher: PayloadCipher) -> None:
    sealed = cipher.seal(PAYLOAD, "inbound")
    assert cipher.enabled
    assert sealed.key_id == "k1"
    assert PAYLOAD not in sealed.blob
    assert len(sealed.blob) == 12 + len(PAYLOAD) + 16  # nonce + ciphertext + tag
    assert cipher.open(sealed, "inbound") == PAYLOAD


def test_round_trip_of_a_real_message_and_of_nothing(cipher: PayloadCipher) -> None:
    big = (CISIS_FIXTURES / "oru-r01-delete" / "message.er7").read_bytes()
    assert cipher.open(cipher.seal(big, "inbound"), "inbound") == big
    assert cipher.open(cipher.seal(b"", "mail"), "mail") == b""


@given(st.binary(max_size=2048), st.text(max_size=20))
def test_round_trip_any_payload_and_kind(payload: bytes, kind: str) -> None:
    cipher = PayloadCipher({"k1": K1}, "k1")
    assert cipher.open(cipher.seal(payload, kind), kind) == payload


def test_nonces_are_fresh(cipher: PayloadCipher) -> None:
    blobs = {cipher.seal(PAYLOAD, "inbound").blob for _ in range(100)}
    assert len(blobs) == 100
    assert len({b[:12] for b in blobs}) == 100


def test_rotation_keeps_old_rows_readable() -> None:
    old = PayloadCipher({"k1": K1}, "k1")
    sealed_before = old.seal(PAYLOAD, "inbound")
    rotated = PayloadCipher({"k1": K1, "k2": K2}, "k2")
    sealed_after = rotated.seal(PAYLOAD, "inbound")
    assert sealed_after.key_id == "k2"
    assert rotated.open(sealed_before, "inbound") == PAYLOAD
    assert rotated.open(sealed_after, "inbound") == PAYLOAD
    with pytest.raises(PayloadDecryptionError, match="k2"):
        old.open(sealed_after, "inbound")  # the old process does not know k2


def test_key_id_cannot_be_swapped() -> None:
    both = PayloadCipher({"k1": K1, "k2": K2}, "k1")
    sealed = both.seal(PAYLOAD, "inbound")
    with pytest.raises(PayloadDecryptionError):
        both.open(SealedPayload("k2", sealed.blob), "inbound")


@pytest.mark.parametrize("position", [0, 11, 12, 20, -16, -1])
def test_tampered_blob_is_refused(cipher: PayloadCipher, position: int) -> None:
    blob = bytearray(cipher.seal(PAYLOAD, "inbound").blob)
    blob[position] ^= 0x01
    with pytest.raises(PayloadDecryptionError, match="k1"):
        cipher.open(SealedPayload("k1", bytes(blob)), "inbound")


@pytest.mark.parametrize("length", [0, 1, 7, 8, 11, 12, 27, 28])
def test_truncated_blob_is_refused(cipher: PayloadCipher, length: int) -> None:
    blob = cipher.seal(PAYLOAD, "inbound").blob
    with pytest.raises(PayloadDecryptionError):
        cipher.open(SealedPayload("k1", blob[:length]), "inbound")


def test_appended_bytes_are_refused(cipher: PayloadCipher) -> None:
    blob = cipher.seal(PAYLOAD, "inbound").blob
    with pytest.raises(PayloadDecryptionError):
        cipher.open(SealedPayload("k1", blob + b"\x00"), "inbound")


def test_wrong_kind_fails(cipher: PayloadCipher) -> None:
    sealed = cipher.seal(PAYLOAD, "inbound")
    for kind in ("mail", "", "Inbound", "inbound "):
        with pytest.raises(PayloadDecryptionError):
            cipher.open(sealed, kind)


def test_unknown_key_id_fails(cipher: PayloadCipher) -> None:
    sealed = cipher.seal(PAYLOAD, "inbound")
    with pytest.raises(PayloadDecryptionError, match="not configured"):
        cipher.open(SealedPayload("gone", sealed.blob), "inbound")
    with pytest.raises(PayloadDecryptionError):
        PayloadCipher().open(sealed, "inbound")  # encryption switched off: sealed rows stay shut


def test_error_messages_hold_no_payload(cipher: PayloadCipher) -> None:
    sealed = cipher.seal(PAYLOAD, "inbound")
    with pytest.raises(PayloadDecryptionError) as excinfo:
        cipher.open(sealed, "mail")
    assert "MSH" not in str(excinfo.value)
    assert "blob" not in repr(sealed)
    assert sealed.blob.hex() not in repr(sealed)


def test_no_key_means_clear_storage() -> None:
    clear = PayloadCipher()
    assert not clear.enabled
    sealed = clear.seal(PAYLOAD, "inbound")
    assert sealed == SealedPayload(None, PAYLOAD)
    assert clear.open(sealed, "inbound") == PAYLOAD
    assert clear.open(sealed, "any kind") == PAYLOAD
    # rows stored in clear before encryption was switched on still open
    assert PayloadCipher({"k1": K1}, "k1").open(sealed, "inbound") == PAYLOAD


def test_keys_without_a_current_one_open_but_seal_in_clear() -> None:
    sealed = PayloadCipher({"k1": K1}, "k1").seal(PAYLOAD, "inbound")
    read_only = PayloadCipher({"k1": K1}, None)
    assert not read_only.enabled
    assert read_only.open(sealed, "inbound") == PAYLOAD
    assert read_only.seal(PAYLOAD, "inbound").key_id is None


def test_current_key_must_be_in_the_ring() -> None:
    with pytest.raises(ValueError, match="not in the key ring"):
        PayloadCipher({"k1": K1}, "k2")


@pytest.mark.parametrize("size", [0, 15, 31, 33])
def test_bad_key_length_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="AESGCM key"):
        PayloadCipher({"k1": bytes(size)}, "k1")
