"""Flow mappings: the shipped ones load; every mistake names its file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.errors import ConfigError
from connector.legacy.mapping import (
    BodySource,
    MailboxChoice,
    RecipientRule,
    UnresolvedPolicy,
    load_mapping,
    load_mappings,
)

SHIPPED = Path(__file__).resolve().parents[3] / "mappings"
GOOD = (SHIPPED / "labo-cr-bio" / "mapping.yaml").read_text("utf-8")


def test_the_shipped_mappings_load() -> None:
    mappings = {m.name: m for m in load_mappings(SHIPPED)}
    assert set(mappings) == {"labo-cr-bio", "lettre-liaison-sortie"}
    bio = mappings["labo-cr-bio"]
    assert (bio.document_type.code, bio.body, bio.mailbox, bio.unresolved) == (
        "11502-2", BodySource.OBX_PDF, MailboxChoice.PERSONAL, UnresolvedPolicy.SKIP)
    assert bio.rules == (RecipientRule.ORDERING_PROVIDER, RecipientRule.COPIES)
    assert bio.match.obr4_code == frozenset({"11502-2", "BIO"})
    assert bio.service_event_time == ("OBR-7", "OBR-22")
    assert bio.metadata.ack_reception
    ldl = mappings["lettre-liaison-sortie"]
    assert ldl.rules == (RecipientRule.MEDECIN_TRAITANT, RecipientRule.COPIES)


def write(tmp_path: Path, text: str, name: str = "flow") -> Path:
    path = tmp_path / name / "mapping.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(("old", "new", "key", "needle"), [
    ("  mailbox: personal", "  mailbox: personel", "recipients.mailbox", "mailbox:"),
    ("  unresolved: skip", "  unresolved: skip\n  colour: blue", "recipients.colour",
     "colour:"),
    ("  from: obx-pdf", "  from: obx-pfd", "body.from", "obx-pfd"),
    ("  ack_reception: true", "  ack_reception: yes please", "metadata.ack_reception",
     "ack_reception"),
    ("  rules: [ordering-provider, copies]", "  rules: [ordering-provider, {fixed: [nope]}]",
     "recipients.rules[1].fixed[0]", "rules:"),
    ("  from: [OBR-32, ORC-12, OBX-16]", "  from: [OBR32]", "author.from[0]", "OBR32"),
    ("metadata:", "results:\n  corrected: link\nmetadata:", "results.corrected",
     "corrected:"),
])
def test_mistakes_name_the_file_line_and_key(tmp_path: Path, old: str, new: str, key: str,
                                             needle: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert caught.value.key == key
    assert caught.value.source == f"{path}:{line_of(text, needle)}"


def test_a_yaml_syntax_error_names_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("  confidentiality: N", "  confidentiality: [N")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert caught.value.key == "(syntax)"
    assert caught.value.source is not None
    assert caught.value.source.startswith(f"{path}:")


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a")
    second = write(tmp_path, GOOD, "b")
    with pytest.raises(ConfigError) as caught:
        load_mappings(tmp_path)
    assert (caught.value.key, caught.value.source) == ("name", str(second))


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    """YAML keeps the last one silently (a second `body:` block replaced the first)."""
    text = GOOD + "body:\n  from: obx-text\n"
    path = write(tmp_path, text)
    first = line_of(text, "body:")
    again = len(text.splitlines()) - 1
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert caught.value.key == "body"
    assert caught.value.problem == f"given twice (lines {first} and {again}): keep one"
    assert caught.value.source == f"{path}:{again}"


def test_a_nested_key_given_twice_names_its_path(tmp_path: Path) -> None:
    assert "metadata:\n" in GOOD
    text = GOOD.replace("metadata:\n", "metadata:\n  ack_reception: true\n  ack_reception: false\n")
    with pytest.raises(ConfigError) as caught:
        load_mapping(write(tmp_path, text))
    assert caught.value.key == "metadata.ack_reception"


def test_a_flow_file_under_another_name_is_not_skipped_silently(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a")
    misnamed = tmp_path / "b" / "mapping.yml"
    misnamed.parent.mkdir()
    misnamed.write_text(GOOD.replace("name: ", "name: other-"), "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_mappings(tmp_path)
    assert caught.value.source == str(misnamed)
    assert f"read from {misnamed.parent}/mapping.yaml: rename mapping.yml" in caught.value.problem


def test_an_anchor_that_contains_itself_is_an_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_mapping(write(tmp_path, GOOD + "extra: &x [ *x ]\n"))
    assert caught.value.key == "extra"  # reported as the unknown key it is
