"""IHE_XDM.zip: layout, 8.3 names, integrity against METADATA.XML, determinism, no patient data."""

from __future__ import annotations

import hashlib
import re
import zipfile
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from lxml import etree

from connector.cda.header import InstanceId
from connector.cda.safe_xml import parse_xml
from connector.errors import DocumentError
from connector.xdm import XdmAction, build_xdm_zip
from connector.xdm import metadata as md
from tests.conftest import CDA_FIXTURES, CISIS_FIXTURES
from tests.unit.xdm import (
    FIXTURE_DOCUMENTS,
    PRODUCER,
    SUBMITTED_AT,
    external_id,
    fixture_id,
    one,
    slot,
    submission,
    xpath,
)

ORU = CISIS_FIXTURES / "oru-r01-initial"
TWO_DOCS = (ORU / "document-n1.xml", ORU / "document-n3.xml")
ISO9660_L1 = re.compile(r"^[A-Z0-9_]{1,8}(\.[A-Z0-9_]{1,3})?$")


def _open(data: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(BytesIO(data))


def test_layout_and_8_3_names() -> None:
    archive = _open(build_xdm_zip(submission(*TWO_DOCS)))
    assert archive.namelist() == [
        "IHE_XDM/",
        "IHE_XDM/SUBSET01/",
        "README.TXT",
        "INDEX.HTM",
        "IHE_XDM/SUBSET01/METADATA.XML",
        "IHE_XDM/SUBSET01/DOC0001.XML",
        "IHE_XDM/SUBSET01/DOC0002.XML",
    ]
    for name in archive.namelist():
        for part in name.rstrip("/").split("/"):
            assert ISO9660_L1.match(part), part
    assert archive.testzip() is None
    assert archive.getinfo("IHE_XDM/SUBSET01/").is_dir()


@pytest.mark.parametrize("path", FIXTURE_DOCUMENTS, ids=fixture_id)
def test_documents_are_stored_unchanged_and_metadata_matches_entry_bytes(path: Path) -> None:
    sub = submission(path)
    archive = _open(build_xdm_zip(sub))
    stored = archive.read("IHE_XDM/SUBSET01/DOC0001.XML")
    assert stored == sub.documents[0].content

    metadata = parse_xml(archive.read("IHE_XDM/SUBSET01/METADATA.XML"))
    (entry,) = xpath(metadata, "rim:RegistryObjectList/rim:ExtrinsicObject")
    assert slot(entry, "hash") == [hashlib.sha1(stored, usedforsecurity=False).hexdigest()]
    assert slot(entry, "size") == [str(len(stored))]
    (uri,) = slot(entry, "URI")
    assert "IHE_XDM/SUBSET01/" + uri in archive.namelist()


def test_each_entry_of_a_two_document_subset_points_at_its_file() -> None:
    archive = _open(build_xdm_zip(submission(*TWO_DOCS)))
    metadata = parse_xml(archive.read("IHE_XDM/SUBSET01/METADATA.XML"))
    for entry in xpath(metadata, "rim:RegistryObjectList/rim:ExtrinsicObject"):
        (uri,) = slot(entry, "URI")
        content = archive.read("IHE_XDM/SUBSET01/" + uri)
        assert slot(entry, "hash") == [hashlib.sha1(content, usedforsecurity=False).hexdigest()]
        cda_id = parse_xml(content).xpath("string(/*/*[local-name()='id']/@root)")
        assert external_id(entry, md.DE_UNIQUE_ID) == cda_id


def test_same_input_gives_the_same_bytes() -> None:
    first = build_xdm_zip(submission(*TWO_DOCS))
    second = build_xdm_zip(submission(*TWO_DOCS))
    assert first == second
    later = build_xdm_zip(
        submission(*TWO_DOCS, submission_time=SUBMITTED_AT + timedelta(seconds=2))
    )
    assert later != first


def test_entry_timestamps_are_the_submission_time_in_utc() -> None:
    archive = _open(build_xdm_zip(submission(*TWO_DOCS)))
    expected = SUBMITTED_AT.astimezone(UTC)
    stamp = (expected.year, expected.month, expected.day, expected.hour, expected.minute, 12)
    assert {info.date_time for info in archive.infolist()} == {stamp}
    assert {info.create_system for info in archive.infolist()} == {3}


def test_time_before_the_zip_epoch_is_clamped() -> None:
    old = datetime(1970, 1, 1, tzinfo=UTC)
    archive = _open(build_xdm_zip(submission(*TWO_DOCS, submission_time=old)))
    assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


@pytest.mark.parametrize(
    ("action", "value"),
    [(XdmAction.NEW, []), (XdmAction.REPLACE, ["C"]), (XdmAction.DELETE, ["D"])],
)
def test_action_slot_travels_in_the_archive(action: XdmAction, value: list[str]) -> None:
    path = CISIS_FIXTURES / "mdm-t04-delete" / "document.xml"
    archive = _open(build_xdm_zip(submission(path, action=action)))
    metadata = parse_xml(archive.read("IHE_XDM/SUBSET01/METADATA.XML"))
    assert slot(one(metadata, "rim:RegistryObjectList/rim:ExtrinsicObject"), "action") == value


def test_readme_and_index_name_the_producer_and_the_documents_only() -> None:
    paths = (
        CISIS_FIXTURES / "mdm-t02-initial" / "document.xml",
        CDA_FIXTURES / "bio-cr-bio-n1.xml",
    )
    archive = _open(build_xdm_zip(submission(*paths)))
    readme = archive.read("README.TXT").decode("utf-8")
    index = archive.read("INDEX.HTM").decode("utf-8")

    for text in (readme, index):
        assert PRODUCER.organization in text
        assert PRODUCER.contact is not None
        assert PRODUCER.contact in text
        assert PRODUCER.application in text
        assert "DOC0001.XML" in text
        assert "DOC0002.XML" in text
        # No patient data: identity, INS, IPP, birth date, free-text titles.
        for secret in (
            "PAT-TROIS",
            "DOMINIQUE",
            "279035121518989",
            "1234567890121",
            "19790328",
            "28/03/1979",
            "Radio de hanche",
        ):
            assert secret not in text
    assert "DOC0001.XML  (CR d'imagerie médicale)" in readme
    assert "DOC0002.XML  (CR d'examens biologiques)" in readme
    assert readme.endswith("\r\n")

    parser = etree.XMLParser(load_dtd=False, no_network=True, resolve_entities=False)
    index_root = etree.fromstring(archive.read("INDEX.HTM"), parser=parser)  # well-formed XHTML
    links = [str(a.get("href")) for a in index_root.iter("{http://www.w3.org/1999/xhtml}a")]
    assert links == [
        "README.TXT",
        "IHE_XDM/SUBSET01/METADATA.XML",
        "IHE_XDM/SUBSET01/DOC0001.XML",
        "IHE_XDM/SUBSET01/DOC0002.XML",
    ]
    assert all(link in archive.namelist() for link in links)


def test_document_errors_surface_before_any_zip_is_built() -> None:
    other_patient = InstanceId("1.2.250.1.213.1.4.10", "180017505600103")
    with pytest.raises(DocumentError):
        build_xdm_zip(submission(*TWO_DOCS, patient_id=other_patient))


def test_the_documents_of_an_archive_read_back_in_order() -> None:
    """What a withdrawal of a legacy report sends again: the CDAs, bytes unchanged."""
    import io
    import zipfile

    import pytest

    from connector.xdm.archive import read_xdm_documents

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("IHE_XDM/SUBSET01/METADATA.XML", b"<m/>")
        archive.writestr("IHE_XDM/SUBSET01/DOC0002.XML", b"<two/>")
        archive.writestr("IHE_XDM/SUBSET01/DOC0001.XML", b"<one/>")
        archive.writestr("README.TXT", b"x")
    assert read_xdm_documents(buffer.getvalue()) == (b"<one/>", b"<two/>")
    with pytest.raises(ValueError, match="not an IHE_XDM archive"):
        read_xdm_documents(b"not a zip")
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("README.TXT", b"x")
    with pytest.raises(ValueError, match="no SUBSET01 document"):
        read_xdm_documents(empty.getvalue())
