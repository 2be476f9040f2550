"""Receipts back from MSSanté: DSN, MDN, KO mails and non-standard bounces, read into values."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connector.errors import ConnectorError, ReceiptError
from connector.hl7.codes import Severity, SmtpErrorCode
from connector.mail.receipts import (
    Correlation,
    DeliveryAction,
    DispositionType,
    Outcome,
    Receipt,
    ReceiptKind,
    RecipientOutcome,
    normalize_message_id,
    parse_receipt,
    smtp_error_for,
)

CET = timezone(timedelta(hours=1))
OUR_ID = "<3f1c0d9e8b7a6c5d4e3f2a1b0c9d8e7f@ch-exemple.mssante.fr>"
PATIENT_NAME = "PAT-TROIS DOMINIQUE"


def crlf(text: str) -> bytes:
    """As fetched over IMAP: CRLF line ends, UTF-8 where the text is 8-bit."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def b_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


ORIGINAL_SUBJECT = b_word(f"XDM/1.0/DDM+CR d'examens biologiques {PATIENT_NAME} 28/03/1979")

# -- DSN samples (Postfix) ------------------------------------------------------------------------

DSN_FAILED = crlf(f"""\
Return-Path: <>
Delivered-To: pfi-auto@ch-exemple.mssante.fr
Received: by mx.ch-exemple.mssante.fr (Postfix)
	id 4TdRZx1Qn8z9sPl; Tue, 20 Feb 2024 00:19:05 +0100 (CET)
Date: Tue, 20 Feb 2024 00:19:05 +0100 (CET)
From: MAILER-DAEMON@mx.ch-exemple.mssante.fr (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: pfi-auto@ch-exemple.mssante.fr
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="4TdRZx1Qn8z9sPl.1708384745/mx.ch-exemple.mssante.fr"
Content-Transfer-Encoding: 8bit
Message-Id: <20240219231905.4TdRZx1Qn8z9sPl@mx.ch-exemple.mssante.fr>

This is a MIME-encapsulated message.

--4TdRZx1Qn8z9sPl.1708384745/mx.ch-exemple.mssante.fr
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mx.ch-exemple.mssante.fr.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<inconnu@test-ci-sis.mssante.fr>: host mx.test-ci-sis.mssante.fr[192.0.2.10] said:
    550 5.1.1 <inconnu@test-ci-sis.mssante.fr>: Recipient address rejected:
    User unknown in virtual mailbox table (in reply to RCPT TO command)

--4TdRZx1Qn8z9sPl.1708384745/mx.ch-exemple.mssante.fr
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.ch-exemple.mssante.fr
X-Postfix-Queue-ID: 4TdRZx1Qn8z9sPl
X-Postfix-Sender: rfc822; pfi-auto@ch-exemple.mssante.fr
Original-Envelope-Id: 0f6d2c1e9b8a47d3a5c4e2f1b0a9d8c7
Arrival-Date: Tue, 20 Feb 2024 00:19:02 +0100 (CET)

Final-Recipient: rfc822; inconnu@test-ci-sis.mssante.fr
Original-Recipient: rfc822;inconnu@test-ci-sis.mssante.fr
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.test-ci-sis.mssante.fr
Diagnostic-Code: smtp; 550 5.1.1 <inconnu@test-ci-sis.mssante.fr>: Recipient
    address rejected: User unknown in virtual mailbox table

--4TdRZx1Qn8z9sPl.1708384745/mx.ch-exemple.mssante.fr
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

Return-Path: <pfi-auto@ch-exemple.mssante.fr>
Received: from pfi.ch-exemple.fr (pfi.ch-exemple.fr [198.51.100.7])
	by mx.ch-exemple.mssante.fr (Postfix) with ESMTPS id 4TdRZx1Qn8z9sPl
	for <inconnu@test-ci-sis.mssante.fr>; Tue, 20 Feb 2024 00:19:02 +0100 (CET)
Date: Tue, 20 Feb 2024 00:19:00 +0100
From: pfi-auto@ch-exemple.mssante.fr
To: inconnu@test-ci-sis.mssante.fr
Message-ID: {OUR_ID}
Subject: {ORIGINAL_SUBJECT}
X-MSS-CODECDA: 11502-2
X-MSS-INS: O
Disposition-Notification-To: pfi-auto@ch-exemple.mssante.fr
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="=_0123456789abcdef"

--4TdRZx1Qn8z9sPl.1708384745/mx.ch-exemple.mssante.fr--
""")

DSN_DELIVERED = crlf(f"""\
Return-Path: <>
Date: Tue, 20 Feb 2024 00:19:07 +0100 (CET)
From: MAILER-DAEMON@mx.test-ci-sis.mssante.fr (Mail Delivery System)
Subject: Successful Mail Delivery Report
To: pfi-auto@ch-exemple.mssante.fr
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="4TdRZz0Lx2z1.1708384747/mx.test-ci-sis.mssante.fr"
Message-Id: <20240219231907.4TdRZz0Lx2z1@mx.test-ci-sis.mssante.fr>

This is a MIME-encapsulated message.

--4TdRZz0Lx2z1.1708384747/mx.test-ci-sis.mssante.fr
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.test-ci-sis.mssante.fr.

Your message was successfully delivered to the destination(s)
listed below. If the message was delivered to mailbox you will
receive no further notifications. Otherwise you may still receive
notifications of mail delivery errors from other systems.

                   The mail system

<adam.hoda@test-ci-sis.mssante.fr>: delivery via
    lmtp.test-ci-sis.mssante.fr[private/dovecot-lmtp]: 250 2.0.0
    <adam.hoda@test-ci-sis.mssante.fr> kB4fJ9vR1GVQAgAA Saved

--4TdRZz0Lx2z1.1708384747/mx.test-ci-sis.mssante.fr
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.test-ci-sis.mssante.fr
X-Postfix-Queue-ID: 4TdRZz0Lx2z1
X-Postfix-Sender: rfc822; pfi-auto@ch-exemple.mssante.fr
Original-Envelope-Id: 5c1f0c3e9b2a4d7e8f6a1b2c3d4e5f60
Arrival-Date: Tue, 20 Feb 2024 00:19:03 +0100 (CET)

Final-Recipient: rfc822; adam.hoda@test-ci-sis.mssante.fr
Original-Recipient: rfc822;Adam.Hoda@TEST-CI-SIS.mssante.fr
Action: delivered
Status: 2.0.0
Remote-MTA: dns; lmtp.test-ci-sis.mssante.fr
Diagnostic-Code: smtp; 250 2.0.0 <adam.hoda@test-ci-sis.mssante.fr>
    kB4fJ9vR1GVQAgAA Saved
Last-Attempt-Date: Tue, 20 Feb 2024 00:19:07 +0100 (CET)

--4TdRZz0Lx2z1.1708384747/mx.test-ci-sis.mssante.fr
Content-Description: Message Headers
Content-Type: message/rfc822-headers

Date: Tue, 20 Feb 2024 00:19:00 +0100
From: pfi-auto@ch-exemple.mssante.fr
To: adam.hoda@test-ci-sis.mssante.fr
Message-ID: <5c1f0c3e9b2a4d7e8f6a1b2c3d4e5f60@ch-exemple.mssante.fr>
Subject: {ORIGINAL_SUBJECT}

--4TdRZz0Lx2z1.1708384747/mx.test-ci-sis.mssante.fr--
""")

