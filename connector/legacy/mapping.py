"""Flow mappings: `mappings/<flow>/mapping.yaml`, validated at start-up against
`schemas/mapping.schema.json`. Every problem is a `ConfigError` naming the file, the line and
the dotted key (`mappings/bio/mapping.yaml:12: recipients.rules[1]: ...`).

A mapping says how it matches a message (sending application or facility, MSH-9, OBR-4 code),
the document it makes (type code from JDV_J07, title, confidentiality, service event), where the
author and legal authenticator come from (fields such as OBR-32, ORC-12, OBX-16, or a default
person), the body (the PDF of an OBX ED, or the text of TX/FT/ST OBX), the recipient rules, the
DMP/MSSanté metadata defaults, and what a corrected result does (`results.corrected`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import jsonschema
import yaml

from connector.errors import ConfigError
from connector.legacy.cda import CodedConcept

SCHEMA_NAME: Final = "mapping.schema.json"


def schema_path() -> Path:
    """The shipped schema: the source tree's `schemas/`, else the installed data files."""
    candidates = (Path(__file__).resolve().parents[2] / "schemas" / SCHEMA_NAME,
                  Path(sys.prefix) / "share" / "mssante-connector" / "schemas" / SCHEMA_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError("mappings", f"{SCHEMA_NAME} is not installed (looked in "
                                  f"{', '.join(str(c.parent) for c in candidates)})")


class BodySource(StrEnum):
    OBX_PDF = "obx-pdf"  # OBX type ED `^application^pdf^Base64^...`
    OBX_TEXT = "obx-text"  # OBX types TX / FT / ST, joined as text/plain


class RecipientRule(StrEnum):
    ORDERING_PROVIDER = "ordering-provider"  # ORC-12, else OBR-16
    COPIES = "copies"  # OBR-28 (repeating)
    MEDECIN_TRAITANT = "medecin-traitant"  # from the ADT patient context (ROL ODRP, PD1-4)


class MailboxChoice(StrEnum):
    PERSONAL = "personal"
    ORGANISATION = "organisation"
    ANY = "any"


class CorrectionPolicy(StrEnum):
    """A corrected result (OBX-11 or OBR-25 = C), and what a later report of the same order
    does (`legacy.flow`)."""

    REFUSE = "refuse"  # AE: the sender is told, nothing goes out as if it were a new report
    NEW = "new"  # sent as a new document (not linked to the one it corrects), W in the ACK
    # Each order (OBR-3, else ORC-3, OBR-2, ORC-2) is one document set: its first report is
    # version 1, each later report of the order (corrected, or final after preliminary) a new
    # version that replaces the latest one the store knows (relatedDocument RPLC, XDM action C).
    REPLACE = "replace"


class UnresolvedPolicy(StrEnum):
    SKIP = "skip"  # send to the others, report the unresolved ones (W in the ACK)
    REJECT = "reject"  # AE: nothing is sent


@dataclass(frozen=True, slots=True)
class DefaultPerson:
    rpps: str
    family: str
    given: str
    profession: CodedConcept | None = None


@dataclass(frozen=True, slots=True)
class PersonSource:
    fields: tuple[str, ...] = ()  # e.g. ("OBR-32", "ORC-12"): the first filled one wins
    default: DefaultPerson | None = None


@dataclass(frozen=True, slots=True)
class Match:
    sending_application: frozenset[str] = frozenset()
    sending_facility: frozenset[str] = frozenset()
    message_type: frozenset[str] = frozenset()
    obr4_code: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class MetadataDefaults:
    ack_reception: bool = False
    ack_lecture_mss: bool = False
    destmssantepat: bool = False
    masque_ps: bool = False
    invisible_patient: bool = False


@dataclass(frozen=True, slots=True)
class FlowMapping:
    name: str
    source: Path
    match: Match
    document_type: CodedConcept
    title: str
    body: BodySource
    rules: tuple[RecipientRule | str, ...]  # a str is a fixed address
    confidentiality: str = "N"
    service_event: CodedConcept | None = None
    service_event_time: tuple[str, ...] = ("OBR-7",)
    practice_setting: CodedConcept | None = None
    healthcare_facility: CodedConcept | None = None
    author: PersonSource = PersonSource(("OBR-32", "ORC-12", "OBX-16"))
    legal_authenticator: PersonSource = PersonSource(("OBR-32",))
    body_obx_code: str | None = None
    mailbox: MailboxChoice = MailboxChoice.PERSONAL
    unresolved: UnresolvedPolicy = UnresolvedPolicy.SKIP
    metadata: MetadataDefaults = MetadataDefaults()
    corrected: CorrectionPolicy = CorrectionPolicy.REFUSE
    description: str = field(default="", compare=False)


# -- loading ---------------------------------------------------------------------------------------


def load_mappings(directory: Path) -> tuple[FlowMapping, ...]:
    """Every `<directory>/*/mapping.yaml`, in name order; names must be unique."""
    if not directory.is_dir():
        raise ConfigError("mappings", f"not a directory: {directory}")
    validator = jsonschema.Draft202012Validator(json.loads(schema_path().read_text("utf-8")),
                                                format_checker=jsonschema.FormatChecker())
    for flow in sorted(p for p in directory.iterdir() if p.is_dir()):
        near = [f for f in flow.iterdir() if f.name.lower() in _NEAR_NAMES
                and f.name != "mapping.yaml"]
        if near and not (flow / "mapping.yaml").is_file():  # skipped silently otherwise
            raise ConfigError("(file)", f"a flow's mapping is read from {flow}/mapping.yaml: "
                                        f"rename {near[0].name}", source=str(near[0]))
    mappings: list[FlowMapping] = []
    for path in sorted(directory.glob("*/mapping.yaml")):
        mapping = load_mapping(path, validator)
        if any(m.name == mapping.name for m in mappings):
            raise ConfigError("name", f"duplicate mapping name {mapping.name!r}",
                              source=str(path))
        mappings.append(mapping)
    return tuple(mappings)


_NEAR_NAMES: Final = frozenset({"mapping.yml", "mapping.yaml", "mappings.yaml", "mappings.yml"})


def _key_given_twice(node: yaml.Node | None, keys: list[str | int],
                     seen_nodes: set[int] | None = None
                     ) -> tuple[list[str | int], int, int] | None:
    """The first mapping key given twice under `node`: its path and both lines (1-based).
    A node reached again through an alias is looked at once (an anchor may contain itself)."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return None
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                return [*keys, key], seen[key], line
            seen[key] = line
            found = _key_given_twice(value_node, [*keys, key], seen_nodes)
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _key_given_twice(item, [*keys, index], seen_nodes)
            if found is not None:
                return found
    return None


def load_mapping(path: Path, validator: jsonschema.protocols.Validator | None = None
                 ) -> FlowMapping:
    if validator is None:
        validator = jsonschema.Draft202012Validator(
            json.loads(schema_path().read_text("utf-8")),
            format_checker=jsonschema.FormatChecker())
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("(file)", f"cannot read: {exc}", source=str(path)) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError("(syntax)", str(getattr(exc, "problem", exc)), source=where) from exc
    twice = _key_given_twice(node, [])
    if twice is not None:  # YAML keeps the last one silently
        keys, first, again = twice
        raise ConfigError(_dotted(keys), f"given twice (lines {first} and {again}): keep one",
                          source=f"{path}:{again}")
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        error = min(errors, key=lambda e: len(list(e.absolute_path)))
        error = _deepest(error)
        keys = list(error.absolute_path)
        problem = str(error.message)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
            keys.append(sorted(set(error.instance) - set(known))[0])
            problem = "unknown key"
        raise ConfigError(_dotted(keys) or "(top)", problem,
                          source=f"{path}:{_line(node, keys)}")
    return _mapping(data, path)


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For `oneOf` failures, the most specific sub-error (what the author most likely meant)."""
    if error.context:
        return _deepest(max(error.context, key=lambda e: len(list(e.absolute_path))))
    return error


def _dotted(keys: list[Any]) -> str:
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _line(node: yaml.Node | None, keys: list[Any]) -> int:
    """1-based line of the value at `keys` in the composed YAML (the closest parent found)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == key), None)
            if found is None:
                break
            line = found.start_mark.line + 1 if not isinstance(found, yaml.MappingNode) \
                else next((k.start_mark.line + 1 for k, v in node.value if k.value == key), line)
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) \
                and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _strings(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    return frozenset([value] if isinstance(value, str) else value)


def _code(value: Mapping[str, Any] | None) -> CodedConcept | None:
    if value is None:
        return None
    return CodedConcept(value["code"], value["display"], value["system"],
                        value.get("system_name"))


def _person(value: Mapping[str, Any] | None, fallback: PersonSource) -> PersonSource:
    if value is None:
        return fallback
    default = value.get("default")
    return PersonSource(
        tuple(value.get("from", fallback.fields)),
        DefaultPerson(default["rpps"], default["family"], default["given"],
                      _code(default.get("profession"))) if default else None)


def _rules(values: list[Any]) -> Iterator[RecipientRule | str]:
    for value in values:
        if isinstance(value, str):
            yield RecipientRule(value)
        else:
            yield from value["fixed"]


def _mapping(data: Mapping[str, Any], path: Path) -> FlowMapping:
    match, document, recipients = data["match"], data["document"], data["recipients"]
    service_event = document.get("service_event")
    code = _code(document["type"])
    assert code is not None
    return FlowMapping(
        name=data["name"], source=path,
        match=Match(_strings(match.get("sending_application")),
                    _strings(match.get("sending_facility")),
                    _strings(match.get("message_type")), _strings(match.get("obr4_code"))),
        document_type=code, title=document["title"],
        body=BodySource(data["body"]["from"]), rules=tuple(_rules(recipients["rules"])),
        confidentiality=document.get("confidentiality", "N"),
        service_event=_code(service_event["code"]) if service_event else None,
        service_event_time=tuple(service_event.get("time_from", ("OBR-7",)))
        if service_event else ("OBR-7",),
        practice_setting=_code(document.get("practice_setting")),
        healthcare_facility=_code(document.get("healthcare_facility")),
        author=_person(data.get("author"), PersonSource(("OBR-32", "ORC-12", "OBX-16"))),
        legal_authenticator=_person(data.get("legal_authenticator"),
                                    PersonSource(("OBR-32",))),
        body_obx_code=data["body"].get("obx_code"),
        mailbox=MailboxChoice(recipients.get("mailbox", "personal")),
        unresolved=UnresolvedPolicy(recipients.get("unresolved", "skip")),
        metadata=MetadataDefaults(**data.get("metadata", {})),
        corrected=CorrectionPolicy(data.get("results", {}).get("corrected", "refuse")),
        description=data.get("description", ""))
