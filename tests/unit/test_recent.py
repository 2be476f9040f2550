"""`Recent`: the bounded memo map the hot paths share."""

from __future__ import annotations

import pytest

from connector.recent import Recent


def test_keeps_the_last_values_put_and_evicts_the_oldest_first() -> None:
    recent: Recent[str, int] = Recent(2)
    recent.put("a", 1)
    recent.put("b", 2)
    recent.put("a", 3)  # replacing a key evicts nothing
    assert (recent.get("a"), recent.get("b"), len(recent)) == (3, 2, 2)
    recent.put("c", 4)
    assert recent.get("a") is None  # put first, out first (a get does not refresh it)
    assert (recent.get("b"), recent.get("c"), len(recent)) == (2, 4, 2)


def test_refuses_a_size_that_holds_nothing() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Recent(0)
