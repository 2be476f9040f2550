"""Equivalence of the faster code paths of the XDM archive with the standard library ones."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.xdm import metadata as md


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_uuid_is_uuid5_over_the_oid_namespace(parts: list[str]) -> None:
    try:
        expected = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_OID, "|".join(parts)))
    except UnicodeEncodeError:  # lone surrogates: both refuse them
        with pytest.raises(UnicodeEncodeError):
            md._uuid(*parts)
        return
    assert md._uuid(*parts) == expected
