"""Prometheus metrics: the only module that imports prometheus_client.

Names follow `mssconnector_<area>_<thing>_<unit>`; labels have bounded cardinality: tenant ids
come from the configuration, message types are passed by intake only for routed types (anything
else is `other`),
ACK codes from table 0008. Never a control id, an address or a document value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from connector.store import COMMIT_BUCKETS, CommitStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
_ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ConnectorMetrics:
    """The connector's metrics, in their own registry (tests make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.messages = Counter(
            "mssconnector_mllp_messages", "HL7 messages answered, by tenant, type and ACK code",
            ["tenant", "type", "ack"], registry=self.registry)
        self.ack_seconds = Histogram(
            "mssconnector_mllp_ack_seconds",
            "Time from a complete frame to its ACK (includes the durable commit)",
            ["tenant"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.retransmissions = Counter(
            "mssconnector_mllp_retransmissions", "Retransmissions answered with their first ACK",
            ["tenant"], registry=self.registry)
        self.dmp_not_fed = Counter(
            "mssconnector_cisis_dmp_not_fed",
            "Accepted requests with DESTDMP=Y (this connector does not feed the DMP)",
            ["tenant"], registry=self.registry)
        self.frames_refused = Counter(
            "mssconnector_mllp_frames_refused",
            "MLLP frames not answered: over the listener's max_frame_bytes (the connection is "
            "closed) or cut short by the peer's disconnect",
            ["tenant", "reason"], registry=self.registry)
        self.documents_without_pdf = Counter(
            "mssconnector_cisis_documents_without_pdf",
            "CDAs of accepted requests sent without their PDF: none embedded and none could be "
            "rendered (ECO.2.1.5; the warning mail_without_pdf says why)",
            ["tenant"], registry=self.registry)
        self.version_conflicts = Counter(
            "mssconnector_cisis_version_conflicts",
            "Replace/delete requests refused because they did not target the latest version",
            ["tenant"], registry=self.registry)

        self.smtp_sends = Counter(
            "mssconnector_smtp_sends",
            "Mails handed to the transport, by tenant, transport (smtp, maildir) and result "
            "(sent, transient, permanent, config_error)",
            ["tenant", "transport", "result"], registry=self.registry)
        self.smtp_send_seconds = Histogram(
            "mssconnector_smtp_send_seconds",
            "Time to hand one mail to the transport (from MAIL FROM, or the connection when one "
            "is opened, to the final reply)",
            ["tenant", "transport"], buckets=_SEND_BUCKETS, registry=self.registry)
        self.delivery_paused = Gauge(
            "mssconnector_delivery_paused",
            "1 while a tenant's delivery is paused (operator unreachable or configuration error)",
            ["tenant"], registry=self.registry)
        self.lease_lost = Counter(
            "mssconnector_outbox_lease_lost",
            "Outbox transitions refused because the worker no longer held the row's lease",
            ["tenant"], registry=self.registry)

        self.refused_for_good = Counter(
            "mssconnector_delivery_refused",
            "Rows refused for good by their peer and left dead (alert on it: e.g. the HIS "
            "answered AE to a ZAM)", ["tenant", "transport"], registry=self.registry)

        self.receipts = Counter(
            "mssconnector_receipts",
            "Mails read from the application mailbox, by tenant, kind (dsn, mdn, ko-mail, "
            "heuristic, none) and outcome (positive, negative, pending, inconclusive, "
            "unmatched)", ["tenant", "kind", "outcome"], registry=self.registry)

        self.outbox_items = Gauge(
            "mssconnector_outbox_items", "Outbox rows by tenant, kind (smtp, hl7) and state",
            ["tenant", "kind", "state"], registry=self.registry)
        self.outbox_oldest_pending_seconds = Gauge(
            "mssconnector_outbox_oldest_pending_seconds",
            "Age of the oldest row still to send (ready or leased), by tenant and kind",
            ["tenant", "kind"], registry=self.registry)
        self.zam_sent = Counter(
            "mssconnector_zam_sent", "ZAMs handed to the HIS, by tenant and type (Z02, Z03)",
            ["tenant", "type"], registry=self.registry)
        self.zam_acknowledged = Counter(
            "mssconnector_zam_acknowledged",
            "Technical ACKs the HIS returned for ZAMs, by tenant and code (AA, AE, AR...)",
            ["tenant", "code"], registry=self.registry)
        self.client_certificate_expiry_days = Gauge(
            "mssconnector_client_certificate_expiry_days",
            "Days until the application mailbox's client certificate expires (negative: "
            "expired), by tenant and use (smtp, imap)", ["tenant", "use"],
            registry=self.registry)
        self.crl_next_update_seconds = Gauge(
            "mssconnector_crl_next_update_seconds",
            "Seconds until the soonest nextUpdate of the CRLs the operator's certificate is "
            "checked against (negative: past, every handshake fails), by tenant and use (smtp, "
            "imap); as read at start-up or at the last reload", ["tenant", "use"],
            registry=self.registry)
        self.whitelist_age_seconds = Gauge(
            "mssconnector_whitelist_age_seconds",
            "Age of the installed MSSanté whitelist (its DateDeGeneration)",
            registry=self.registry)
        self.store_bytes = Gauge(
            "mssconnector_store_bytes",
            "Bytes the store occupies, by part (database: with its WAL, or the PostgreSQL "
            "database; payloads: the SQLite payload segments)", ["part"], registry=self.registry)
        self._store_free_bytes: Gauge | None = None  # a SQLite store's only: see its setter
        self.store_purged = Counter(
            "mssconnector_store_purged",
            "What the retention purge dropped: rows whose payloads it dropped, by part "
            "(inbound, outbox, receipts), and payload segments it deleted (segments)",
            ["part"], registry=self.registry)
        self.store_purge_failures = Counter(
            "mssconnector_store_purge_failures",
            "Retention purge rounds that failed (the next round tries again)",
            registry=self.registry)
        self.mailbox_connected = Gauge(
            "mssconnector_receipts_mailbox_connected",
            "1 while the tenant's application mailbox is connected over IMAP", ["tenant"],
            registry=self.registry)
        # The children `message_answered` updates for every message, by label values:
        # `labels()` validates and locks on each call, a dict lookup does not.
        self._answered: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._store_commits: _StoreCommits | None = None

    def set_store_free_bytes(self, free: float) -> None:
        """`mssconnector_store_free_bytes`, the free disk of the SQLite store's file system.
        Registered on its first value: a gauge without labels is exported as 0 until set, and
        a PostgreSQL store (whose disk is the server's) never sets it: its 0 paged
        `MSSConnectorStoreDiskLow` on every PostgreSQL deployment."""
        if self._store_free_bytes is None:
            self._store_free_bytes = Gauge(
                "mssconnector_store_free_bytes",
                "Bytes free on the file system of the SQLite store (a full disk answers AR)",
                registry=self.registry)
        self._store_free_bytes.set(free)

    def watch_store(self, stats: Callable[[], CommitStats]) -> None:
        """Export the store's group commits, read from `stats` at each scrape (the commit
        thread only counts; nothing on the path of a message calls prometheus_client)."""
        if self._store_commits is None:
            self._store_commits = _StoreCommits(stats)
            self.registry.register(self._store_commits)
        else:
            self._store_commits.stats = stats

    def delivery_attempted(self, tenant: str, transport: str, result: str,
                           seconds: float) -> None:
        self.smtp_sends.labels(tenant, transport, result).inc()
        self.smtp_send_seconds.labels(tenant, transport).observe(seconds)

    def message_answered(self, tenant: str, routed_type: str | None, ack: str,
                         seconds: float) -> None:
        """`routed_type`: MSH-9 code^event when intake routed it, else None (`other`)."""
        labels = (tenant, routed_type or "other", ack if ack in _ACK_CODES else "none")
        children = self._answered.get(labels)
        if children is None:
            children = self._answered[labels] = (self.messages.labels(*labels),
                                                 self.ack_seconds.labels(tenant))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StoreCommits(Collector):
    """`mssconnector_store_commits_total`, `..._committed_jobs_total` and
    `mssconnector_store_commit_seconds`: a slow disk shows here before it shows in the ACK times.
    Jobs per commit (the ratio of the two counters) says how well group commit shares a sync."""

    def __init__(self, stats: Callable[[], CommitStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        yield CounterMetricFamily(
            "mssconnector_store_commits",
            "Group commits made durable (a sync each) since the store opened",
            value=stats.commits)
        yield CounterMetricFamily(
            "mssconnector_store_committed_jobs",
            "Store jobs (messages, mails, receipts...) those commits made durable",
            value=stats.jobs)
        buckets = [(repr(bound), count)
                   for bound, count in zip(COMMIT_BUCKETS, stats.buckets, strict=True)]
        yield HistogramMetricFamily(
            "mssconnector_store_commit_seconds",
            "Time of a group commit, from its COMMIT to the end of its sync",
            buckets=[*buckets, ("+Inf", stats.commits)], sum_value=stats.seconds)
