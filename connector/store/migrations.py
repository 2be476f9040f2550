"""Versioned schema migrations. Each migration is applied once, in order, in one transaction,
and recorded in `schema_migrations`. Never edit a released migration: add the next one.

Every migration carries the DDL of each adapter: same version number, same tables and meaning.
The PostgreSQL schema differs only where the engines do: identity columns, `bytea`, `boolean`, and
no payload-log columns (PostgreSQL TOASTs large sealed payloads itself)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sqlite: str
    postgres: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "inbound messages, events, document versions",
        """
        CREATE TABLE inbound (
            id                  INTEGER PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            listener            TEXT    NOT NULL,
            peer                TEXT    NOT NULL,
            received_at         REAL    NOT NULL,
            sending_application TEXT,
            sending_facility    TEXT,
            message_type        TEXT,
            control_id          TEXT,
            version             TEXT,
            digest              BLOB    NOT NULL,
            payload_key         TEXT,
            payload             BLOB,              -- inline when small, else NULL and:
            payload_segment     INTEGER,           -- ... a record of the payload log
            payload_offset      INTEGER,
            payload_length      INTEGER,
            size                INTEGER NOT NULL,
            status              TEXT    NOT NULL CHECK (status IN ('accepted', 'rejected')),
            ack_code            TEXT    NOT NULL,
            ack                 BLOB    NOT NULL,
            error_code          TEXT,
            error_detail        TEXT,
            report_key          TEXT,              -- validation report (sealed: may quote values)
            report              BLOB,
            retransmissions     INTEGER NOT NULL DEFAULT 0,
            control_id_reused   INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX inbound_by_sender_control_id
            ON inbound (tenant_id, control_id, sending_application, sending_facility, received_at);
        CREATE INDEX inbound_by_status ON inbound (tenant_id, status, received_at);
        CREATE TABLE events (
            id          INTEGER PRIMARY KEY,
            at          REAL NOT NULL,
            tenant_id   TEXT NOT NULL,
            kind        TEXT NOT NULL,
            inbound_id  INTEGER REFERENCES inbound (id),
            detail      TEXT
        );
        CREATE INDEX events_by_inbound ON events (inbound_id);
        CREATE TABLE documents (
            tenant_id    TEXT    NOT NULL,
            document_id  TEXT    NOT NULL,          -- ClinicalDocument/id as root or root^ext
            set_id       TEXT,
            version      INTEGER,
            status       TEXT    NOT NULL CHECK (status IN ('active', 'replaced', 'deleted')),
            replaced_by  TEXT,
            inbound_id   INTEGER NOT NULL REFERENCES inbound (id),
            updated_at   REAL    NOT NULL,
            PRIMARY KEY (tenant_id, document_id)
        );
        CREATE INDEX documents_by_set ON documents (tenant_id, set_id);
        """,
        """
        CREATE TABLE inbound (
            id                  BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            listener            TEXT    NOT NULL,
            peer                TEXT    NOT NULL,
            received_at         DOUBLE PRECISION NOT NULL,
            sending_application TEXT,
            sending_facility    TEXT,
            message_type        TEXT,
            control_id          TEXT,
            version             TEXT,
            digest              BYTEA   NOT NULL,
            payload_key         TEXT,
            payload             BYTEA   NOT NULL,  -- sealed; large values are TOASTed
            size                INTEGER NOT NULL,
            status              TEXT    NOT NULL CHECK (status IN ('accepted', 'rejected')),
            ack_code            TEXT    NOT NULL,
            ack                 BYTEA   NOT NULL,
            error_code          TEXT,
            error_detail        TEXT,
            report_key          TEXT,              -- validation report (sealed: may quote values)
            report              BYTEA,
            retransmissions     INTEGER NOT NULL DEFAULT 0,
            control_id_reused   BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE INDEX inbound_by_sender_control_id
            ON inbound (tenant_id, control_id, sending_application, sending_facility, received_at);
        CREATE INDEX inbound_by_status ON inbound (tenant_id, status, received_at);
        CREATE TABLE events (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at          DOUBLE PRECISION NOT NULL,
            tenant_id   TEXT   NOT NULL,
            kind        TEXT   NOT NULL,
            inbound_id  BIGINT REFERENCES inbound (id),
            detail      TEXT
        );
        CREATE INDEX events_by_inbound ON events (inbound_id);
        CREATE TABLE documents (
            tenant_id    TEXT    NOT NULL,
            document_id  TEXT    NOT NULL,          -- ClinicalDocument/id as root or root^ext
            set_id       TEXT,
            version      INTEGER,
            status       TEXT    NOT NULL CHECK (status IN ('active', 'replaced', 'deleted')),
            replaced_by  TEXT,
            inbound_id   BIGINT  NOT NULL REFERENCES inbound (id),
            updated_at   DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant_id, document_id)
        );
        CREATE INDEX documents_by_set ON documents (tenant_id, set_id);
        """,
    ),
    Migration(
        2,
        "outbox: rows to send, with leases",
        """
        CREATE TABLE outbox (
            id                  INTEGER PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            kind                TEXT    NOT NULL CHECK (kind IN ('smtp', 'hl7')),
            inbound_id          INTEGER REFERENCES inbound (id),
            state               TEXT    NOT NULL CHECK (state IN ('ready', 'leased', 'sent',
                                    'delivered', 'failed', 'dead', 'cancelled')),
            payload_key         TEXT,
            payload             BLOB,              -- sealed, inline when small, else NULL and:
            payload_segment     INTEGER,           -- ... a record of the payload log
            payload_offset      INTEGER,
            payload_length      INTEGER,
            size                INTEGER NOT NULL,
            message_id          TEXT,
            envid               TEXT,
            recipient_domain    TEXT,              -- the domain only: addresses hold the INS
            created_at          REAL    NOT NULL,
            updated_at          REAL    NOT NULL,
            available_at        REAL    NOT NULL,
            attempts            INTEGER NOT NULL DEFAULT 0,
            lease_token         TEXT,
            lease_expires_at    REAL,
            sent_at             REAL,
            smtp_code           TEXT,
            error_code          TEXT,
            error_class         TEXT,
            error_key           TEXT,              -- the server's text, sealed (may quote
            error_detail        BLOB               -- the recipient's address)
        );
        CREATE INDEX outbox_leasable ON outbox (tenant_id, state, available_at, id);
        CREATE INDEX outbox_by_inbound ON outbox (inbound_id);
        """,
        """
        CREATE TABLE outbox (
            id                  BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            kind                TEXT    NOT NULL CHECK (kind IN ('smtp', 'hl7')),
            inbound_id          BIGINT  REFERENCES inbound (id),
            state               TEXT    NOT NULL CHECK (state IN ('ready', 'leased', 'sent',
                                    'delivered', 'failed', 'dead', 'cancelled')),
            payload_key         TEXT,
            payload             BYTEA   NOT NULL,  -- sealed; large values are TOASTed
            size                INTEGER NOT NULL,
            message_id          TEXT,
            envid               TEXT,
            recipient_domain    TEXT,              -- the domain only: addresses hold the INS
            created_at          DOUBLE PRECISION NOT NULL,
            updated_at          DOUBLE PRECISION NOT NULL,
            available_at        DOUBLE PRECISION NOT NULL,
            attempts            INTEGER NOT NULL DEFAULT 0,
            lease_token         TEXT,
            lease_expires_at    DOUBLE PRECISION,
            sent_at             DOUBLE PRECISION,
            smtp_code           TEXT,
            error_code          TEXT,
            error_class         TEXT,
            error_key           TEXT,              -- the server's text, sealed (may quote
            error_detail        BYTEA              -- the recipient's address)
        );
        CREATE INDEX outbox_leasable ON outbox (tenant_id, state, available_at, id);
        CREATE INDEX outbox_by_inbound ON outbox (inbound_id);
        """,
    ),
    Migration(
        3,
        "audit trail, outbox lookups by envelope id and Message-ID",
        """
        CREATE TABLE audit (
            id          INTEGER PRIMARY KEY,
            at          REAL    NOT NULL,
            tenant_id   TEXT    NOT NULL,
            actor       TEXT    NOT NULL,          -- worker (host, pid) or operator
            action      TEXT    NOT NULL,
            outbox_id   INTEGER REFERENCES outbox (id),
            inbound_id  INTEGER REFERENCES inbound (id),
            result      TEXT,                      -- the server's reply code
            detail      TEXT                       -- the server's reply, without addresses
        );
        CREATE INDEX audit_by_time ON audit (at);
        CREATE INDEX audit_by_outbox ON audit (outbox_id);
        CREATE INDEX outbox_by_envid ON outbox (envid);
        CREATE INDEX outbox_by_message_id ON outbox (message_id);
        """,
        """
        CREATE TABLE audit (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at          DOUBLE PRECISION NOT NULL,
            tenant_id   TEXT   NOT NULL,
            actor       TEXT   NOT NULL,           -- worker (host, pid) or operator
            action      TEXT   NOT NULL,
            outbox_id   BIGINT REFERENCES outbox (id),
            inbound_id  BIGINT REFERENCES inbound (id),
            result      TEXT,                      -- the server's reply code
            detail      TEXT                       -- the server's reply, without addresses
        );
        CREATE INDEX audit_by_time ON audit (at);
        CREATE INDEX audit_by_outbox ON audit (outbox_id);
        CREATE INDEX outbox_by_envid ON outbox (envid);
        CREATE INDEX outbox_by_message_id ON outbox (message_id);
        """,
    ),
    Migration(
        4,
        "receipts returned to the application mailbox, per-recipient receipt status",
        """
        CREATE TABLE receipts (
            id                  INTEGER PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            receipt_key         TEXT    NOT NULL,  -- its Message-ID, else a digest of its bytes
            received_at         REAL    NOT NULL,
            kind                TEXT,              -- dsn, mdn, ko-mail, heuristic, or NULL
            status              TEXT    NOT NULL CHECK (status IN ('matched', 'unmatched')),
            outcome             TEXT,
            outbox_id           INTEGER REFERENCES outbox (id),
            detail              TEXT,              -- why unmatched: no patient data
            payload_key         TEXT,
            payload             BLOB,              -- the mail as fetched, sealed, inline or:
            payload_segment     INTEGER,
            payload_offset      INTEGER,
            payload_length      INTEGER,
            size                INTEGER NOT NULL,
            UNIQUE (tenant_id, receipt_key)
        );
        CREATE INDEX receipts_by_outbox ON receipts (outbox_id);
        ALTER TABLE outbox ADD COLUMN delivery_status TEXT;
        ALTER TABLE outbox ADD COLUMN read_status TEXT;
        ALTER TABLE outbox ADD COLUMN receipt_at REAL
        """,
        """
        CREATE TABLE receipts (
            id                  BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            receipt_key         TEXT    NOT NULL,  -- its Message-ID, else a digest of its bytes
            received_at         DOUBLE PRECISION NOT NULL,
            kind                TEXT,              -- dsn, mdn, ko-mail, heuristic, or NULL
            status              TEXT    NOT NULL CHECK (status IN ('matched', 'unmatched')),
            outcome             TEXT,
            outbox_id           BIGINT  REFERENCES outbox (id),
            detail              TEXT,              -- why unmatched: no patient data
            payload_key         TEXT,
            payload             BYTEA   NOT NULL,  -- the mail as fetched, sealed
            size                INTEGER NOT NULL,
            UNIQUE (tenant_id, receipt_key)
        );
        CREATE INDEX receipts_by_outbox ON receipts (outbox_id);
        ALTER TABLE outbox ADD COLUMN delivery_status TEXT;
        ALTER TABLE outbox ADD COLUMN read_status TEXT;
        ALTER TABLE outbox ADD COLUMN receipt_at DOUBLE PRECISION
        """,
    ),
    Migration(
        5,
        "patient context from ADT: patients, their identifiers, their history",
        """
        CREATE TABLE patients (
            id                  INTEGER PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            context_key         TEXT,
            context             BLOB    NOT NULL,  -- the context as JSON, sealed
            merged_into         INTEGER REFERENCES patients (id),
            created_at          REAL    NOT NULL,
            updated_at          REAL    NOT NULL,
            inbound_id          INTEGER NOT NULL REFERENCES inbound (id)  -- the last applied
        );
        CREATE TABLE patient_identifiers (
            tenant_id           TEXT    NOT NULL,
            kind                TEXT    NOT NULL CHECK (kind IN ('ipp', 'ins')),
            authority           TEXT    NOT NULL,  -- IPP assigning authority, or the INS OID
            digest              BLOB    NOT NULL,  -- keyed digest of the value, never the value
            patient_id          INTEGER NOT NULL REFERENCES patients (id),
            inbound_id          INTEGER NOT NULL REFERENCES inbound (id),
            updated_at          REAL    NOT NULL,
            PRIMARY KEY (tenant_id, kind, authority, digest)
        );
        CREATE INDEX patient_identifiers_by_patient ON patient_identifiers (patient_id);
        CREATE TABLE patient_history (
            id                  INTEGER PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            patient_id          INTEGER NOT NULL REFERENCES patients (id),
            inbound_id          INTEGER NOT NULL REFERENCES inbound (id),
            event               TEXT    NOT NULL,  -- the trigger event (A01...)
            action              TEXT    NOT NULL CHECK (action IN ('created', 'updated',
                                    'identifier_changed', 'merged', 'absorbed')),
            other_patient_id    INTEGER REFERENCES patients (id),  -- the other side of a merge
            detail              TEXT,              -- the sections set, never values
            at                  REAL    NOT NULL
        );
        CREATE INDEX patient_history_by_patient ON patient_history (patient_id, id)
        """,
        """
        CREATE TABLE patients (
            id                  BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            context_key         TEXT,
            context             BYTEA   NOT NULL,  -- the context as JSON, sealed
            merged_into         BIGINT  REFERENCES patients (id),
            created_at          DOUBLE PRECISION NOT NULL,
            updated_at          DOUBLE PRECISION NOT NULL,
            inbound_id          BIGINT  NOT NULL REFERENCES inbound (id)  -- the last applied
        );
        CREATE TABLE patient_identifiers (
            tenant_id           TEXT    NOT NULL,
            kind                TEXT    NOT NULL CHECK (kind IN ('ipp', 'ins')),
            authority           TEXT    NOT NULL,  -- IPP assigning authority, or the INS OID
            digest              BYTEA   NOT NULL,  -- keyed digest of the value, never the value
            patient_id          BIGINT  NOT NULL REFERENCES patients (id),
            inbound_id          BIGINT  NOT NULL REFERENCES inbound (id),
            updated_at          DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant_id, kind, authority, digest)
        );
        CREATE INDEX patient_identifiers_by_patient ON patient_identifiers (patient_id);
        CREATE TABLE patient_history (
            id                  BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id           TEXT    NOT NULL,
            patient_id          BIGINT  NOT NULL REFERENCES patients (id),
            inbound_id          BIGINT  NOT NULL REFERENCES inbound (id),
            event               TEXT    NOT NULL,  -- the trigger event (A01...)
            action              TEXT    NOT NULL CHECK (action IN ('created', 'updated',
                                    'identifier_changed', 'merged', 'absorbed')),
            other_patient_id    BIGINT  REFERENCES patients (id),  -- the other side of a merge
            detail              TEXT,              -- the sections set, never values
            at                  DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX patient_history_by_patient ON patient_history (patient_id, id)
        """,
    ),
    Migration(
        6,
        "payload retention: purged_at on inbound, outbox and receipts",
        # The partial indexes hold only the rows not purged yet: a purge round reads the oldest
        # of them, whatever was purged before; and an insert adds one small entry.
        """
        ALTER TABLE inbound ADD COLUMN purged_at REAL;
        ALTER TABLE outbox ADD COLUMN purged_at REAL;
        ALTER TABLE receipts ADD COLUMN purged_at REAL;
        CREATE INDEX inbound_unpurged ON inbound (received_at) WHERE purged_at IS NULL;
        CREATE INDEX outbox_unpurged ON outbox (created_at) WHERE purged_at IS NULL;
        CREATE INDEX receipts_unpurged ON receipts (received_at) WHERE purged_at IS NULL
        """,
        """
        ALTER TABLE inbound ADD COLUMN purged_at DOUBLE PRECISION;
        ALTER TABLE inbound ALTER COLUMN payload DROP NOT NULL;
        ALTER TABLE outbox ADD COLUMN purged_at DOUBLE PRECISION;
        ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL;
        ALTER TABLE receipts ADD COLUMN purged_at DOUBLE PRECISION;
        ALTER TABLE receipts ALTER COLUMN payload DROP NOT NULL;
        CREATE INDEX inbound_unpurged ON inbound (received_at) WHERE purged_at IS NULL;
        CREATE INDEX outbox_unpurged ON outbox (created_at) WHERE purged_at IS NULL;
        CREATE INDEX receipts_unpurged ON receipts (received_at) WHERE purged_at IS NULL
        """,
    ),
    Migration(
        7,
        "MSH-11 of inbound messages, for the ZAMs that answer them",
        # NULL on the rows received before: their ZAMs say P, as they did.
        "ALTER TABLE inbound ADD COLUMN processing_id TEXT",
        "ALTER TABLE inbound ADD COLUMN processing_id TEXT",
    ),
    Migration(
        8,
        "the key of a request's mail Message-IDs, for the mails that follow them up",
        # Sealed like a payload (associated data "mail-key"): with it and a Message-ID, the
        # recipient address hashed into it could be searched for, and a patient's is their INS.
        """
        ALTER TABLE inbound ADD COLUMN mail_key_id TEXT;
        ALTER TABLE inbound ADD COLUMN mail_key BLOB
        """,
        """
        ALTER TABLE inbound ADD COLUMN mail_key_id TEXT;
        ALTER TABLE inbound ADD COLUMN mail_key BYTEA
        """,
    ),
    Migration(
        9,
        "MSH-5/6 of inbound messages: the ZAMs answering them come from that application",
        # NULL on the rows received before: their ZAMs keep the tenant's application/facility.
        """
        ALTER TABLE inbound ADD COLUMN receiving_application TEXT;
        ALTER TABLE inbound ADD COLUMN receiving_facility TEXT
        """,
        """
        ALTER TABLE inbound ADD COLUMN receiving_application TEXT;
        ALTER TABLE inbound ADD COLUMN receiving_facility TEXT
        """,
    ),
    Migration(
        10,
        "an operator's retry restarts the mail's retry budget",
        # NULL: never retried by an operator; the budget counts from created_at.
        "ALTER TABLE outbox ADD COLUMN retried_at REAL",
        "ALTER TABLE outbox ADD COLUMN retried_at DOUBLE PRECISION",
    ),
)
