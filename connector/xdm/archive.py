"""The IHE_XDM.zip archive (IHE ITI XDM "ZIP over e-mail", reference `mssante-transport.md` §3.7).

Layout::

    README.TXT                         producer, application, instructions, tree, document list
    INDEX.HTM                          entry page linking README.TXT and the documents
    IHE_XDM/
    IHE_XDM/SUBSET01/
    IHE_XDM/SUBSET01/METADATA.XML      ebRIM SubmitObjectsRequest (`build_metadata_xml`)
    IHE_XDM/SUBSET01/DOC0001.XML ...   the CDA documents, bytes unchanged (8.3 upper-case names)

Determinism: same submission → same bytes. Entries are written in a fixed order, with a fixed
timestamp (the submission time in UTC; zip has no time zone), fixed permissions and creator
system, and DEFLATE at a fixed level (`COMPRESS_LEVEL`).

Level 1: a level-1 CDA is mostly the base64 of its PDF, which DEFLATE shrinks by Huffman coding
alone (level 9 took ~20% more time for a member 2% smaller); on the structured (level-3) CDAs of
the ANS examples level 9 took 8 to 12 times as long for a member ~24% smaller (2-3 KB).
`bench/mailbuild.py` times the archive.

Patient data in README.TXT / INDEX.HTM: none. IHE XDM asks README.TXT for the identity of the
creating institution and application and INDEX.HTM for a table of contents; neither requires
patient identity. The document list therefore names each file and its document *type* (the
`code/@displayName` of JDV_J07, a controlled label such as "CR d'examens biologiques"); titles
(free text that may name the patient), patient names, INS and dates are left out. The patient's
identity travels only in METADATA.XML and the CDA documents, as IHE XDM requires.
"""

from __future__ import annotations

import html
import re
import zipfile
from datetime import UTC
from io import BytesIO

from connector.xdm.metadata import (
    XdmDocument,
    XdmSubmission,
    build_metadata_xml,
    document_file_name,
)

SUBSET_DIR = "IHE_XDM/SUBSET01/"
METADATA_PATH = SUBSET_DIR + "METADATA.XML"
README_PATH = "README.TXT"
INDEX_PATH = "INDEX.HTM"
_DIRECTORIES = ("IHE_XDM/", SUBSET_DIR)
_FILE_MODE = 0o100644 << 16
_DIR_MODE = (0o040755 << 16) | 0x10  # unix mode + MS-DOS directory flag
_UNIX = 3
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
COMPRESS_LEVEL = 1


def _type_label(doc: XdmDocument) -> str:
    code = doc.header.code
    if code is None:
        return "document CDA"
    return code.display_name or code.code


def _readme(submission: XdmSubmission) -> str:
    producer = submission.producer
    lines = [
        "Emetteur :",
        "==========",
        f"  . Organisme : {producer.organization}",
    ]
    if producer.contact:
        lines.append(f"  . Contact : {producer.contact}")
    lines += [
        "",
        "Application de l'emetteur :",
        "===========================",
        f"  . Nom : {producer.application}",
        f"  . Version : {producer.version}",
        f"  . Editeur : {producer.vendor}",
        "",
        "Instructions :",
        "==============",
        "  . Archive IHE XDM (ITI-32, ZIP over e-mail). Ouvrez les documents recus par",
        "    messagerie securisee de sante dans votre logiciel de professionnel de sante.",
        "  . Les metadonnees XDS sont dans IHE_XDM/SUBSET01/METADATA.XML.",
        "",
        "Arborescence :",
        "==============",
        f"  {README_PATH}",
        f"  {INDEX_PATH}",
        "  IHE_XDM/",
        "    SUBSET01/",
        "      METADATA.XML",
    ]
    for index, doc in enumerate(submission.documents, start=1):
        lines.append(f"      {document_file_name(index)}  ({_type_label(doc)})")
    return "\r\n".join(lines) + "\r\n"


def _index_htm(submission: XdmSubmission) -> str:
    producer = submission.producer
    esc = html.escape
    items = "\n".join(
        f'<li><a href="{SUBSET_DIR}{document_file_name(i)}">{document_file_name(i)}</a>'
        f" : {esc(_type_label(doc))}</li>"
        for i, doc in enumerate(submission.documents, start=1)
    )
    contact = f" ({esc(producer.contact)})" if producer.contact else ""
    return (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" lang="fr" xml:lang="fr">\n'
        '<head><meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />'
        "<title>IHE XDM</title></head>\n<body>\n"
        f"<p>Emetteur : {esc(producer.organization)}{contact}</p>\n"
        f"<p>Application : {esc(producer.application)} {esc(producer.version)} "
        f"({esc(producer.vendor)})</p>\n"
        f'<p><a href="{README_PATH}">{README_PATH}</a></p>\n'
        f'<p><a href="{METADATA_PATH}">Metadonnees XDS (METADATA.XML)</a></p>\n'
        f"<ul>\n{items}\n</ul>\n</body>\n</html>\n"
    )


def _timestamp(submission: XdmSubmission) -> tuple[int, int, int, int, int, int]:
    moment = submission.submission_time.astimezone(UTC)
    stamp = (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    return max(stamp, _ZIP_EPOCH)


def _write(
    archive: zipfile.ZipFile,
    name: str,
    data: bytes,
    stamp: tuple[int, int, int, int, int, int],
) -> None:
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.create_system = _UNIX
    info.external_attr = _FILE_MODE
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL)


def xdm_entries(submission: XdmSubmission) -> list[tuple[str, bytes]]:
    """The archive's files in write order (directories excluded), as (path, bytes)."""
    entries = [
        (README_PATH, _readme(submission).encode("utf-8")),
        (INDEX_PATH, _index_htm(submission).encode("utf-8")),
        (METADATA_PATH, build_metadata_xml(submission)),
    ]
    for index, doc in enumerate(submission.documents, start=1):
        entries.append((SUBSET_DIR + document_file_name(index), doc.content))
    return entries


def build_xdm_zip(submission: XdmSubmission) -> bytes:
    """IHE_XDM.zip for `submission` (layout and determinism in the module docstring)."""
    entries = xdm_entries(submission)  # METADATA.XML built first: document errors raise here
    stamp = _timestamp(submission)
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for directory in _DIRECTORIES:
            info = zipfile.ZipInfo(directory, date_time=stamp)
            info.create_system = _UNIX
            info.external_attr = _DIR_MODE
            archive.writestr(info, b"")
        for name, data in entries:
            _write(archive, name, data, stamp)
    return buffer.getvalue()


_DOCUMENT_ENTRY = re.compile(r"IHE_XDM/SUBSET01/DOC\d{4}\.XML\Z")
_DOCUMENT_MAX = 64 * 1024 * 1024  # a CDA read back from an archive this connector wrote


def read_xdm_documents(data: bytes) -> tuple[bytes, ...]:
    """The CDA documents of an IHE_XDM.zip (`DOC0001.XML`, ... of SUBSET01), in order, bytes
    unchanged: what a later mail (a legacy report's withdrawal) sends again. ValueError when
    it is not such an archive."""
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            names = sorted(i.filename for i in archive.infolist()
                           if _DOCUMENT_ENTRY.match(i.filename) and i.file_size <= _DOCUMENT_MAX)
            documents = tuple(archive.read(name) for name in names)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"not an IHE_XDM archive: {exc}") from exc
    if not documents:
        raise ValueError("not an IHE_XDM archive: no SUBSET01 document")
    return documents