DSN_DELAYED = crlf("""\
Return-Path: <>
Date: Tue, 20 Feb 2024 04:19:09 +0100 (CET)
From: MAILER-DAEMON@mx.ch-exemple.mssante.fr (Mail Delivery System)
Subject: Delayed Mail (still being retried)
To: pfi-auto@ch-exemple.mssante.fr
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="4TdS0b2Rhsz9sQ1.1708399149/mx.ch-exemple.mssante.fr"
Message-Id: <20240220031909.4TdS0b2Rhsz9sQ1@mx.ch-exemple.mssante.fr>

--4TdS0b2Rhsz9sQ1.1708399149/mx.ch-exemple.mssante.fr
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.ch-exemple.mssante.fr.

####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for more than 4 hour(s).
It will be retried until it is 5 day(s) old.

<adam.hoda@test-ci-sis.mssante.fr>: connect to
    mx.test-ci-sis.mssante.fr[192.0.2.10]:25: Connection timed out

--4TdS0b2Rhsz9sQ1.1708399149/mx.ch-exemple.mssante.fr
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.ch-exemple.mssante.fr
X-Postfix-Queue-ID: 4TdRZx1Qn8z9sPl
X-Postfix-Sender: rfc822; pfi-auto@ch-exemple.mssante.fr
Original-Envelope-Id: 5c1f0c3e9b2a4d7e8f6a1b2c3d4e5f60
Arrival-Date: Tue, 20 Feb 2024 00:19:02 +0100 (CET)

Final-Recipient: rfc822; adam.hoda@test-ci-sis.mssante.fr
Original-Recipient: rfc822;adam.hoda@test-ci-sis.mssante.fr
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.test-ci-sis.mssante.fr[192.0.2.10]:25:
    Connection timed out
Will-Retry-Until: Sun, 25 Feb 2024 00:19:02 +0100 (CET)

--4TdS0b2Rhsz9sQ1.1708399149/mx.ch-exemple.mssante.fr
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Message-ID: <5c1f0c3e9b2a4d7e8f6a1b2c3d4e5f60@ch-exemple.mssante.fr>
To: adam.hoda@test-ci-sis.mssante.fr

--4TdS0b2Rhsz9sQ1.1708399149/mx.ch-exemple.mssante.fr--
""")

# Two recipients in one report (an older sender that grouped recipients), one more relayed.
DSN_MIXED = b"""\
From: MAILER-DAEMON@relay.example.fr
Subject: Delivery Status Notification
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary=R

--R
Content-Type: text/plain

Report.
--R
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.fr

Final-Recipient: rfc822; a@one.mssante.fr
Action: delivered
Status: 2.0.0

Final-Recipient: RFC822; <b@TWO.mssante.fr>
Action: FAILED
Status: 5.2.2
Diagnostic-Code: smtp; 552 5.2.2 Mailbox full

Final-Recipient: rfc822; c@three.example.org
Action: relayed (to a non-DSN-aware mailer)
Status: 2.0.0
--R--
"""

# -- MDN samples ---------------------------------------------------------------------------------

MDN_SUCCESS = crlf(f"""\
From: serviceY_auto@chb.mssante.fr
To: pfi-auto@cha.mssante.fr
Message-ID: <20240220001900.12345@chb.mssante.fr>
Date: Tue, 20 Feb 2024 00:19:00 +0100
Subject: {b_word("XDM/1.0/DDM+ECHOGRAPHIE ABDOMINOPELVIENNE CORSE FIGATELLIX 12/10/1988")}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification; boundary="R1"

--R1
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: 8bit

Le document a été intégré.
--R1
Content-Type: message/disposition-notification

Reporting-UA: pfi.chb.mssante.fr; PFI de l'etablissement-B
Original-Recipient: rfc822;serviceY_auto@chb.mssante.fr
Final-Recipient: rfc822;serviceY_auto@chb.mssante.fr
Original-Message-ID: <7b1e2f00a1@cha.mssante.fr>
Disposition: automatic-action/MDN-sent-automatically; processed
--R1
Content-Type: message/rfc822

From: pfi-auto@cha.mssante.fr
To: serviceY_auto@chb.mssante.fr
Message-ID: <7b1e2f00a1@cha.mssante.fr>
Subject: {b_word("XDM/1.0/DDM+ECHOGRAPHIE ABDOMINOPELVIENNE CORSE FIGATELLIX 12/10/1988")}
Content-Type: text/plain; charset="UTF-8"

Corps du courriel d'origine.
--R1--
""")

# Older LPS form: the error inside the Disposition, `processed/Error: code^libellé`.
MDN_ERROR_IN_DISPOSITION = crlf(f"""\
From: serviceY_auto@chb.mssante.fr
To: pfi-auto@cha.mssante.fr
Message-ID: <mdn-2@chb.mssante.fr>
Date: Tue, 20 Feb 2024 00:21:00 +0100
Subject: {b_word("[KO Intégration système !][902] XDM/1.0/DDM+ECHO CORSE FIGATELLIX 12/10/1988")}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification; boundary="R2"

--R2
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: 8bit

Le message ci-dessous n’a pas pu être intégré automatiquement dans le DPI
pour la raison suivante : Identifiant patient inconnu
--R2
Content-Type: message/disposition-notification

Original-Recipient: rfc822;serviceY_auto@chb.mssante.fr
Final-Recipient: rfc822;serviceY_auto@chb.mssante.fr
Original-Message-ID: <7b1e2f00a2@cha.mssante.fr>
Disposition: automatic-action/MDN-sent-automatically;
 processed/Error: 902^Identifiant patient inconnu
--R2--
""")

