"""What the PostgreSQL adapter says of an error: never a piece of the DSN (a password)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from connector.store.postgres import _describe


def test_a_connection_string_error_does_not_quote_the_dsn() -> None:
    with pytest.raises(psycopg.ProgrammingError) as caught:
        conninfo_to_dict("host=db user=u password=S3cr3t pa55word")
    assert "pa55word" in str(caught.value)  # what libpq says
    said = _describe("cannot open the PostgreSQL store", caught.value)
    assert "pa55word" not in said
    assert said.endswith("not a valid libpq connection string")
