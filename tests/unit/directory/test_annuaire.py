"""The Annuaire Santé extraction: parsing (both layouts, encodings), import, look-ups, rules.

There is no extraction fixture in ../shared/fixtures: the lines are built here from the 31-column
layout of mssante-transport.md §5.4 (header names verbatim, values invented).
"""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.directory.annuaire import (
    COLUMNS,
    HEADER,
    MAX_LINE_BYTES,
    Directory,
    DirectoryError,
    DirectoryLookup,
    ExtractionFormatError,
    ExtractionLayout,
    ExtractionReader,
    Holder,
    InvalidIdentifierError,
    Mailbox,
    MailboxPreference,
    MailboxRule,
    MailboxType,
    MalformedLineError,
    NoValidEntryError,
    Structure,
    _address,
    detect_encoding,
    directory_path,
    import_extraction,
    normalize_national_id,
    normalize_rpps,
    parse_header,
    parse_line,
    resolve,
)
from connector.directory.whitelist import (
    InvalidAddressError,
    MailAddress,
    Whitelist,
    parse_address,
)
from connector.errors import ConnectorError
from connector.settings import embedded_default
from tests.support.strategies import ADDRESS_LIKE

KEYS = [key for key, _ in COLUMNS]
RPPS = "10001234567"
RPPS_2 = "10007654321"
FINESS = "750712184"
OTHER_FINESS = "130786049"


def values(**overrides: str) -> dict[str, str]:
    """A PER line of a salaried doctor in a hospital, as the extraction publishes it."""
    base = {
        "mailbox_type": "PER", "address": "jean.dupont@chu-test.mssante.fr",
        "pp_id_type": "8", "pp_id": RPPS, "national_id": f"8{RPPS}",
        "structure_id_type": "1", "structure_id": FINESS, "service": "Cardiologie",
        "civility": "DR", "family": "DUPONT", "given": "Jean", "category_code": "C",
        "category_label": "Civil", "profession_code": "10", "profession_label": "Médecin",
        "skill_code": "SM04", "skill_label": "Cardiologie et maladies vasculaires",
        "digitization": "O", "structure_name": "CHU DE TEST", "trade_name": "",
        "l2": "Bâtiment B", "l3": "", "l4_number": "12", "l4_complement": "", "l4_type": "R",
        "l4_street": "de l'Hôpital", "l5": "", "city": "75010 PARIS", "postal_code": "75010",
        "department": "75", "country": "FRANCE",
    }
    base.update(overrides)
    return base


def line(**overrides: str) -> str:
    v = values(**overrides)
    return "|".join(v[key] for key in KEYS)


def org_line(address: str = "cardiologie@chu-test.mssante.fr", structure: str = FINESS,
             **overrides: str) -> str:
    blank = dict.fromkeys(("pp_id_type", "pp_id", "national_id", "civility", "family", "given",
                           "category_code", "category_label", "profession_code",
                           "profession_label", "skill_code", "skill_label", "digitization"), "")
    return line(**{**blank, "mailbox_type": "ORG", "address": address,
                   "structure_id": structure, **overrides})


def extraction(*lines: str, header: str = HEADER, trailing: bool = False,
               newline: str = "\n") -> str:
    end = "|" if trailing else ""
    return newline.join(f"{text}{end}" for text in (header, *lines)) + newline


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def whitelist(*domains: str) -> Whitelist:
    return Whitelist(domains=frozenset(domains), generated_at=datetime(2025, 3, 13, tzinfo=UTC),
                     source=Path("listeblanchemssante.xml"), entry_count=len(domains),
                     sha256="0" * 64)


def imported(tmp_path: Path, *lines: str, whitelist: Whitelist | None = None,
             **kwargs: object) -> tuple[Directory, Path]:
    source = write(tmp_path / "Extraction_Correspondance_MSSante.txt",
                   extraction(*lines, **kwargs))  # type: ignore[arg-type]
    target = tmp_path / "var" / "directory.db"
    import_extraction(source, target, whitelist=whitelist)
    return Directory(target), target