# Newer LPS form: `processed/error` and an RFC 8098 `Error:` field (UTF-8 in the report part).
MDN_ERROR_FIELD = crlf(f"""\
From: serviceY_auto@chb.mssante.fr
To: pfi-auto@cha.mssante.fr
Message-ID: <mdn-3@chb.mssante.fr>
Date: Tue, 20 Feb 2024 00:22:00 +0100
Subject: {b_word("[KO Intégration système !][904] XDM/1.0/DDM+ECHO CORSE FIGATELLIX 12/10/1988")}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification; boundary="R3"

--R3
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: 8bit

Le document n'a pas pu être intégré.
--R3
Content-Type: message/disposition-notification
Content-Transfer-Encoding: 8bit

Reporting-UA: pfi.chb.mssante.fr
Original-Recipient: rfc822;serviceY_auto@chb.mssante.fr
Final-Recipient: rfc822;serviceY_auto@chb.mssante.fr
Original-Message-ID: <7b1e2f00a3@cha.mssante.fr>
Disposition: automatic-action/MDN-sent-automatically; processed/error
Error: 904^L'INS transmis ne correspond pas exactement à celui stocké dans la base du
 consommateur^applicationErrorCondition| W^Warning^errorSeverity
--R3--
""")

# The LPS volet's own example (struct-msg-mdn), verbatim (long lines split for the source only,
# trailing spaces kept): no blank line after the headers, the first part without headers, the MDN
# fields among the part's MIME headers, "—" instead of "--" ending two boundaries.
MDN_SPEC_EXAMPLE = "\n".join([
    'Date: Wed, 20 Feb 2024 00:19:00 (EDT) -0400',
    'From: serviceY_auto@chb.mssante.fr',
    'Message-Id: <199509200019.12345>',
    'Subject: [Erreur d’intégration !] XDM/1.0/DDM+ECHOGRAPHIE ABDOMINOPELVIENNE'
    ' CORSE FIGATELLIX 12/10/1988',
    'To: serviceY@chb.mssante.fr',
    'MIME-Version: 1.0',
    'Content-Type: multipart/report; report-type=disposition-notification;'
    ' boundary="RAA14128.773615765"',
    '--RAA14128.773615765',
    'Le document n’a pas pu être intégré.',
    "Le système a retourné l'erreur 902^Identifiant de patient inconnu"
    '^messageErrorCondition| E^Error^errorSeverity',
    '--RAA14128.773615765',
    'Content-Type: message/disposition-notification',
    'Original-Recipient: rfc822;serviceY_auto@chb.mssante.fr ',
    'Final-Recipient: rfc822; serviceY_auto@chb.mssante.fr ',
    'Original-Message-ID: <199509192301.23456 >',
    'Disposition:automatic-action/MDN-sent-automatically; processed/Error:'
    ' 902^Identifiant de patient inconnu^messageErrorCondition| E^Error^errorSeverity',
    '--RAA14128.773615765',
    'Content-Type: message/rfc822',
    'Ici apparaît le contenu du courriel MSSanté à l’origine du MDN et ses pièces jointes.',
    '--RAA14128.773615765—',
    'Content-Type: application/zip ; name="IHE_XDM.zip"',
    'Content-Transfert-Encoding: base64',
    'Content-Disposition: attachment;filename= "IHE_XDM.zip"',
    '',
    'Ici apparaît le fichier IHE_XDM.zip encode en base64.',
    '--RAA14128.773615765—',
    'Content-Type: application/pdf ; name="20220531_CR d\'imagerie médicale_CORSE_FIGATELLIX.pdf"',
    'Content-Transfert-Encoding: base64',
    'Content-Disposition: attachment;filename='
    ' "20220531_CR d\'imagerie médicale_CORSE_FIGATELLIX.pdf"',
    '',
    "Ici apparaît le fichier 20220531_CR d'imagerie médicale_CORSE_FIGATELLIX.pdf"
    ' encodé en base64.',
    '--RAA14128.773615765--',
    '',
    '',
]).encode()

MDN_DISPLAYED = b"""\
From: dr.lecteur@medecin.mssante.fr
To: pfi-auto@cha.mssante.fr
Message-ID: <mdn-4@medecin.mssante.fr>
Subject: Read: your message
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification; boundary=X

--X
Content-Type: text/plain

Your message was displayed.
--X
Content-Type: message/disposition-notification

Reporting-UA: webmail.medecin.mssante.fr; Roundcube
Final-Recipient: rfc822; dr.lecteur@medecin.mssante.fr
Original-Message-ID: <orig-displayed@cha.mssante.fr>
Disposition: manual-action/MDN-sent-manually; displayed
--X--
"""

# -- "courriel standard" KO mail ------------------------------------------------------------------

KO_MAIL = crlf(f"""\
From: serviceY_auto@chb.mssante.fr
To: pfi-auto@cha.mssante.fr
Message-ID: <ko-1@chb.mssante.fr>
Date: Tue, 20 Feb 2024 00:25:00 +0100
Subject: {b_word("[KO Intégration système !][904] XDM/1.0/DDM+ECHO CORSE FIGATELLIX 12/10/1988")}
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="K1"

--K1
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

Le message ci-dessous n'a pas pu =C3=AAtre int=C3=A9gr=C3=A9 automatiquement =
dans le DPI pour la raison suivante : L'INS transmis ne correspond pas exacte=
ment =C3=A0 celui stock=C3=A9 dans la base du consommateur
--K1
Content-Type: message/rfc822

From: pfi-auto@cha.mssante.fr
To: serviceY_auto@chb.mssante.fr
Message-ID: <orig-42@cha.mssante.fr>
Subject: {b_word("XDM/1.0/DDM+ECHOGRAPHIE CORSE FIGATELLIX 12/10/1988")}
Content-Type: text/plain; charset="UTF-8"

Corps du courriel d'origine.
--K1
Content-Type: application/zip; name="IHE_XDM.zip"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="IHE_XDM.zip"

UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==
--K1--
""")

KO_MAIL_CODE_IN_BODY = crlf("""\
From: serviceY_auto@chb.mssante.fr
To: pfi-auto@cha.mssante.fr
Message-ID: <ko-2@chb.mssante.fr>
In-Reply-To: <orig-43@cha.mssante.fr>
Subject: [Erreur d'integration !] XDM/1.0/DDM+ECHOGRAPHIE
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="K2"

--K2
Content-Type: text/plain; charset="UTF-8"

Le système a retourné l'erreur 902^Identifiant de patient inconnu^applicationErrorCode
--K2--
""")

# -- non-standard bounces -------------------------------------------------------------------------

QMAIL_BOUNCE = b"""\
Return-Path: <>
Date: 20 Feb 2024 00:19:10 -0000
From: MAILER-DAEMON@mail.operateur-exemple.fr
To: pfi-auto@ch-exemple.mssante.fr
Subject: failure notice
Message-ID: <20240220001910.1234.qmail@mail.operateur-exemple.fr>

Hi. This is the qmail-send program at mail.operateur-exemple.fr.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<dr.absent@medecin.mssante.fr>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Return-Path: <pfi-auto@ch-exemple.mssante.fr>
Message-ID: <abc123@ch-exemple.mssante.fr>
From: pfi-auto@ch-exemple.mssante.fr
To: dr.absent@medecin.mssante.fr
Subject: XDM/1.0/DDM+CR PAT-TROIS DOMINIQUE 28/03/1979

Corps.
"""

