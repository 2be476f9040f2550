"""The MSSanté whitelist: loading, exact domain match, safe installation; address rules."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import find, given
from hypothesis import strategies as st
from lxml import etree

from connector.directory import whitelist as wl
from connector.directory.whitelist import (
    NAMESPACE,
    WHITELIST_CONFIG_KEY,
    InvalidAddressError,
    WhitelistError,
    install_whitelist,
    is_patient_address_for,
    is_valid_address,
    load_whitelist,
    normalize_domain,
    parse_address,
)
from connector.errors import ConfigError, MessageError
from connector.hl7.codes import ErrorCondition
from tests.conftest import FIXTURES
from tests.support.strategies import ADDRESS_LIKE

SHARED_WHITELIST = FIXTURES / "mssante" / "listeblanchemssante.xml"
SNAPSHOT_DATE = datetime(2025, 3, 13, 14, 54, 10, tzinfo=UTC)
NS = {"n": NAMESPACE}


def whitelist_xml(domains: list[str], generated: str = "2025-03-13T14:54:10Z") -> bytes:
    entries = "".join(
        f"<Domaine><Nom>{name}</Nom><Description>d</Description>"
        f"<DNCertificatOperateur>CN=x</DNCertificatOperateur></Domaine>"
        for name in domains
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListeBlancheMSSante xmlns="{NAMESPACE}">'
        f"<DateDeGeneration>{generated}</DateDeGeneration>"
        f"<ListeDomaines>{entries}</ListeDomaines></ListeBlancheMSSante>"
    ).encode()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def snapshot_closed(tmp_path: Path) -> Path:
    """The shared snapshot with its missing root end tag appended, in tmp_path (not in the repo).

    The shared file stops after `</ListeDomaines>` (see test_shared_snapshot_is_truncated_...); this
    copy lets the tests exercise the real domain names it does contain.
    """
    data = SHARED_WHITELIST.read_bytes()
    assert data.rstrip().endswith(b"</ListeDomaines>")
    return write(tmp_path / "snapshot-closed.xml", data + b"</ListeBlancheMSSante>\n")


# -- the shared snapshot --------------------------------------------------------------------------


def test_shared_snapshot_is_truncated_and_refused_with_its_name() -> None:
    # The shared 2025-03-13 file lacks its closing </ListeBlancheMSSante> and holds 619 <Domaine>
    # entries where the ANS snapshot has 6,554: a cut download. Loading it must fail, not half-load.
    with pytest.raises(WhitelistError) as caught:
        load_whitelist(SHARED_WHITELIST)
    error = caught.value
    assert isinstance(error, ConfigError)
    assert error.source == str(SHARED_WHITELIST)
    assert error.key == WHITELIST_CONFIG_KEY
    assert str(SHARED_WHITELIST) in str(error)
    assert "not well-formed" in str(error)


def test_shared_snapshot_content_loads_once_its_root_is_closed(snapshot_closed: Path) -> None:
    loaded = load_whitelist(snapshot_closed)
    assert loaded.entry_count == 619
    assert loaded.domain_count == 516  # a domain is listed once per operator certificate
    assert loaded.generated_at == SNAPSHOT_DATE
    assert loaded.source == snapshot_closed
    assert len(loaded.sha256) == 64
    assert all(name == name.lower() for name in loaded.domains)
    assert "uc-cmp.mssante.fr" in loaded.domains  # written `UC-CMP.mssante.fr` in the file
    assert "15-20.mssante.fr" in loaded.domains  # five entries, one domain


def test_exact_case_insensitive_match_on_real_names(snapshot_closed: Path) -> None:
    loaded = load_whitelist(snapshot_closed)
    assert loaded.contains_domain("adsea29.mssante.fr")
    assert loaded.contains_domain("ADSEA29.MSSante.FR")
    assert loaded.contains_domain("UC-CMP.mssante.fr")
    assert loaded.contains_domain("uc-cmp.mssante.fr")
    assert loaded.contains_domain("adsea29.mssante.fr.")  # absolute DNS form
    assert loaded.contains_domain("alehos.mssante.fr")
    assert loaded.contains_domain("adair.preprod.alehos.mssante.fr")  # listed on its own
    # sub-domains of listed domains, parents, look-alikes: refused
    assert not loaded.contains_domain("preprod.alehos.mssante.fr")
    assert not loaded.contains_domain("x.adsea29.mssante.fr")
    assert not loaded.contains_domain("mssante.fr")
    assert not loaded.contains_domain("adsea29.mssante.fr.evil.example")
    assert not loaded.contains_domain("evil-adsea29.mssante.fr")
    assert not loaded.contains_domain("adsea29.mssante.fr..")
    assert not loaded.contains_domain("")
    # addresses
    assert loaded.contains_address("dr.x@adsea29.mssante.fr")
    assert loaded.contains_address("Dr.X@ADSEA29.mssante.fr")
    assert not loaded.contains_address("dr.x@sub.adsea29.mssante.fr")
    assert not loaded.contains_address("dr.x@adsea29.mssante.fr.")
    assert not loaded.contains_address("Dr X <dr.x@adsea29.mssante.fr>")
    assert not loaded.contains_address("dr.x@adsea29.mssante.fr\r\nBcc: y@evil.example")
    assert not loaded.contains_address("adsea29.mssante.fr")


def test_repr_does_not_dump_the_domains(snapshot_closed: Path) -> None:
    assert "adsea29" not in repr(load_whitelist(snapshot_closed))


def test_idna_names_compare_in_a_label_form(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.xml",
        whitelist_xml(
            ["hôpital-exemple.mssante.fr", "xn--clinique-sant-nhb.mssante.fr", "strasse.example"]
        ),
    )
    loaded = load_whitelist(path)
    assert "xn--hpital-exemple-0ob.mssante.fr" in loaded.domains
    assert loaded.contains_domain("hôpital-exemple.mssante.fr")
    assert loaded.contains_domain("HÔPITAL-EXEMPLE.mssante.fr")
    assert loaded.contains_domain("xn--hpital-exemple-0ob.mssante.fr")
    assert loaded.contains_domain("clinique-santé.mssante.fr")
    assert loaded.contains_address("secretariat@hôpital-exemple.mssante.fr")
    # IDNA 2003 maps ß to ss: that would land on another listed name, so it is refused
    assert normalize_domain("straße.example") is None
    assert not loaded.contains_domain("straße.example")
    assert loaded.contains_domain("strasse.example")


# -- refused files --------------------------------------------------------------------------------

MALFORMED = {  # id: (content, what the error says)
    "empty file": (b"", "not well-formed"),
    "not xml": (b"domain1.mssante.fr\ndomain2.mssante.fr\n", "not well-formed"),
    "truncated": (whitelist_xml(["a.mssante.fr", "b.mssante.fr"])[:-40], "not well-formed"),
    "doctype with entity": (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "a.mssante.fr">]>'
        + whitelist_xml(["a.mssante.fr"]).split(b"?>", 1)[1],
        "DOCTYPE",
    ),
    "other root": (f'<ListeNoire xmlns="{NAMESPACE}"/>'.encode(), "root element"),
    "no namespace": (
        whitelist_xml(["a.mssante.fr"]).replace(f' xmlns="{NAMESPACE}"'.encode(), b""),
        "root element",
    ),
    "no generation date": (
        whitelist_xml(["a.mssante.fr"]).replace(
            b"<DateDeGeneration>2025-03-13T14:54:10Z</DateDeGeneration>", b""
        ),
        "DateDeGeneration",
    ),
    "bad generation date": (
        whitelist_xml(["a.mssante.fr"], generated="13/03/2025"),
        "DateDeGeneration",
    ),
    "no domain": (whitelist_xml([]), "empty whitelist"),
    "domain without name": (
        whitelist_xml(["a.mssante.fr"]).replace(b"<Nom>a.mssante.fr</Nom>", b""),
        "Domaine #1 has no Nom",
    ),
    "empty name": (whitelist_xml(["a.mssante.fr", "  "]), "Domaine #2 has no Nom"),
    "wildcard name": (
        whitelist_xml(["a.mssante.fr", "*.mssante.fr"]),
        "Domaine #2: Nom '*.mssante.fr' is not a valid domain name",
    ),
    "name with a space": (whitelist_xml(["a.mssante.fr", "b c.mssante.fr"]), "Domaine #2"),
    "single label": (whitelist_xml(["localhost"]), "Domaine #1"),
}


@pytest.mark.parametrize(("content", "problem"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_files_are_refused_naming_the_file(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = write(tmp_path / "liste.xml", content)
    with pytest.raises(WhitelistError) as caught:
        load_whitelist(path, config_key="tenants.a.whitelist")
    assert problem in caught.value.problem
    assert caught.value.source == str(path)
    assert caught.value.key == "tenants.a.whitelist"
    assert str(path) in str(caught.value)


def test_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.xml"
    with pytest.raises(WhitelistError, match="cannot be read") as caught:
        load_whitelist(path)
    assert caught.value.source == str(path)


def test_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "big.xml", whitelist_xml(["a.mssante.fr"]))
    monkeypatch.setattr(wl, "MAX_WHITELIST_BYTES", 100)
    with pytest.raises(WhitelistError, match="larger than 100 bytes"):
        load_whitelist(path)


def test_generation_date_without_offset_is_read_as_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path / "w.xml", whitelist_xml(["a.mssante.fr"], generated="2025-03-13T14:54:10")
    )
    assert load_whitelist(path).generated_at == SNAPSHOT_DATE


# -- installation ---------------------------------------------------------------------------------


def dir_listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_first_install_reports_every_domain_added(tmp_path: Path) -> None:
    new = write(
        tmp_path / "download.xml", whitelist_xml(["a.mssante.fr", "B.mssante.fr", "a.mssante.fr"])
    )
    live = tmp_path / "live"
    live.mkdir()
    target = live / "listeblanche.xml"
    change = install_whitelist(new, target)
    assert change.previous_generated_at is None
    assert change.added == {"a.mssante.fr", "b.mssante.fr"}
    assert (change.added_count, change.removed_count) == (2, 0)
    assert change.whitelist.source == target
    assert change.generated_at == SNAPSHOT_DATE
    assert target.read_bytes() == new.read_bytes()
    assert dir_listing(live) == ["listeblanche.xml"]  # no temporary file left
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def modified_snapshot(source: Path) -> bytes:
    """The real snapshot with: every entry of adsea29 removed (1 domain gone), one of the five
    entries of 15-20 removed (domain stays), a new domain added, an existing one re-added in
    upper case (no change), and a later generation date."""
    root = etree.fromstring(source.read_bytes())
    listing = root.find("n:ListeDomaines", NS)
    assert listing is not None
    entries = listing.findall("n:Domaine", NS)

    def named(name: str) -> list[etree._Element]:
        return [e for e in entries if (e.findtext("n:Nom", namespaces=NS) or "").lower() == name]

    for entry in named("adsea29.mssante.fr"):
        listing.remove(entry)
    listing.remove(named("15-20.mssante.fr")[0])
    for name in ("nouveau-domaine.mssante.fr", "ADSEA30.MSSANTE.FR"):
        domaine = etree.SubElement(listing, f"{{{NAMESPACE}}}Domaine")
        etree.SubElement(domaine, f"{{{NAMESPACE}}}Nom").text = name
    date = root.find("n:DateDeGeneration", NS)
    assert date is not None
    date.text = "2025-04-01T08:00:00Z"
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def test_install_reports_added_and_removed_domains(tmp_path: Path, snapshot_closed: Path) -> None:
    target = tmp_path / "live.xml"
    install_whitelist(snapshot_closed, target)
    new = write(tmp_path / "download.xml", modified_snapshot(snapshot_closed))

    change = install_whitelist(new, target)

    assert change.added == {"nouveau-domaine.mssante.fr"}
    assert change.removed == {"adsea29.mssante.fr"}
    assert (change.added_count, change.removed_count) == (1, 1)
    assert change.previous_generated_at == SNAPSHOT_DATE
    assert change.generated_at == datetime(2025, 4, 1, 8, 0, tzinfo=UTC)
    assert change.whitelist.domain_count == 516
    assert change.whitelist.entry_count == 619 - 1 - 1 + 2
    assert target.read_bytes() == new.read_bytes()
    reloaded = load_whitelist(target)
    assert reloaded.contains_domain("nouveau-domaine.mssante.fr")
    assert not reloaded.contains_domain("adsea29.mssante.fr")
    assert reloaded.contains_domain("15-20.mssante.fr")


@pytest.mark.parametrize(
    "bad_source",
    [SHARED_WHITELIST, None],
    ids=["shared truncated snapshot", "not xml"],
)
def test_malformed_install_leaves_the_current_file_byte_identical(
    tmp_path: Path, bad_source: Path | None
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    target = live / "listeblanche.xml"
    install_whitelist(write(tmp_path / "good.xml", whitelist_xml(["a.mssante.fr"])), target)
    before = target.read_bytes()
    bad = bad_source or write(tmp_path / "bad.xml", b"<html>proxy error</html")

    with pytest.raises(WhitelistError) as caught:
        install_whitelist(bad, target)

    assert caught.value.source == str(bad)
    assert target.read_bytes() == before
    assert dir_listing(live) == ["listeblanche.xml"]


def test_older_whitelist_is_refused_unless_allowed(tmp_path: Path) -> None:
    target = tmp_path / "live.xml"
    install_whitelist(write(tmp_path / "new.xml", whitelist_xml(["a.mssante.fr"])), target)
    before = target.read_bytes()
    old = write(
        tmp_path / "old.xml", whitelist_xml(["b.mssante.fr"], generated="2024-01-01T00:00:00Z")
    )

    with pytest.raises(WhitelistError, match="older than the installed one"):
        install_whitelist(old, target)
    assert target.read_bytes() == before

    change = install_whitelist(old, target, allow_older=True)
    assert (change.added, change.removed) == ({"b.mssante.fr"}, {"a.mssante.fr"})
    assert target.read_bytes() == old.read_bytes()


def test_same_generation_date_may_be_reinstalled(tmp_path: Path) -> None:
    target = tmp_path / "live.xml"
    source = write(tmp_path / "w.xml", whitelist_xml(["a.mssante.fr"]))
    install_whitelist(source, target)
    change = install_whitelist(source, target)
    assert (change.added_count, change.removed_count) == (0, 0)


def test_broken_current_file_is_replaced(tmp_path: Path) -> None:
    target = write(tmp_path / "live.xml", b"garbage")
    change = install_whitelist(write(tmp_path / "w.xml", whitelist_xml(["a.mssante.fr"])), target)
    assert change.previous_generated_at is None
    assert change.added == {"a.mssante.fr"}
    assert load_whitelist(target).contains_domain("a.mssante.fr")


def test_install_keeps_the_permissions_of_the_current_file(tmp_path: Path) -> None:
    target = tmp_path / "live.xml"
    install_whitelist(write(tmp_path / "a.xml", whitelist_xml(["a.mssante.fr"])), target)
    os.chmod(target, 0o640)
    install_whitelist(write(tmp_path / "b.xml", whitelist_xml(["b.mssante.fr"])), target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_install_into_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    source = write(tmp_path / "w.xml", whitelist_xml(["a.mssante.fr"]))
    target = tmp_path / "absent" / "live.xml"
    with pytest.raises(WhitelistError, match="cannot install") as caught:
        install_whitelist(source, target)
    assert caught.value.source == str(target)


# -- address syntax -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dr.hoda@medecin.mssante.fr", "dr.hoda@medecin.mssante.fr"),
        ("Dr.Hoda@Medecin.MSSante.fr", "Dr.Hoda@medecin.mssante.fr"),  # local part case is kept
        ("  radiologie@hopitalA.mssante.fr ", "radiologie@hopitala.mssante.fr"),
        ("a.b-c+d_e'f@x.mssante.fr", "a.b-c+d_e'f@x.mssante.fr"),
        ("secretariat@hôpital.mssante.fr", "secretariat@xn--hpital-ixa.mssante.fr"),
        ("146026322000196@patient.mssante.fr", "146026322000196@patient.mssante.fr"),
    ],
)
def test_valid_addresses_are_normalised(text: str, expected: str) -> None:
    assert str(parse_address(text)) == expected
    assert is_valid_address(text)


INVALID_ADDRESSES = {
    "empty": "",
    "no at": "dr.hoda.mssante.fr",
    "no local part": "@medecin.mssante.fr",
    "no domain": "dr.hoda@",
    "double dot": "dr..hoda@medecin.mssante.fr",
    "leading dot": ".hoda@medecin.mssante.fr",
    "trailing dot in local part": "hoda.@medecin.mssante.fr",
    "quoted local part": '"dr hoda"@medecin.mssante.fr',
    "space in local part": "dr hoda@medecin.mssante.fr",
    "address literal": "hoda@[192.0.2.1]",
    "trailing dot in domain": "hoda@medecin.mssante.fr.",
    "single-label domain": "hoda@localhost",
    "hyphen-led label": "hoda@-medecin.mssante.fr",
    "underscore in domain": "hoda@med_ecin.mssante.fr",
    "non-ascii local part": "hélène@medecin.mssante.fr",
    "display name": "Dr Hoda <hoda@medecin.mssante.fr>",
    "two at signs": "hoda@x@medecin.mssante.fr",
    "crlf injection": "hoda@medecin.mssante.fr\r\nBcc: spy@evil.example",
    "trailing lf": "hoda@medecin.mssante.fr\n",
    "cr inside": "ho\rda@medecin.mssante.fr",
    "nul": "hoda@medecin.mssante.fr\x00",
    "tab": "hoda@medecin.mssante.fr\t",
    "zero-width space": "ho\u200bda@medecin.mssante.fr",
    "local part over 64": "a" * 65 + "@medecin.mssante.fr",
    "over 254": "a" * 64 + "@" + ".".join(["b" * 60] * 4) + ".fr",
}


@pytest.mark.parametrize("text", INVALID_ADDRESSES.values(), ids=INVALID_ADDRESSES.keys())
def test_invalid_addresses_are_refused(text: str) -> None:
    with pytest.raises(InvalidAddressError) as caught:
        parse_address(text)
    assert isinstance(caught.value, MessageError)
    assert caught.value.condition is ErrorCondition.DATA_TYPE_ERROR
    assert not is_valid_address(text)


def test_address_errors_and_repr_never_show_the_address() -> None:
    ins = "146026322000196"
    with pytest.raises(InvalidAddressError) as caught:
        parse_address(f"{ins}@patient.mssante.fr\r\n")
    assert ins not in str(caught.value)
    assert ins not in repr(parse_address(f"{ins}@patient.mssante.fr"))


def test_the_address_shapes_reach_accepted_addresses() -> None:
    """The strategy below does draw addresses the parser accepts (and ones it refuses)."""
    assert is_valid_address(find(ADDRESS_LIKE, is_valid_address))
    assert not is_valid_address(find(ADDRESS_LIKE, lambda t: not is_valid_address(t)))


@given(st.one_of(st.text(), ADDRESS_LIKE))
def test_any_text_is_either_refused_or_a_clean_mailbox(text: str) -> None:
    try:
        address = parse_address(text)
    except InvalidAddressError:
        return
    rendered = str(address)
    assert rendered.isascii()
    assert all(0x20 < ord(ch) < 0x7F for ch in rendered)
    assert len(rendered) <= 254
    assert rendered.count("@") == 1
    assert parse_address(rendered) == address


# -- patient addresses ----------------------------------------------------------------------------

INS = "146026322000196"  # the CI-SIS example patient address


@pytest.mark.parametrize(
    ("address", "ins", "expected"),
    [
        (f"{INS}@patient.mssante.fr", INS, True),
        (f"{INS}@Patient.MSSante.fr", INS, True),
        (f" {INS}@patient.mssante.fr ", f" {INS} ", True),
        ("185022A12345678@patient.mssante.fr", "185022a12345678", True),  # Corsican NIR
        ("185022a12345678@patient.mssante.fr", "185022A12345678", True),
        ("279035121518989@patient.mssante.fr", INS, False),  # another patient
        (f"{INS}@medecin.mssante.fr", INS, False),  # another domain
        (f"{INS}@x.patient.mssante.fr", INS, False),  # a sub-domain
        (f"{INS}@patient.mssante.fr.", INS, False),
        (f"{INS}1@patient.mssante.fr", f"{INS}1", False),  # 16 characters is no INS
        ("14602632200019@patient.mssante.fr", "14602632200019", False),  # 14
        ("1460263220001AB@patient.mssante.fr", "1460263220001AB", False),
        (f"Patient <{INS}@patient.mssante.fr>", INS, False),
        (f"{INS}@patient.mssante.fr\r\nBcc: spy@evil.example", INS, False),
        ("", "", False),
    ],
)
def test_patient_address_must_be_this_patients_ins(address: str, ins: str, expected: bool) -> None:
    assert is_patient_address_for(address, ins) is expected


def test_patient_mailbox_flag() -> None:
    assert parse_address(f"{INS}@PATIENT.mssante.fr").is_patient
    assert not parse_address("dr.hoda@medecin.mssante.fr").is_patient


def test_a_whitelist_from_the_future_is_refused(tmp_path: Path) -> None:
    """Installed, it would make every real list after it "older" (refused without
    --allow-older); a day of tolerance covers time zones and drifting clocks."""
    target = tmp_path / "live.xml"
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    future = write(tmp_path / "f.xml", whitelist_xml(["a.mssante.fr"],
                                                     generated="2027-11-01T00:00:00Z"))
    with pytest.raises(WhitelistError) as caught:
        install_whitelist(future, target, now=now)
    assert "in the future" in caught.value.problem
    assert not target.exists()
    tomorrow = write(tmp_path / "t.xml", whitelist_xml(["a.mssante.fr"],
                                                       generated="2026-11-25T06:00:00Z"))
    assert install_whitelist(tomorrow, target, now=now).added == {"a.mssante.fr"}