LAYOUT = ExtractionLayout.documented()


# -- header and line parsing ----------------------------------------------------------------------


def test_documented_header_has_31_columns() -> None:
    layout = parse_header(HEADER)
    assert layout is not None
    assert layout.width == 31
    assert layout.positions["address"] == 1
    assert layout.positions["country"] == 30
    assert not layout.trailing_separator
    assert HEADER.startswith("Type de BAL|Adresse BAL|Type Identifiant PP|Identifiant PP|")


def test_header_names_are_matched_loosely() -> None:
    # Case, accents, curly apostrophe and the " structure BAL" suffix do not matter; extra columns
    # are ignored; the older layout's trailing | is recognised.
    names = [name for _, name in COLUMNS]
    names[8] = "CIVILITE D’EXERCICE"
    names[29] = "Département"
    layout = parse_header("|".join(["Colonne inconnue", *names]) + "|")
    assert layout is not None
    assert layout.width == 32
    assert layout.trailing_separator
    assert layout.positions["mailbox_type"] == 1
    assert layout.positions["civility"] == 9
    assert layout.positions["department"] == 30


def test_not_a_header() -> None:
    assert parse_header("a|b|c") is None
    assert parse_header(line()) is None


def test_personal_line() -> None:
    mailbox = parse_line(LAYOUT, line())
    assert str(mailbox.address) == "jean.dupont@chu-test.mssante.fr"
    assert mailbox.mailbox_type is MailboxType.PER
    assert mailbox.holder == Holder(
        id_type="8", identifier=RPPS, national_id=f"8{RPPS}", rpps=RPPS, civility="DR",
        family="DUPONT", given="Jean", category_code="C", category_label="Civil",
        profession_code="10", profession_label="Médecin", skill_code="SM04",
        skill_label="Cardiologie et maladies vasculaires")
    assert mailbox.structure == Structure(
        id_type="1", identifier=FINESS, name="CHU DE TEST", postal_code="75010",
        city="75010 PARIS", department="75", country="FRANCE")
    assert mailbox.service == "Cardiologie"
    assert mailbox.digitization is True
    assert not mailbox.red_listed


def test_organisational_line() -> None:
    mailbox = parse_line(LAYOUT, org_line())
    assert mailbox.mailbox_type is MailboxType.ORG
    assert mailbox.holder is None
    assert mailbox.structure is not None
    assert mailbox.structure.matches(FINESS)
    assert mailbox.structure.matches(f"1{FINESS}")
    assert not mailbox.structure.matches(OTHER_FINESS)
    assert mailbox.digitization is None


def test_identifiers_are_completed_and_checked() -> None:
    # The national id is derived when missing; the RPPS is found from 8 + RPPS alone.
    assert parse_line(LAYOUT, line(national_id="")).holder.national_id == f"8{RPPS}"  # type: ignore[union-attr]
    only_national = parse_line(LAYOUT, line(pp_id_type="", pp_id=""))
    assert only_national.holder is not None
    assert only_national.holder.rpps == RPPS
    adeli = parse_line(LAYOUT, line(pp_id_type="0", pp_id="751234567", national_id=""))
    assert adeli.holder is not None
    assert (adeli.holder.national_id, adeli.holder.rpps) == ("0751234567", None)
    # The domain is normalised as parse_address does it.
    assert str(parse_line(LAYOUT, line(address="J.Dupont@CHU-Test.MSSante.fr")).address) == (
        "J.Dupont@chu-test.mssante.fr")


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"mailbox_type": "XYZ"}, "unknown mailbox type"),
    ({"address": "not-an-address"}, "Adresse BAL"),
    ({"address": "Jean Dupont <jean@chu-test.mssante.fr>"}, "Adresse BAL"),
    ({"pp_id": "1000123456"}, "not 11 digits"),
    ({"national_id": "810007654321"}, r"not 8 \+ RPPS"),
    ({"pp_id_type": "0", "pp_id": "75-123", "national_id": ""}, "ADELI"),
    ({"pp_id": "", "national_id": ""}, "without a holder identifier"),
    ({"family": "DU\x00PONT"}, "control character"),
])
def test_malformed_lines(overrides: dict[str, str], reason: str) -> None:
    with pytest.raises(MalformedLineError, match=reason) as info:
        parse_line(LAYOUT, line(**overrides))
    # The reason never repeats a value of the line.
    for value in ("DUPONT", "not-an-address", "chu-test", "75-123"):
        assert value not in info.value.reason