EXIM_BOUNCE = b"""\
Return-path: <>
X-Failed-Recipients: 279035121518989@patient.mssante.fr
From: Mail Delivery System <Mailer-Daemon@relay.exemple.fr>
To: pfi-auto@ch-exemple.mssante.fr
References: <def456@ch-exemple.mssante.fr>
Content-Type: text/plain; charset=us-ascii
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1rcD3x-0001Ab-Cd@relay.exemple.fr>
Date: Tue, 20 Feb 2024 00:19:11 +0100

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  279035121518989@patient.mssante.fr
    host mx.patient.mssante.fr [192.0.2.20]
    SMTP error from remote mail server after RCPT TO:<279035121518989@patient.mssante.fr>:
    552 5.2.2 Mailbox full

------ This is a copy of the message, including all the headers. ------

Message-ID: <def456@ch-exemple.mssante.fr>
From: pfi-auto@ch-exemple.mssante.fr
To: 279035121518989@patient.mssante.fr
Subject: XDM/1.0/DDM+CR PAT-TROIS DOMINIQUE 28/03/1979
"""

FRENCH_BOUNCE = crlf(f"""\
From: =?utf-8?q?Mon_espace_sant=C3=A9?= <postmaster@patient.mssante.fr>
To: pfi-auto@ch-exemple.mssante.fr
Subject: Message non remis
Message-ID: <nr-77@patient.mssante.fr>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="NR"

--NR
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: 8bit

Votre message n'a pas pu être remis à son destinataire : la messagerie du
patient est fermée.
--NR
Content-Type: message/rfc822

From: pfi-auto@ch-exemple.mssante.fr
To: 279035121518989@patient.mssante.fr
Message-ID: <ghi789@ch-exemple.mssante.fr>
Subject: {ORIGINAL_SUBJECT}

Corps.
--NR--
""")

DELAY_BOUNCE = b"""\
From: postmaster@relay.exemple.fr
To: pfi-auto@ch-exemple.mssante.fr
Subject: Warning: message delayed
Message-ID: <w-1@relay.exemple.fr>

This is a temporary error. The server will retry delivery to
<adam.hoda@test-ci-sis.mssante.fr>: 451 4.4.1 No answer from host
No action is required on your part.
"""

SUCCESS_LOOKING = b"""\
From: postmaster@relay.exemple.fr
To: pfi-auto@ch-exemple.mssante.fr
Subject: Delivery Status Notification (Success)
Message-ID: <s-1@relay.exemple.fr>

Your message was delivered to adam.hoda@test-ci-sis.mssante.fr (2.0.0).
"""

HUMAN_REPLY = crlf("""\
From: Dr Adam Hoda <adam.hoda@test-ci-sis.mssante.fr>
To: pfi-auto@ch-exemple.mssante.fr
Subject: Re: XDM/1.0/DDM+CR d'examens biologiques
In-Reply-To: <abc@ch-exemple.mssante.fr>
Message-ID: <reply-1@test-ci-sis.mssante.fr>
Content-Type: text/plain; charset=utf-8

Merci, bien reçu. Le patient a été vu hier, 550 mg de paracétamol.
""")

OUT_OF_OFFICE = b"""\
From: Dr Adam Hoda <adam.hoda@test-ci-sis.mssante.fr>
To: pfi-auto@ch-exemple.mssante.fr
Subject: Absence du bureau
Auto-Submitted: auto-replied
Message-ID: <ooo-1@test-ci-sis.mssante.fr>

Je suis absent jusqu'au 1er mars.
"""

EMPTY_REPORT = b"""\
From: MAILER-DAEMON@mx.exemple.fr
Subject: Undelivered Mail Returned to Sender
Content-Type: multipart/report; report-type=delivery-status; boundary=E

--E
Content-Type: text/plain

Your message could not be delivered: 550 5.1.1 user unknown
--E
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.exemple.fr
--E--
"""

SAMPLES = {
    "dsn-failed": DSN_FAILED, "dsn-delivered": DSN_DELIVERED, "dsn-delayed": DSN_DELAYED,
    "dsn-mixed": DSN_MIXED, "mdn-success": MDN_SUCCESS, "mdn-error-disposition":
    MDN_ERROR_IN_DISPOSITION, "mdn-error-field": MDN_ERROR_FIELD, "mdn-spec": MDN_SPEC_EXAMPLE,
    "mdn-displayed": MDN_DISPLAYED, "ko": KO_MAIL, "ko-body": KO_MAIL_CODE_IN_BODY,
    "qmail": QMAIL_BOUNCE, "exim": EXIM_BOUNCE, "french": FRENCH_BOUNCE, "delay": DELAY_BOUNCE,
    "success-looking": SUCCESS_LOOKING, "human": HUMAN_REPLY, "ooo": OUT_OF_OFFICE,
    "empty-report": EMPTY_REPORT,
}


def parsed(raw: bytes) -> Receipt:
    receipt = parse_receipt(raw)
    assert receipt is not None
    return receipt


def only(receipt: Receipt) -> RecipientOutcome:
    assert len(receipt.recipients) == 1
    return receipt.recipients[0]


def strings(value: Any) -> list[str]:
    """Every string held anywhere in a result (dataclasses, tuples, enums as their value)."""
    if isinstance(value, str):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [s for f in dataclasses.fields(value) for s in strings(getattr(value, f.name))]
    if isinstance(value, tuple):
        return [s for item in value for s in strings(item)]
    return []


# -- DSN ------------------------------------------------------------------------------------------


def test_failed_dsn_550_5_1_1() -> None:
    receipt = parsed(DSN_FAILED)
    assert receipt.kind is ReceiptKind.DSN
    assert not receipt.heuristic
    r = only(receipt)
    assert r.outcome is Outcome.NEGATIVE
    assert r.action is DeliveryAction.FAILED
    assert r.status == "5.1.1"
    assert r.diagnostic_type == "smtp"
    assert r.smtp_reply_code == "550"
    assert r.diagnostic.startswith("550 5.1.1 <inconnu@test-ci-sis.mssante.fr>: Recipient address")
    assert "User unknown in virtual mailbox table" in r.diagnostic  # unfolded
    assert r.final_recipient == r.original_recipient == "inconnu@test-ci-sis.mssante.fr"
    assert r.remote_mta == "mx.test-ci-sis.mssante.fr"
    assert receipt.reporting_agent == "mx.ch-exemple.mssante.fr"
    assert receipt.arrival_date == datetime(2024, 2, 20, 0, 19, 2, tzinfo=CET)
    assert receipt.date == datetime(2024, 2, 20, 0, 19, 5, tzinfo=CET)
    assert receipt.receipt_message_id == "<20240219231905.4TdRZx1Qn8z9sPl@mx.ch-exemple.mssante.fr>"
    assert receipt.correlation == Correlation(
        envelope_id="0f6d2c1e9b8a47d3a5c4e2f1b0a9d8c7",
        message_ids=(OUR_ID,),
        original_recipients=("inconnu@test-ci-sis.mssante.fr",),
    )
    assert smtp_error_for(r) is SmtpErrorCode.MAILBOX_UNAVAILABLE


