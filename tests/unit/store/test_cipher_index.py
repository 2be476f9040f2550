"""Lookup digests of identifiers (`PayloadCipher.index`): keyed, stable, found after rotation."""

from __future__ import annotations

import hashlib

from connector.store.cipher import PayloadCipher

KEY_A = b"A" * 32
KEY_B = b"B" * 32


def test_index_is_keyed_and_stable() -> None:
    a = PayloadCipher({"a": KEY_A}, "a")
    digest = a.index(b"279035121518989", "patient-ins")
    assert digest == PayloadCipher({"a": KEY_A}, "a").index(b"279035121518989", "patient-ins")
    assert digest != PayloadCipher({"b": KEY_B}, "b").index(b"279035121518989", "patient-ins")
    assert digest != a.index(b"279035121518989", "patient-ipp")  # kinds are kept apart
    assert b"279035121518989" not in digest
    assert len(digest) == 32


def test_candidates_cover_rotation_and_the_keyless_digest() -> None:
    before = PayloadCipher({"a": KEY_A}, "a").index(b"000003", "patient-ipp")
    clear = PayloadCipher().index(b"000003", "patient-ipp")
    assert clear == hashlib.sha256(b"patient-ipp\x00000003").digest()
    rotated = PayloadCipher({"a": KEY_A, "b": KEY_B}, "b")
    candidates = rotated.index_candidates(b"000003", "patient-ipp")
    assert candidates[0] == rotated.index(b"000003", "patient-ipp")
    assert set(candidates) == {candidates[0], before, clear}
    assert PayloadCipher().index_candidates(b"000003", "patient-ipp") == (clear,)


def test_the_candidates_of_an_identifier_are_computed_once_per_kind() -> None:
    cipher = PayloadCipher({"k1": b"1" * 32, "k2": b"2" * 32}, "k2")
    first = cipher.index_candidates(b"000003", "patient-ipp")
    assert cipher.index_candidates(b"000003", "patient-ipp") is first  # kept
    assert cipher.index_candidates(b"000003", "patient-ins") != first  # another kind
    assert cipher.index_candidates(b"000004", "patient-ipp") != first
    assert first[0] == cipher.index(b"000003", "patient-ipp")