def test_wrong_field_count() -> None:
    with pytest.raises(MalformedLineError, match="expected 31 fields, found 30"):
        parse_line(LAYOUT, line().rsplit("|", 1)[0])
    # One more *empty* field is the older trailing-| layout, one more non-empty is not.
    assert parse_line(LAYOUT, line() + "|").mailbox_type is MailboxType.PER
    with pytest.raises(MalformedLineError, match="found 32"):
        parse_line(LAYOUT, line() + "|X")


def test_address_fast_path_agrees_with_parse_address() -> None:
    for text in ("a@b.fr", "A.B@X.MSSANTE.FR", "a..b@x.fr", "a@x.fr.", "a@[1.2.3.4]", "@x.fr",
                 "a@x", "a b@x.fr", "é@x.fr", "a@é.fr", "a@-x.fr", "x" * 65 + "@x.fr",
                 "a@" + "b" * 250 + ".fr", "a\r\n@x.fr", "a@x.fr\u200b"):
        _assert_same_as_parse_address(text)


@given(st.one_of(st.text(alphabet=st.sampled_from("aZ09.-_@+é[] \t\u200bxX"), max_size=40),
                 ADDRESS_LIKE))
def test_address_fast_path_agrees_with_parse_address_fuzz(text: str) -> None:
    """Junk text, and address-shaped text of which about a quarter is valid: the fast path
    must accept and refuse exactly what `parse_address` does."""
    _assert_same_as_parse_address(text)


def _assert_same_as_parse_address(text: str) -> None:
    try:
        expected: MailAddress | None = parse_address(text)
    except InvalidAddressError:
        expected = None
    try:
        got: MailAddress | None = _address(text)
    except MalformedLineError:
        got = None
    assert got == expected


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), st.one_of(st.text(max_size=16), st.sampled_from(
    ["PER", "org", "APP", "8", "0", "", RPPS, f"8{RPPS}", "0751234567", "a@b.mssante.fr",
     "O", "non"]))))
def test_line_parser_fuzz(overrides: dict[str, str]) -> None:
    # A valid line with some fields replaced by anything (| and line breaks included).
    try:
        mailbox = parse_line(LAYOUT, line(**overrides))
    except MalformedLineError as exc:
        reason = exc.reason
    else:
        assert mailbox.mailbox_type in MailboxType
        return
    assert reason


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_reader_fuzz_raises_only_its_own_errors(data: bytes) -> None:
    stream = io.BytesIO(HEADER.encode() + b"\n" + data)
    try:
        for item in ExtractionReader(stream):
            assert (item.values is None) != (item.problem is None)
    except DirectoryError:
        pass


# -- encodings and layouts ------------------------------------------------------------------------


def test_detect_encoding() -> None:
    assert detect_encoding("Prénom".encode()) == "utf-8"
    assert detect_encoding(b"\xef\xbb\xbfType de BAL") == "utf-8-sig"
    assert detect_encoding("Prénom".encode("cp1252")) == "cp1252"
    assert detect_encoding("Prénom".encode()[:-4]) == "utf-8"  # cut inside "é": still UTF-8
    assert detect_encoding(b"ascii only") == "utf-8"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