def test_delivered_dsn() -> None:
    receipt = parsed(DSN_DELIVERED)
    assert receipt.kind is ReceiptKind.DSN
    r = only(receipt)
    assert r.outcome is Outcome.POSITIVE
    assert r.action is DeliveryAction.DELIVERED
    assert r.status == "2.0.0"
    assert r.smtp_reply_code == "250"
    assert r.last_attempt == datetime(2024, 2, 20, 0, 19, 7, tzinfo=CET)
    assert r.final_recipient == "adam.hoda@test-ci-sis.mssante.fr"
    # The address type is dropped and the domain lower-cased; the local part keeps its case.
    assert r.original_recipient == "Adam.Hoda@test-ci-sis.mssante.fr"
    # message/rfc822-headers (the name the brief uses; RFC 6522 says text/rfc822-headers).
    assert receipt.correlation.message_ids == (
        "<5c1f0c3e9b2a4d7e8f6a1b2c3d4e5f60@ch-exemple.mssante.fr>",)
    assert receipt.correlation.envelope_id == "5c1f0c3e9b2a4d7e8f6a1b2c3d4e5f60"
    assert smtp_error_for(r) is None


def test_delayed_dsn_is_pending_with_a_timeout_code() -> None:
    receipt = parsed(DSN_DELAYED)
    r = only(receipt)
    assert r.outcome is Outcome.PENDING
    assert r.action is DeliveryAction.DELAYED
    assert r.status == "4.4.1"
    assert r.diagnostic_type == "x-postfix"
    assert r.smtp_reply_code == ""  # not an smtp diagnostic: no reply code is read from it
    assert r.will_retry_until == datetime(2024, 2, 25, 0, 19, 2, tzinfo=CET)
    assert smtp_error_for(r) is SmtpErrorCode.NO_ANSWER


def test_dsn_with_several_recipients() -> None:
    receipt = parsed(DSN_MIXED)
    assert [(r.final_recipient, r.outcome, r.action) for r in receipt.recipients] == [
        ("a@one.mssante.fr", Outcome.POSITIVE, DeliveryAction.DELIVERED),
        ("b@two.mssante.fr", Outcome.NEGATIVE, DeliveryAction.FAILED),
        ("c@three.example.org", Outcome.INCONCLUSIVE, DeliveryAction.RELAYED),
    ]
    delivered, failed, relayed = receipt.recipients
    assert smtp_error_for(delivered) is None
    assert smtp_error_for(failed) is SmtpErrorCode.STORAGE_EXCEEDED
    assert smtp_error_for(relayed) is SmtpErrorCode.RELAYED
    assert receipt.correlation.message_ids == ()


def test_dsn_without_per_recipient_fields_is_read_heuristically() -> None:
    receipt = parsed(EMPTY_REPORT)
    assert receipt.kind is ReceiptKind.HEURISTIC
    assert receipt.heuristic
    r = only(receipt)
    assert (r.outcome, r.status, r.smtp_reply_code) == (Outcome.NEGATIVE, "5.1.1", "550")
    assert "delivery-status without per-recipient fields" in receipt.notes


def test_global_and_base64_delivery_status_parts() -> None:
    report = ("Reporting-MTA: dns; mx.exemple.fr\n\nFinal-Recipient: utf-8; élodie@exemple.fr\n"
              "Action: failed\nStatus: 5.1.1\n")
    encoded = base64.encodebytes(report.encode()).decode()
    for part in (f"Content-Type: message/global-delivery-status\n\n{report}",
                 "Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
                 f"{encoded}"):
        raw = ("From: MAILER-DAEMON@mx.exemple.fr\nSubject: x\nContent-Type: multipart/report; "
               f"report-type=delivery-status; boundary=G\n\n--G\n{part}\n--G--\n").encode()
        r = only(parsed(raw))
        assert (r.final_recipient, r.outcome, r.status) == (
            "élodie@exemple.fr", Outcome.NEGATIVE, "5.1.1")


# -- MDN ------------------------------------------------------------------------------------------


def test_mdn_success() -> None:
    receipt = parsed(MDN_SUCCESS)
    assert receipt.kind is ReceiptKind.MDN
    assert not receipt.heuristic
    r = only(receipt)
    assert r.outcome is Outcome.POSITIVE
    assert r.disposition is not None
    assert r.disposition.action_mode == "automatic-action"
    assert r.disposition.sending_mode == "mdn-sent-automatically"
    assert r.disposition.type is DispositionType.PROCESSED
    assert r.disposition.modifiers == ()
    assert r.error is None
    assert r.final_recipient == r.original_recipient == "serviceY_auto@chb.mssante.fr"
    assert receipt.reporting_agent == "pfi.chb.mssante.fr; PFI de l'etablissement-B"
    # Original-Message-ID and the Message-ID of the returned original (part 3) agree: one key.
    assert receipt.correlation.message_ids == ("<7b1e2f00a1@cha.mssante.fr>",)
    assert receipt.receipt_message_id == "<20240220001900.12345@chb.mssante.fr>"


def test_mdn_error_inside_the_disposition() -> None:
    receipt = parsed(MDN_ERROR_IN_DISPOSITION)
    r = only(receipt)
    assert r.outcome is Outcome.NEGATIVE
    assert r.disposition is not None
    assert r.disposition.type is DispositionType.PROCESSED
    assert r.disposition.modifiers == ("error",)
    assert r.error is not None
    assert (r.error.code, r.error.label) == ("902", "Identifiant patient inconnu")
    assert (r.error.coding_system, r.error.severity) == ("", None)
    assert receipt.correlation.message_ids == ("<7b1e2f00a2@cha.mssante.fr>",)


def test_mdn_error_field_is_preferred_and_keeps_system_and_severity() -> None:
    r = only(parsed(MDN_ERROR_FIELD))
    assert r.outcome is Outcome.NEGATIVE
    assert r.disposition is not None
    assert r.disposition.modifiers == ("error",)
    assert r.error is not None
    assert r.error.code == "904"
    assert r.error.label == ("L'INS transmis ne correspond pas exactement à celui stocké dans la "
                             "base du consommateur")
    assert r.error.coding_system == "applicationErrorCondition"
    assert r.error.severity is Severity.WARNING


