"""The document stage of intake in worker processes (`[intake] document_processes`).

`IntakeDecider.check_documents` (CI-SIS checks, CDA validation, the mails and the PDFs rendered
for them: milliseconds to seconds of CPU per message) holds the GIL for most of its time. In
threads it shares one core with everything else the server process does (MLLP, ACKs, the
store's writer, SMTP and TLS). `DocumentProcesses` runs it in a pool of processes instead. Each
worker builds, once, the same deciders as the server (`connector.tenants.build_intake_parts`)
from the settings it was started with.

What crosses the process boundary is plain data: the message's bytes and its first-pass
decision out (with the patient's ADT context; the worker parses the bytes again), the decided
one back without the parsed message (the server keeps its own) or the checked request
(`portable`: intake reads only the decision's own fields after this stage). Log context
(tenant, listener, connection, control id) goes with each task, so the worker's log lines carry
it as the server's do.

One pool per settings generation: a reload starts a new pool for the new settings and closes
the old one once what it is running has finished. A broken pool (a worker killed by the system)
is replaced, and the message that found it broken is checked in a thread: it is still answered.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import structlog

from connector.hl7.header import decode_message
from connector.hl7.message import parse_message
from connector.pipeline.decide import IntakeDecider, IntakeDecision
from connector.settings import ReceiptsSettings, Settings, TransportSettings

log = structlog.get_logger(__name__)

_DECIDERS: dict[str, IntakeDecider] = {}  # in a worker process: its tenants' deciders


def worker_settings(settings: Settings) -> Settings:
    """What a worker needs: the tenants' intake settings, without the secrets it never uses
    (SMTP/IMAP credentials, the store's DSN and keys, the admin token). Whether a tenant reads
    its receipts and returns ZAMs stays (its ACKs say so): the IMAP settings without their
    passwords, the HIS endpoint (no secret in it)."""
    return replace(
        settings,
        store=replace(settings.store, dsn=None, encryption=None),
        admin=None,
        tenants=tuple(replace(t, transport=TransportSettings(), receipts=_without_secrets(
            t.receipts)) for t in settings.tenants))


def _without_secrets(receipts: ReceiptsSettings | None) -> ReceiptsSettings | None:
    if receipts is None:
        return None
    return replace(receipts, password=None, client_private_key_password=None,
                   client_pkcs12_password=None)


def _start_worker(settings: Settings) -> None:
    from connector.app import build_intake_deciders  # the composition root, in the worker
    from connector.observability.logs import configure_logging

    configure_logging(settings.logging)
    _DECIDERS.update(build_intake_deciders(settings))


def _ping() -> int:
    return len(_DECIDERS)


def _check(tenant_id: str, decision: IntakeDecision, payload: bytes,
           context: dict[str, Any]) -> IntakeDecision:
    decider = _DECIDERS[tenant_id]  # KeyError: see DocumentProcesses.check
    # The message is parsed again here from its bytes, with the codec the server chose: a few
    # tens of µs in the worker, less than pickling the parsed segments costs the server.
    message = parse_message(decode_message(payload, decision.codec))
    with structlog.contextvars.bound_contextvars(**context):
        decided = decider.check_documents(replace(decision, message=message))
    return portable(decided)


def portable(decision: IntakeDecision) -> IntakeDecision:
    """`decision` as it crosses back (without `previous`, a withdrawn report's CDA: read,
    not needed any more): what intake stores and answers (outcome, ERR, report,
    mails, version changes), without the parsed message or the checked request (its CDA
    documents, their lxml trees, which do not pickle, and a tree of dataclasses that costs the
    server's event loop more to unpickle than anything it reads of it)."""
    return replace(decision, message=None, verdict=None, previous=None)


class DocumentProcesses:
    """A pool of `processes` workers holding the deciders of every tenant of `settings`."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.processes = processes
        self._settings = worker_settings(settings)
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn: the server process runs threads (the store's commit thread), which fork would
        # copy in whatever state they are in.
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(self._settings,))

    async def start(self) -> None:
        """Start every worker now (each loads the whitelist, the validators and the mappings),
        rather than on the first message, whose ACK would wait for it."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _ping)
                               for _ in range(self.processes)))
        log.info("document_processes_started", processes=self.processes)

    async def check(self, tenant_id: str, decision: IntakeDecision, payload: bytes,
                    fallback: IntakeDecider) -> IntakeDecision:
        """`fallback.check_documents(decision)` for the message `payload` (whose first pass
        `decision` is), run by a worker; in a thread of this process when the pool is broken
        (it is then replaced for the next messages)."""
        context = structlog.contextvars.get_contextvars()
        executor = self._executor
        try:
            decided = await asyncio.get_running_loop().run_in_executor(
                executor, _check, tenant_id, replace(decision, message=None), payload, context)
        except KeyError:  # a tenant this generation's workers do not know (removed by a reload)
            return await asyncio.to_thread(fallback.check_documents, decision)
        except BrokenProcessPool:
            if executor is self._executor:
                log.error("document_processes_broken",
                          hint="a worker process died (killed for memory?); starting new ones")
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._new_executor()
            return await asyncio.to_thread(fallback.check_documents, decision)
        return replace(decided, message=decision.message)

    def close(self) -> None:
        """Stop taking work; the workers exit once what they run has finished."""
        self._executor.shutdown(wait=False)