@pytest.mark.parametrize("trailing", [False, True])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_both_layouts_and_encodings_read_the_same(tmp_path: Path, encoding: str, trailing: bool,
                                                  newline: str) -> None:
    text = extraction(line(given="Hélène", family="LŒVY"), org_line(), trailing=trailing,
                      newline=newline)
    source = write(tmp_path / "e.txt", text, encoding)
    report = import_extraction(source, tmp_path / "directory.db")
    assert report.encoding == encoding
    assert (report.entries, report.personal, report.organisational) == (2, 1, 1)
    assert report.malformed == 0
    assert report.trailing_separator_lines == (2 if trailing else 0)
    with Directory(tmp_path / "directory.db") as directory:
        (found,) = directory.by_rpps(RPPS)
    assert found.holder is not None
    assert (found.holder.given, found.holder.family) == ("Hélène", "LŒVY")
    assert found.holder.profession_label == "Médecin"


def test_a_cp1252_line_in_a_utf8_file_is_read_and_counted(tmp_path: Path) -> None:
    # Detection looks at the first 64 KiB (UTF-8 here); a CP1252 line after them is still read.
    padding = [line(pp_id=f"2{i:010d}", national_id="", address=f"p{i}@chu-test.mssante.fr")
               for i in range(400)]
    data = (extraction(line(), *padding).encode()
            + line(pp_id=RPPS_2, national_id="", address="b@chu-test.mssante.fr",
                   given="Gaëlle").encode("cp1252") + b"\n")
    assert len(data) > 64 * 1024
    (tmp_path / "e.txt").write_bytes(data)
    report = import_extraction(tmp_path / "e.txt", tmp_path / "d.db")
    assert (report.encoding, report.recoded_lines, report.entries) == ("utf-8", 1, 402)
    with Directory(tmp_path / "d.db") as directory:
        (found,) = directory.by_rpps(RPPS_2)
    assert found.holder is not None
    assert found.holder.given == "Gaëlle"


def test_file_without_header_is_read_in_the_documented_order(tmp_path: Path) -> None:
    source = write(tmp_path / "e.txt", line() + "\n" + org_line() + "\n")
    report = import_extraction(source, tmp_path / "d.db")
    assert (report.header, report.entries) == (False, 2)


def test_not_an_extraction(tmp_path: Path) -> None:
    source = write(tmp_path / "e.csv", "nom;prenom;adresse\nDUPONT;Jean;x@y.fr\n")
    target = tmp_path / "d.db"
    with pytest.raises(ExtractionFormatError, match="line 1 is not an MSSanté extraction header"):
        import_extraction(source, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [source]  # the temporary database was removed


def test_zip_download_is_read(tmp_path: Path) -> None:
    archive = tmp_path / "Extraction_Correspondance_MSSante_202608260300.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Extraction_Correspondance_MSSante_202608260300.txt",
                    extraction(line(), org_line()).encode())
    assert import_extraction(archive, tmp_path / "d.db").entries == 2
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a.txt", "x")
        zf.writestr("b.txt", "y")
    with pytest.raises(ExtractionFormatError, match=r"exactly one \.txt"):
        import_extraction(two, tmp_path / "d.db")


# -- import: counts, malformed lines, red list, trust space ---------------------------------------


def test_malformed_lines_are_skipped_counted_and_not_logged(tmp_path: Path) -> None:
    lines = [
        line(),
        line(mailbox_type="XYZ", pp_id=RPPS_2, national_id=""),
        line(address="jean dupont@chu-test.mssante.fr"),
        "PER|too|short",
        org_line(),
        line(pp_id="123", national_id=""),
        "x" * (MAX_LINE_BYTES + 10),
        "",  # blank lines are ignored, not malformed
        line(pp_id=RPPS_2, national_id="", address="gaelle.martin@chu-test.mssante.fr"),
    ]
    source = write(tmp_path / "e.txt", extraction(*lines))
    with structlog.testing.capture_logs() as logs:
        report = import_extraction(source, tmp_path / "d.db")
    assert (report.entries, report.malformed, report.lines) == (3, 5, 8)
    assert [m.line for m in report.malformed_lines] == [3, 4, 5, 7, 8]
    assert report.malformed_reasons["line too long"] == 1
    assert "expected 31 fields, found 3" in report.malformed_reasons
    # Logs carry line numbers and reasons, never a name or an address.
    assert [e["line"] for e in logs if e["event"] == "directory_line_malformed"] == [3, 4, 5, 7, 8]
    text = repr(logs) + repr(report)
    for secret in ("DUPONT", "Jean", "jean", "@chu-test", "gaelle", "MARTIN"):
        assert secret not in text


