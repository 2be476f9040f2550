"""Delivery to the MSSanté operator: SMTP submission (`smtp`) and its client TLS (`tls`).

The only package that imports aiosmtplib; its errors become `SendResult` outcomes here, and
`SendResult.raise_for_outcome` maps them onto the connector's Transient/PermanentDeliveryError.
"""

from connector.delivery.smtp import (
    Classification,
    Failure,
    FailureKind,
    Outcome,
    OutgoingEnvelope,
    SaslMechanism,
    SendResult,
    SmtpEndpoint,
    SmtpPermanentError,
    SmtpSubmitter,
    SmtpTransientError,
    Stage,
    TlsMode,
    classify,
    smtp_error_code,
    xtext_decode,
    xtext_encode,
)
from connector.delivery.tls import (
    CertificateInfo,
    ClientCertificateSource,
    ClientTls,
    ClientTlsSettings,
    PemClientCertificate,
    Pkcs12ClientCertificate,
    build_client_tls,
    client_certificate_info,
)
from connector.hl7.codes import SmtpErrorCode

__all__ = [
    "CertificateInfo",
    "Classification",
    "ClientCertificateSource",
    "ClientTls",
    "ClientTlsSettings",
    "Failure",
    "FailureKind",
    "Outcome",
    "OutgoingEnvelope",
    "PemClientCertificate",
    "Pkcs12ClientCertificate",
    "SaslMechanism",
    "SendResult",
    "SmtpEndpoint",
    "SmtpErrorCode",
    "SmtpPermanentError",
    "SmtpSubmitter",
    "SmtpTransientError",
    "Stage",
    "TlsMode",
    "build_client_tls",
    "classify",
    "client_certificate_info",
    "smtp_error_code",
    "xtext_decode",
    "xtext_encode",
]
