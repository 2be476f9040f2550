"""The return path: ZAM^Z02/Z03 outbox rows (kind `hl7`) sent to the tenant's HIS over MLLP.

One connection per batch, kept while the HIS answers; each ZAM waits for its technical ACK:

* AA (or CA) with MSA-2 equal to the ZAM's MSH-10: sent;
* AE (CE): the HIS refuses it for good: the row ends `dead` and
  `mssconnector_delivery_refused_total{transport="hl7"}` counts it (alert on it);
* AR (CR), no answer in time, a closed connection, an ACK for another message: retried with the
  tenant's backoff.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import structlog

from connector.delivery.smtp import Outcome, SendResult, Stage
from connector.errors import ConnectorError, ProtocolError
from connector.hl7.message import parse_message
from connector.mllp.client import MLLPClient
from connector.observability.metrics import ConnectorMetrics
from connector.store import OutboxKind, OutboxLease

log = structlog.get_logger(__name__)

_ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})


@dataclass(frozen=True, slots=True)
class HisEndpoint:
    host: str
    port: int
    timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class HisTransport:
    endpoint: HisEndpoint
    ssl_context: ssl.SSLContext | None = None
    process: str = ""
    metrics: ConnectorMetrics | None = None

    @property
    def name(self) -> str:
        return "hl7"

    kind = OutboxKind.HL7
    dead_on_refusal = True

    @property
    def actor(self) -> str:
        return f"{self.process} mllp://{self.endpoint.host}:{self.endpoint.port}".strip()

    def session(self) -> _HisSession:
        return _HisSession(self)


def _zam_type(payload: bytes) -> str:
    """Z02 / Z03 from MSH-9 (bounded: anything else is `other`)."""
    fields = payload.split(b"\r", 1)[0].split(b"|")
    event = fields[8].split(b"^")[1:2] if len(fields) > 8 else []
    return event[0].decode("ascii", "replace") if event and event[0] in (b"Z02", b"Z03") \
        else "other"


def _result(outcome: Outcome, lease: OutboxLease, detail: str, *,
            code: str | None = None) -> SendResult:
    return SendResult(outcome, Stage.DONE if outcome is Outcome.SENT else Stage.DATA,
                      lease.message_id or "", None, None, None, code or "", detail,
                      dsn_requested=False)


class _HisSession:
    def __init__(self, transport: HisTransport) -> None:
        self._transport = transport
        self._client: MLLPClient | None = None

    async def send(self, lease: OutboxLease) -> SendResult:
        endpoint = self._transport.endpoint
        where = f"{endpoint.host}:{endpoint.port}"
        try:
            if self._client is None:
                client = MLLPClient(endpoint.host, endpoint.port,
                                    ssl_context=self._transport.ssl_context,
                                    timeout=endpoint.timeout_seconds)
                await client.connect()
                self._client = client
            metrics = self._transport.metrics
            if metrics is not None:
                metrics.zam_sent.labels(lease.tenant_id, _zam_type(lease.payload)).inc()
            answer = await self._client.send(lease.payload)
        except ProtocolError as exc:
            await self.close()
            return _result(Outcome.TRANSIENT, lease, f"HIS {where}: {exc}")
        result, in_step = self._judge(lease, answer, where)
        if not in_step:  # an extra or late frame: every later answer here would be one behind
            await self.close()  # the next ZAM on a new connection
        if metrics is not None:
            code = result.server_message if result.server_message in _ACK_CODES else "other"
            metrics.zam_acknowledged.labels(lease.tenant_id, code).inc()
        return result

    def _judge(self, lease: OutboxLease, answer: bytes, where: str) -> tuple[SendResult, bool]:
        """The outcome of the answer, and whether it acknowledges this ZAM (else the connection
        is out of step)."""
        try:
            msa = parse_message(answer.decode("utf-8", errors="replace")).first("MSA")
        except ConnectorError:
            msa = None
        if msa is None:
            return _result(Outcome.TRANSIENT, lease, f"HIS {where} answered without an MSA"), True
        code, acknowledged = msa.value(1), msa.value(2)
        if acknowledged != lease.message_id:
            return _result(Outcome.TRANSIENT, lease,
                           f"HIS {where} acknowledged another message ({acknowledged!r})",
                           code=code), False
        if code in ("AA", "CA"):
            return _result(Outcome.SENT, lease, f"acknowledged {code} by the HIS",
                           code=code), True
        if code in ("AE", "CE"):
            return _result(Outcome.PERMANENT, lease, f"refused {code} by the HIS",
                           code=code), True
        return _result(Outcome.TRANSIENT, lease, f"HIS answered {code or 'no code'}",
                       code=code), True

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