def test_red_listed_holder_is_never_returned(tmp_path: Path) -> None:
    header = HEADER + "|Liste rouge"
    lines = [
        line() + "|N",
        # The same holder, another mailbox, red-listed (it comes last in the file):
        line(address="jean.dupont@medecin.mssante.fr", structure_id="") + "|O",
        line(pp_id=RPPS_2, national_id="", address="b@chu-test.mssante.fr") + "|",
        org_line() + "|1",
        org_line(address="urgences@chu-test.mssante.fr") + "|0",
    ]
    directory, _ = imported(tmp_path, *lines, header=header)
    with directory:
        assert directory.by_rpps(RPPS) == ()
        assert directory.by_national_id(f"8{RPPS}") == ()
        assert len(directory.by_rpps(RPPS_2)) == 1
        assert [str(m.address) for m in directory.by_structure(FINESS)
                if m.mailbox_type is MailboxType.ORG] == ["urgences@chu-test.mssante.fr"]
    # Not in the file at all.
    with sqlite3.connect(tmp_path / "var" / "directory.db") as conn:
        rows = conn.execute("SELECT count(*) FROM mailbox WHERE rpps = ?", (RPPS,)).fetchone()
    assert rows == (0,)


def test_red_list_counts(tmp_path: Path) -> None:
    source = write(tmp_path / "e.txt", extraction(
        line() + "|non", line(address="x@chu-test.mssante.fr") + "|oui",
        org_line() + "|true",
        line(pp_id=RPPS_2, national_id="", address="b@chu-test.mssante.fr") + "|",
        header=HEADER + "|Indicateur liste rouge"))
    report = import_extraction(source, tmp_path / "d.db")
    assert (report.red_listed, report.red_listed_removed, report.entries) == (2, 1, 1)
    assert report.by_type == {"PER": 1}


def test_nothing_valid_keeps_the_installed_directory(tmp_path: Path) -> None:
    directory, target = imported(tmp_path, line(), org_line())
    directory.close()
    before = target.read_bytes()
    bad = write(tmp_path / "bad.txt", extraction(line(mailbox_type="?"), "PER|x"))
    with pytest.raises(NoValidEntryError, match="no valid directory entry") as info:
        import_extraction(bad, target)
    assert (info.value.report.malformed, info.value.report.entries) == (2, 0)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["directory.db"]


def test_reimport_replaces_atomically_while_a_reader_keeps_the_old_file(tmp_path: Path) -> None:
    old, target = imported(tmp_path, line())
    new_source = write(tmp_path / "new.txt", extraction(
        line(pp_id=RPPS_2, national_id="", address="b@chu-test.mssante.fr")))
    report = import_extraction(new_source, target)
    assert report.entries == 1
    with old:  # opened before the import: still answers from the old file
        assert len(old.by_rpps(RPPS)) == 1
    with Directory(target) as new:
        assert new.by_rpps(RPPS) == ()
        assert len(new.by_rpps(RPPS_2)) == 1
        assert new.info.source == "new.txt"
        assert new.info.entries == 1
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_import_with_a_whitelist_skips_the_outside(tmp_path: Path) -> None:
    trusted = whitelist("chu-test.mssante.fr")
    source = write(tmp_path / "e.txt", extraction(
        line(), line(pp_id=RPPS_2, national_id="", address="b@ailleurs.example.fr"),
        org_line()))
    report = import_extraction(source, tmp_path / "d.db", whitelist=trusted)
    assert (report.entries, report.outside_trust_space, report.whitelist_checked) == (2, 1, True)
    with Directory(tmp_path / "d.db") as directory:
        assert directory.by_rpps(RPPS_2) == ()
        assert directory.info.trust_space_checked