def test_mdn_exact_spec_example() -> None:
    receipt = parsed(MDN_SPEC_EXAMPLE)
    assert receipt.kind is ReceiptKind.MDN
    r = only(receipt)
    assert r.outcome is Outcome.NEGATIVE
    assert r.disposition is not None
    assert (r.disposition.action_mode, r.disposition.sending_mode, r.disposition.type) == (
        "automatic-action", "mdn-sent-automatically", DispositionType.PROCESSED)
    assert r.disposition.is_error
    assert r.error is not None
    assert (r.error.code, r.error.label) == ("902", "Identifiant de patient inconnu")
    assert (r.error.coding_system, r.error.severity) == ("messageErrorCondition", Severity.ERROR)
    assert r.final_recipient == r.original_recipient == "serviceY_auto@chb.mssante.fr"
    assert receipt.correlation.message_ids == ("<199509192301.23456>",)
    assert receipt.receipt_message_id == "<199509200019.12345>"
    assert receipt.date == datetime(2024, 2, 20, 4, 19, tzinfo=UTC)
    assert "MIME defects: MissingHeaderBodySeparatorDefect" in receipt.notes


def processed_mdn(error_field: str, disposition: str = "processed") -> bytes:
    """A newer-form LPS MDN with `Error: {error_field}` (no KO subject)."""
    return crlf(f"""\
From: serviceY_auto@chb.mssante.fr
To: pfi-auto@cha.mssante.fr
Message-ID: <mdn-ok@chb.mssante.fr>
Subject: XDM/1.0/DDM+ECHO
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification; boundary="R9"

--R9
Content-Type: text/plain; charset="UTF-8"

Le document a été intégré.
--R9
Content-Type: message/disposition-notification

Final-Recipient: rfc822;serviceY_auto@chb.mssante.fr
Original-Message-ID: <7b1e2f00a9@cha.mssante.fr>
Disposition: automatic-action/MDN-sent-automatically; {disposition}
Error: {error_field}
--R9--
""")


@pytest.mark.parametrize("error_field", [
    "0^Message accepted^messageErrorCondition| I^Information^errorSeverity",
    "0^Message accepted",
    "904^INS approchant^applicationErrorCondition| W^Warning^errorSeverity",
    "207^Note^messageErrorCondition| I^Information^errorSeverity",
])
def test_an_error_field_that_reports_acceptance_keeps_a_processed_mdn_positive(
        error_field: str) -> None:
    r = only(parsed(processed_mdn(error_field)))
    assert r.outcome is Outcome.POSITIVE
    assert r.error is not None  # kept for the record


@pytest.mark.parametrize(("error_field", "disposition"), [
    ("902^Identifiant de patient inconnu^messageErrorCondition| E^Error^errorSeverity",
     "processed"),
    ("902^Identifiant de patient inconnu", "processed"),  # no severity: an error
    ("904^INS approchant| W^Warning^errorSeverity", "processed/error"),  # the modifier decides
    ("0^Message accepted", "processed/error"),
])
def test_an_error_field_reporting_a_failure_makes_the_mdn_negative(
        error_field: str, disposition: str) -> None:
    assert only(parsed(processed_mdn(error_field, disposition))).outcome is Outcome.NEGATIVE


def test_mdn_displayed_is_positive_and_deleted_inconclusive() -> None:
    r = only(parsed(MDN_DISPLAYED))
    assert r.outcome is Outcome.POSITIVE
    assert r.disposition is not None
    assert (r.disposition.action_mode, r.disposition.type) == (
        "manual-action", DispositionType.DISPLAYED)
    for disposition in (b"deleted", b"dispatched", b"denied"):
        raw = MDN_DISPLAYED.replace(b"; displayed", b"; " + disposition)
        r = only(parsed(raw))
        assert r.outcome is Outcome.INCONCLUSIVE
        assert r.disposition is not None
        assert r.disposition.type_text == disposition.decode()
    assert only(parsed(MDN_DISPLAYED.replace(b"; displayed", b"; denied"))).disposition.type is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "expected"), [
    ("902^Identifiant patient inconnu", ("902", "Identifiant patient inconnu", "", None)),
    ("902^Identifiant de patient inconnu^messageErrorCondition| E^Error^errorSeverity",
     ("902", "Identifiant de patient inconnu", "messageErrorCondition", Severity.ERROR)),
    (" 905 ^ L'INS transmis n'est pas complet ^ applicationErrorCode |F",
     ("905", "L'INS transmis n'est pas complet", "applicationErrorCode", Severity.FATAL)),
    ("906 - Erreur autre", ("906", "Erreur autre", "", None)),
    ("903", ("903", "", "", None)),
    ("Patient inconnu", ("", "Patient inconnu", "", None)),
    ("code erreur^libellé erreur", ("", "libellé erreur", "", None)),
])
def test_error_syntaxes_in_the_disposition(text: str, expected: tuple[object, ...]) -> None:
    raw = MDN_DISPLAYED.replace(
        b"manual-action/MDN-sent-manually; displayed",
        f"automatic-action/MDN-sent-automatically; processed/Error: {text}".encode())
    r = only(parsed(raw))
    assert r.outcome is Outcome.NEGATIVE
    assert r.error is not None
    assert (r.error.code, r.error.label, r.error.coding_system, r.error.severity) == expected


# -- KO mail --------------------------------------------------------------------------------------


def test_ko_mail() -> None:
    receipt = parsed(KO_MAIL)
    assert receipt.kind is ReceiptKind.KO_MAIL
    assert not receipt.heuristic
    r = only(receipt)
    assert r.outcome is Outcome.NEGATIVE
    assert r.error is not None
    assert r.error.code == "904"
    assert r.error.label == ("L'INS transmis ne correspond pas exactement à celui stocké dans la "
                             "base du consommateur")
    assert r.final_recipient == "serviceY_auto@chb.mssante.fr"  # the mailbox that reports
    assert r.original_recipient == "serviceY_auto@chb.mssante.fr"  # To of the original
    assert receipt.correlation.message_ids == ("<orig-42@cha.mssante.fr>",)
    assert receipt.receipt_message_id == "<ko-1@chb.mssante.fr>"


def test_ko_mail_variant_subject_and_code_in_the_body() -> None:
    receipt = parsed(KO_MAIL_CODE_IN_BODY)
    assert receipt.kind is ReceiptKind.KO_MAIL
    r = only(receipt)
    assert r.error is not None
    assert (r.error.code, r.error.label) == ("902", "Identifiant de patient inconnu")
    assert receipt.correlation.in_reply_to == ("<orig-43@cha.mssante.fr>",)
    assert receipt.correlation.candidate_message_ids == ("<orig-43@cha.mssante.fr>",)


