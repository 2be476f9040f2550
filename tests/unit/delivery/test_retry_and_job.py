"""The retry policy (pure) and the mail job payload format."""

from __future__ import annotations

import random

import pytest

from connector.delivery.job import MAGIC, MailJob, MalformedJob
from connector.delivery.retry import RetryPolicy
from connector.errors import ConfigError, PermanentDeliveryError

# -- retry ----------------------------------------------------------------------------------------


def test_delays_grow_exponentially_up_to_the_maximum() -> None:
    policy = RetryPolicy(initial_seconds=10, factor=3, maximum_seconds=100, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [10, 30, 90, 100, 100]


def test_jitter_spreads_delays_within_its_fraction() -> None:
    policy = RetryPolicy(initial_seconds=100, maximum_seconds=100, jitter=0.2)
    rng = random.Random(7)
    delays = [policy.delay(1, rng) for _ in range(500)]
    assert min(delays) >= 80
    assert max(delays) <= 120
    assert max(delays) - min(delays) > 30  # spread, not one value


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert RetryPolicy(jitter=0).delay(10_000) == 3600


def test_the_budget_counts_from_enqueueing() -> None:
    policy = RetryPolicy(initial_seconds=60, jitter=0, budget_seconds=3600)
    assert policy.next_attempt_at(attempt=1, created_at=1000, now=1000) == 1060
    assert policy.next_attempt_at(attempt=3, created_at=1000, now=4599) == 4599 + 240
    assert policy.next_attempt_at(attempt=3, created_at=1000, now=4600) is None


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"initial_seconds": 0}, "delivery.retry_initial_seconds"),
    ({"initial_seconds": 10, "maximum_seconds": 5}, "delivery.retry_initial_seconds"),
    ({"factor": 0.5}, "delivery.retry_factor"),
    ({"jitter": 1.0}, "delivery.retry_jitter"),
    ({"budget_seconds": 0}, "delivery.retry_budget_hours"),
])
def test_bad_policies_name_their_key(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RetryPolicy(**kwargs)
    assert caught.value.key == key


# -- job ------------------------------------------------------------------------------------------

MESSAGE = b"From: a@b.fr\r\nTo: 279035121518989@patient.mssante.fr\r\n\r\nbody\n\x00\xff"


def test_job_round_trip_keeps_the_message_byte_for_byte() -> None:
    job = MailJob("pfi@chu.mssante.fr", "279035121518989@patient.mssante.fr", MESSAGE,
                  request_dsn=True, request_mdn=False)
    payload = job.encode()
    assert payload.startswith(MAGIC)
    assert MailJob.decode(payload) == job


def test_a_new_job_knows_whether_its_message_is_in_wire_form() -> None:
    wire = b"From: a@b.fr\r\n\r\nbody\r\n"
    assert MailJob.of("a@b.fr", "c@d.fr", wire).wire_form
    assert not MailJob.of("a@b.fr", "c@d.fr", MESSAGE).wire_form  # bare LF
    job = MailJob.of("a@b.fr", "c@d.fr", wire, request_dsn=True)
    assert MailJob.decode(job.encode()) == job


def test_a_job_written_before_the_wire_flag_reads_as_not_known() -> None:
    old = MAGIC + b'{"from":"a@b.fr","to":"c@d.fr","dsn":false,"mdn":false}\nbody\r\n'
    assert MailJob.decode(old).wire_form is False


def test_job_repr_shows_no_address() -> None:
    job = MailJob("pfi@chu.mssante.fr", "279035121518989@patient.mssante.fr", MESSAGE)
    assert "279035121518989" not in repr(job)
    assert "pfi@" not in repr(job)


@pytest.mark.parametrize("payload", [
    b"", b"mail", MAGIC, MAGIC + b"{}\n", MAGIC + b"not json\nmsg", MAGIC + b"[1]\nmsg",
    MAGIC + b'{"from": "a@b.fr"}\nmsg', MAGIC + b'{"from": "a@b.fr", "to": 3}\nmsg',
    MAGIC + b'{"from": "a@b.fr", "to": "c@d.fr", "dsn": "yes"}\nmsg',
    MAGIC + b'{"from": "a@b.fr", "to": "c@d.fr", "wire": 1}\nmsg',
])
def test_malformed_payloads_are_permanent_errors(payload: bytes) -> None:
    with pytest.raises(MalformedJob) as caught:
        MailJob.decode(payload)
    assert isinstance(caught.value, PermanentDeliveryError)