def test_lookup_with_a_whitelist_filters_the_outside(tmp_path: Path) -> None:
    directory, target = imported(tmp_path, line(),
                                 line(address="jean.dupont@medecin.mssante.fr"))
    directory.close()
    with Directory(target) as everything:
        assert len(everything.by_rpps(RPPS)) == 2
    with Directory(target, whitelist=whitelist("medecin.mssante.fr")) as trusted:
        assert [str(m.address) for m in trusted.by_rpps(RPPS)] == [
            "jean.dupont@medecin.mssante.fr"]


def test_duplicate_addresses_are_counted(tmp_path: Path) -> None:
    source = write(tmp_path / "e.txt", extraction(line(), line(structure_id=OTHER_FINESS)))
    report = import_extraction(source, tmp_path / "d.db")
    assert (report.entries, report.duplicate_addresses) == (2, 1)


# -- look-ups -------------------------------------------------------------------------------------


def test_rpps_and_national_id_are_interchangeable(tmp_path: Path) -> None:
    directory, _ = imported(tmp_path, line(), org_line(),
                            line(pp_id_type="0", pp_id="751234567", national_id="0751234567",
                                 address="infirmier@chu-test.mssante.fr"))
    with directory:
        results = {directory.by_rpps(RPPS), directory.by_rpps(f"8{RPPS}"),
                   directory.by_national_id(RPPS), directory.by_national_id(f"8{RPPS}"),
                   directory.by_national_id(f" 8{RPPS} ")}
        assert len(results) == 1
        (found,) = results.pop()
        assert str(found.address) == "jean.dupont@chu-test.mssante.fr"
        assert [str(m.address) for m in directory.by_national_id("0751234567")] == [
            "infirmier@chu-test.mssante.fr"]
        assert directory.by_rpps(RPPS_2) == ()
        with pytest.raises(InvalidIdentifierError):
            directory.by_rpps("0751234567")
        with pytest.raises(InvalidIdentifierError):
            directory.by_national_id("8 1000")
        with pytest.raises(InvalidIdentifierError):
            directory.by_structure("' OR 1=1 --")
        assert isinstance(directory, DirectoryLookup)


def test_normalizers() -> None:
    assert normalize_rpps(f"8{RPPS}") == RPPS
    assert normalize_national_id(RPPS) == f"8{RPPS}"
    with pytest.raises(InvalidIdentifierError):
        normalize_rpps("1234")
    assert issubclass(InvalidIdentifierError, ConnectorError)


def test_missing_or_foreign_database(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match="run `directory import`"):
        Directory(tmp_path / "nothing.db")
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(DirectoryError, match="not a readable directory database"):
        Directory(tmp_path / "junk.db")
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    with pytest.raises(DirectoryError, match="schema version"):
        Directory(tmp_path / "other.db")


def test_directory_is_shared_between_threads(tmp_path: Path) -> None:
    directory, _ = imported(tmp_path, line(), org_line())
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                assert len(directory.by_rpps(RPPS)) == 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    directory.close()
    assert errors == []


def test_repr_never_shows_addresses_or_names(tmp_path: Path) -> None:
    directory, _ = imported(tmp_path, line())
    with directory:
        (found,) = directory.by_rpps(RPPS)
    text = repr(found) + repr(found.holder) + repr((found,))
    assert "chu-test.mssante.fr" in text  # the domain is fine
    for secret in ("jean.dupont", "DUPONT", "Jean"):
        assert secret not in text


def test_directory_path_is_beside_the_store(tmp_path: Path) -> None:
    assert directory_path(embedded_default(tmp_path / "var")) == tmp_path / "var" / "directory.db"


# -- choosing between mailboxes -------------------------------------------------------------------


def mailbox(address: str, kind: MailboxType, structure: str | None = None,
            red: bool = False) -> Mailbox:
    local, _, domain = address.partition("@")
    return Mailbox(MailAddress(local, domain), kind,
                   structure=Structure("1", structure) if structure else None, red_listed=red)