@pytest.mark.parametrize("subject", [
    "[KO Intégration système !][902] XDM/1.0/DDM+X",
    "[KO Intégration système ! ][902] XDM/1.0/DDM+X",
    "[ko integration systeme!] [902] XDM/1.0/DDM+X",
    "RE: [KO Intégration système !][902] XDM/1.0/DDM+X",
    "[Erreur d’intégration !][902] XDM/1.0/DDM+X",
])
def test_ko_subject_variants(subject: str) -> None:
    raw = f"From: a@b.fr\nSubject: {b_word(subject)}\nContent-Type: text/plain\n\nKO\n".encode()
    r = only(parsed(raw))
    assert r.error is not None
    assert r.error.code == "902"


# -- heuristics -----------------------------------------------------------------------------------


def test_qmail_bounce() -> None:
    receipt = parsed(QMAIL_BOUNCE)
    assert receipt.kind is ReceiptKind.HEURISTIC
    assert receipt.heuristic
    r = only(receipt)
    assert r.outcome is Outcome.NEGATIVE
    assert r.final_recipient == "dr.absent@medecin.mssante.fr"
    assert r.status == "5.1.1"
    assert r.diagnostic == "Sorry, no mailbox here by that name. (#5.1.1)"
    assert receipt.correlation.message_ids == ("<abc123@ch-exemple.mssante.fr>",)
    assert smtp_error_for(r) is SmtpErrorCode.MAILBOX_UNAVAILABLE


def test_exim_bounce() -> None:
    receipt = parsed(EXIM_BOUNCE)
    assert receipt.heuristic
    r = only(receipt)
    assert r.outcome is Outcome.NEGATIVE
    assert r.final_recipient == "279035121518989@patient.mssante.fr"
    assert (r.status, r.smtp_reply_code) == ("5.2.2", "552")
    assert receipt.correlation.message_ids == ("<def456@ch-exemple.mssante.fr>",)
    assert receipt.correlation.references == ("<def456@ch-exemple.mssante.fr>",)
    assert smtp_error_for(r) is SmtpErrorCode.STORAGE_EXCEEDED


def test_the_returned_copy_does_not_drive_the_outcome() -> None:
    """Keywords and codes inside the copy of the original (clinical text) are not the bounce's."""
    raw = b"""\
From: MAILER-DAEMON@mail.operateur-exemple.fr
Subject: Returned mail
Message-ID: <rm-1@mail.operateur-exemple.fr>

This is an automatically generated message.

--- Below this line is a copy of the message.

Message-ID: <jkl012@ch-exemple.mssante.fr>
To: dr.x@medecin.mssante.fr

Patient inconnu du service, version 5.1.1 du protocole: message non remis au laboratoire.
"""
    receipt = parsed(raw)
    r = only(receipt)
    assert (r.outcome, r.status, r.smtp_reply_code) == (Outcome.INCONCLUSIVE, "", "")
    assert r.final_recipient == ""  # the copy's To is not a returned-headers part
    assert receipt.correlation.message_ids == ("<jkl012@ch-exemple.mssante.fr>",)


def test_french_non_standard_bounce() -> None:
    receipt = parsed(FRENCH_BOUNCE)
    assert receipt.heuristic
    r = only(receipt)
    assert r.outcome is Outcome.NEGATIVE
    assert r.status == "5.2.1"  # "messagerie ... fermée": mailbox disabled, from keywords
    assert r.final_recipient == "279035121518989@patient.mssante.fr"  # To of the original
    assert receipt.correlation.message_ids == ("<ghi789@ch-exemple.mssante.fr>",)
    assert smtp_error_for(r) is SmtpErrorCode.MAILBOX_UNAVAILABLE


def test_delay_bounce_is_pending() -> None:
    r = only(parsed(DELAY_BOUNCE))
    assert r.outcome is Outcome.PENDING
    assert (r.status, r.smtp_reply_code) == ("4.4.1", "451")
    assert r.final_recipient == "adam.hoda@test-ci-sis.mssante.fr"
    assert smtp_error_for(r) is SmtpErrorCode.PROCESSING_ERROR  # 451 is in the table


def test_heuristics_never_claim_a_delivery() -> None:
    receipt = parsed(SUCCESS_LOOKING)
    assert receipt.heuristic
    assert only(receipt).outcome is Outcome.INCONCLUSIVE


@pytest.mark.parametrize("name", ["human", "ooo"])
def test_ordinary_mail_is_not_a_receipt(name: str) -> None:
    assert parse_receipt(SAMPLES[name]) is None


def test_results_hold_no_subject_and_no_line_breaks() -> None:
    for name, raw in SAMPLES.items():
        receipt = parse_receipt(raw)
        if receipt is None:
            continue
        for value in strings(receipt):
            assert PATIENT_NAME not in value, name
            assert "FIGATELLIX" not in value, name
            assert not any(ch in value for ch in "\r\n\x00\x0b\x1c"), name
        # Addresses (a patient's is their INS) and labels are kept out of repr(), hence logs.
        hidden = [*receipt.correlation.original_recipients,
                  *(r.final_recipient for r in receipt.recipients),
                  *(r.original_recipient for r in receipt.recipients),
                  *(r.error.label for r in receipt.recipients if r.error)]
        assert not [value for value in hidden if value and value in repr(receipt)], name


# -- Message-IDs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("<abc@x.fr>", "<abc@x.fr>"),
    ("  <abc@x.fr>  (comment)", "<abc@x.fr>"),
    ("<199509192301.23456 >", "<199509192301.23456>"),
    ("abc@x.fr", "<abc@x.fr>"),
    ("", None),
    ("<>", None),
    ("two tokens", None),
    ("<a\r\n b@x.fr>", "<ab@x.fr>"),
])
def test_normalize_message_id(value: str, expected: str | None) -> None:
    assert normalize_message_id(value) == expected


# -- SMTPERRORCODE --------------------------------------------------------------------------------


def dsn_outcome(action: DeliveryAction | None, status: str = "", reply: str = "",
                outcome: Outcome | None = None) -> RecipientOutcome:
    default = {DeliveryAction.DELIVERED: Outcome.POSITIVE, DeliveryAction.FAILED: Outcome.NEGATIVE,
               DeliveryAction.DELAYED: Outcome.PENDING}
    return RecipientOutcome(outcome=outcome or default.get(action, Outcome.INCONCLUSIVE),  # type: ignore[arg-type]
                            action=action, status=status, smtp_reply_code=reply,
                            diagnostic_type="smtp" if reply else "")