PER_HERE = mailbox("dupont@chu.mssante.fr", MailboxType.PER, FINESS)
PER_ELSEWHERE = mailbox("dupont@clinique.mssante.fr", MailboxType.PER, OTHER_FINESS)
PER_NOWHERE = mailbox("dupont@medecin.mssante.fr", MailboxType.PER)
CAB = mailbox("cabinet@medecin.mssante.fr", MailboxType.CAB)
ORG_HERE = mailbox("cardio@chu.mssante.fr", MailboxType.ORG, FINESS)
ORG_ELSEWHERE = mailbox("secretariat@clinique.mssante.fr", MailboxType.ORG, OTHER_FINESS)
APP = mailbox("dpi@chu.mssante.fr", MailboxType.APP, FINESS)
ALL = (APP, ORG_ELSEWHERE, ORG_HERE, CAB, PER_NOWHERE, PER_ELSEWHERE, PER_HERE)


def test_rule_prefer_personal() -> None:
    assert MailboxRule().choose(ALL) == (PER_NOWHERE, PER_ELSEWHERE, PER_HERE)
    assert MailboxRule(structure_id=FINESS).choose(ALL) == (PER_HERE,)
    assert MailboxRule(structure_id="999999999").choose(ALL) == (
        PER_NOWHERE, PER_ELSEWHERE, PER_HERE)
    assert MailboxRule().choose((ORG_HERE, CAB)) == (CAB,)
    assert MailboxRule().choose((ORG_HERE, APP)) == (ORG_HERE,)


def test_rule_personal_only() -> None:
    rule = MailboxRule(MailboxPreference.PERSONAL_ONLY)
    assert rule.choose((ORG_HERE, CAB, APP)) == ()
    assert rule.choose(ALL) == (PER_NOWHERE, PER_ELSEWHERE, PER_HERE)


def test_rule_prefer_organisation_of_a_structure() -> None:
    rule = MailboxRule(MailboxPreference.ORGANISATION, FINESS)
    assert rule.choose(ALL) == (ORG_HERE,)
    # No ORG mailbox of that structure: the personal one (of that structure first), never the
    # ORG mailbox of another structure.
    assert rule.choose((ORG_ELSEWHERE, PER_NOWHERE, PER_HERE)) == (PER_HERE,)
    assert rule.choose((ORG_ELSEWHERE, PER_NOWHERE)) == (PER_NOWHERE,)
    assert MailboxRule(MailboxPreference.ORGANISATION).choose(ALL) == (ORG_ELSEWHERE, ORG_HERE)


def test_rule_any_and_hygiene() -> None:
    assert MailboxRule(MailboxPreference.ANY, FINESS).choose(ALL) == (
        PER_HERE, PER_NOWHERE, PER_ELSEWHERE, CAB, ORG_HERE, ORG_ELSEWHERE, APP)
    red = mailbox("rouge@chu.mssante.fr", MailboxType.PER, red=True)
    assert MailboxRule().choose((red, PER_HERE, PER_HERE)) == (PER_HERE,)
    assert MailboxRule().choose(()) == ()


def test_resolve_organisation_uses_the_structure_mailboxes(tmp_path: Path) -> None:
    # ORG lines carry no professional: the rule finds them through the structure.
    directory, _ = imported(tmp_path, line(), org_line(),
                            org_line(address="secretariat@clinique.mssante.fr",
                                     structure=OTHER_FINESS))
    with directory:
        personal = resolve(directory, RPPS)
        assert [str(m.address) for m in personal] == ["jean.dupont@chu-test.mssante.fr"]
        organisation = resolve(directory, f"8{RPPS}",
                               MailboxRule(MailboxPreference.ORGANISATION, FINESS))
        assert [str(m.address) for m in organisation] == ["cardiologie@chu-test.mssante.fr"]
        elsewhere = resolve(directory, RPPS,
                            MailboxRule(MailboxPreference.ORGANISATION, "999999999"))
        assert [str(m.address) for m in elsewhere] == ["jean.dupont@chu-test.mssante.fr"]


def test_temporary_files_do_not_survive_a_crash(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    source = write(tmp_path / "e.txt", extraction(line()))
    target = tmp_path / "var" / "directory.db"

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        import_extraction(source, target)
    assert list(target.parent.iterdir()) == []