@pytest.mark.parametrize(("status", "reply", "code"), [
    ("5.1.1", "550", "550"),  # the reply code, when the table has it
    ("5.2.2", "550", "550"),  # ... even where the status would say otherwise (reference rule)
    ("5.2.2", "", "552"),
    ("4.2.2", "", "422"),
    ("5.3.4", "", "523"),
    ("5.1.10", "556", "512"),  # 556 is not in the table: the status decides
    ("4.4.7", "", "420"),
    ("5.7.1", "", "541"),
    ("5.7.26", "", "554"),  # a status the map does not know: the class default
    ("4.9.9", "", "451"),
    ("", "571", "554"),  # a reply code outside the table, no status: the class default
    ("", "470", "451"),
    ("", "421", "421"),
    ("", "", "554"),  # failed without any code
])
def test_smtp_error_code_of_a_failure(status: str, reply: str, code: str) -> None:
    action = DeliveryAction.DELAYED if (status or reply or "5")[0] == "4" else \
        DeliveryAction.FAILED
    entry = smtp_error_for(dsn_outcome(action, status, reply))
    assert entry is not None
    assert entry.code == code
    assert entry.label == SmtpErrorCode.from_code(code).label  # type: ignore[union-attr]


def test_smtp_error_code_of_successes_and_inconclusive() -> None:
    assert smtp_error_for(dsn_outcome(DeliveryAction.DELIVERED, "2.0.0", "250")) is None
    assert smtp_error_for(dsn_outcome(DeliveryAction.EXPANDED, "2.0.0",
                                      outcome=Outcome.POSITIVE)) is None
    assert smtp_error_for(dsn_outcome(DeliveryAction.RELAYED, "2.0.0")) is SmtpErrorCode.RELAYED
    assert smtp_error_for(dsn_outcome(None, "2.0.0")) is None  # unknown action, 2.x.x


def test_smtp_error_table_is_the_published_one() -> None:
    codes = [e.code for e in SmtpErrorCode]
    assert codes == ["101", "111", "251", "252", "420", "421", "422", "431", "432", "441", "442",
                     "450", "451", "452", "500", "501", "502", "503", "504", "510", "512", "513",
                     "523", "530", "541", "550", "551", "552", "553", "554"]
    assert SmtpErrorCode.MAILBOX_UNAVAILABLE.label.startswith(
        "Action non effectuée : boîte aux lettres non disponible")
    assert SmtpErrorCode.from_code("556") is None


# -- robustness -----------------------------------------------------------------------------------

TOKENS = [
    b"\r\n", b"\n", b"\r\n\r\n", b"--", b":", b";", b"<", b">", b"^", b"|", b"\x00", b"\xff",
    b"\xc3", b"=?utf-8?b?", b"?=", b"=?x-unknown?q?=FF?=", b"Content-Type: message/delivery-status",
    b"Content-Type: multipart/report; boundary=", b"Content-Transfer-Encoding: base64",
    b"Action: ", b"Status: 5.", b"Disposition: ", b"processed/Error: ", b"Final-Recipient: ;",
    b"Original-Message-ID: <", b"[KO Int\xc3\xa9gration syst\xc3\xa8me !][", b"\t", b" ",
    b"Content-Type: message/rfc822\r\n\r\n", b"=\r\n", b"((((((((", b"utf-8''%ff",
]


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for position, operation, token in edits:
        at = position % (len(out) + 1)
        if operation == 0:
            out[at:at] = token
        elif operation == 1:
            del out[at:at + len(token) + 1]
        else:
            out[at:at + len(token)] = token
    return bytes(out)


def check_result(receipt: Receipt | None) -> None:
    if receipt is None:
        return
    hash(receipt)  # frozen all the way down
    for value in strings(receipt):
        assert not {"\r", "\n"} & set(value)
    for r in receipt.recipients:
        entry = smtp_error_for(r)
        assert entry is None or isinstance(entry, SmtpErrorCode)


def parse_or_connector_error(raw: bytes) -> None:
    try:
        receipt = parse_receipt(raw)
    except ReceiptError:  # the only exception allowed out (a ConnectorError)
        event("ReceiptError")
        return
    event(receipt.kind.value if receipt else "not a receipt")
    check_result(receipt)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_raise_anything_else(raw: bytes) -> None:
    parse_or_connector_error(raw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 2),
                       st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12))),
             min_size=1, max_size=10),
)
def test_mutated_receipts_never_raise_anything_else(name: str,
                                                    edits: list[tuple[int, int, bytes]]) -> None:
    parse_or_connector_error(mutate(SAMPLES[name], edits))


FIELD_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Action", "Status", "Final-Recipient",
                                           "Original-Recipient", "Diagnostic-Code", "Remote-MTA",
                                           "Last-Attempt-Date", "Disposition", "Error",
                                           "Original-Message-ID"]),
                          FIELD_TEXT), min_size=1, max_size=8),
       st.sampled_from(["message/delivery-status", "message/disposition-notification"]))
def test_arbitrary_report_fields(fields: list[tuple[str, str]], report_type: str) -> None:
    block = "\n".join(f"{name}: {value}" for name, value in fields)
    raw = (f"From: MAILER-DAEMON@x.fr\nSubject: r\nContent-Type: multipart/report; boundary=F\n\n"
           f"--F\nContent-Type: {report_type}\n\nReporting-MTA: dns; x\n\n{block}\n--F--\n")
    parse_or_connector_error(raw.encode("utf-8"))


def test_receipt_error_is_a_connector_error() -> None:
    assert issubclass(ReceiptError, ConnectorError)


def test_deeply_nested_mime_is_a_receipt_error() -> None:
    # The standard parser recurses once per nesting level: RecursionError, turned into ours.
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
                   for i in range(3000))
    with pytest.raises(ReceiptError, match=r"\(RecursionError\)$"):
        parse_receipt(raw)


def test_a_parser_failure_becomes_a_receipt_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.mail import receipts

    def broken(_raw: bytes) -> None:
        raise IndexError("somewhere in the email package")

    monkeypatch.setattr(receipts, "_parse", broken)
    with pytest.raises(ReceiptError, match=r"^mail could not be parsed \(IndexError\)$"):
        parse_receipt(DSN_FAILED)


def test_references_are_tried_newest_first() -> None:
    """A notice about a replacement mail refers (References, oldest first) to the mail it
    follows up too: the replacement, the newest, must be found first."""
    correlation = Correlation(references=("<original@chu.test>", "<replacement@chu.test>"))
    assert correlation.candidate_message_ids == ("<replacement@chu.test>",
                                                 "<original@chu.test>")
    both = Correlation(message_ids=("<returned@chu.test>",), in_reply_to=("<reply@chu.test>",),
                       references=("<original@chu.test>", "<reply@chu.test>"))
    assert both.candidate_message_ids == ("<returned@chu.test>", "<reply@chu.test>",
                                          "<original@chu.test>")
