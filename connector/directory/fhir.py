"""Annuaire Santé FHIR API v2 client behind the `DirectoryLookup` interface (optional).

What it implements (mssante-transport.md §5.3, from the ANS `annuaire-sante-fhir-documentation`
v2 pages, the `interop-ig-fhir-api-messagerie-securisee-sante` examples and the
`as-ext-mailbox-mss-metadata` extension of `IG-fhir-annuaire`):

* Base `https://gateway.api.esante.gouv.fr/fhir/v2`; every request carries the header
  `ESANTE-API-KEY: <key>`, the key read from the environment (`MSSCONNECTOR_ESANTE_API_KEY` unless
  told otherwise); GET only; the gateway answers in 30 s at most, 17 requests/s.
* RPPS / national id → `GET [base]/Practitioner?identifier=<RPPS>,8<RPPS>
  &_revinclude=PractitionerRole:practitioner` (`identifier` takes the 11-digit RPPS, the IDNPS
  `8` + RPPS and `0` + ADELI, comma-separated values being alternatives). A Practitioner is kept
  only when it really carries one of those identifiers (`identifier[]` with system
  `urn:oid:1.2.250.1.71.4.2.1` = IDNPS, or `https://rpps.esante.gouv.fr` = RPPS), and a
  PractitionerRole only when its `practitioner.reference` points to a kept Practitioner: a
  server that ignored the filter cannot make us return someone else's address.
  The structures of the PractitionerRoles that carry a mailbox are read with one
  `GET [base]/Organization?_id=<id>,<id>` (their identifiers: FINESS, SIRET…).
* Structure id → `GET [base]/Organization?identifier=<id>` (ORG and APP mailboxes live on
  Organization), kept only when an `identifier[].value` equals the id asked for.
* A mailbox is a `telecom[]` element with `system` = `email` and either the extension
  `https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type` whose
  `valueCoding.code` is `MSSANTE` (TRE_R256-TypeMessagerie), or the extension
  `https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/as-ext-mailbox-mss-metadata`
  (the examples on Practitioner carry only this one). An e-mail whose type extension says
  anything other than `MSSANTE` is a plain contact address and is ignored (the `mailbox-mss`
  search matches `telecom.value`, so it returns those too). The metadata sub-extensions read:
  `type` (`valueCodeableConcept.coding[].code`, TRE_R257-TypeBAL: PER / ORG / APP / CAB; a
  mailbox without a known type is ignored, never guessed), `service` (`valueString`),
  `listeRouge` and `digitization` (`valueBoolean`).
* Liste rouge: a Practitioner with any red-listed mailbox (its own or one of its roles') gives no
  mailbox at all; on an Organization only the red-listed mailbox is dropped.
* Paging: `link[relation=next]` is followed (same scheme, host and port only) up to `max_pages`.

Failures are `DirectoryError`s, never a crash and never the key in a message: time-out, refused
connection, 5xx and 429 → `DirectoryUnavailable` (transient); 401/403 → the key was refused;
other statuses, redirects (not followed: the key would go with them), bodies that are not JSON or
not a FHIR Bundle, or larger than `max_bytes` → `DirectoryError`. A 404 carrying a FHIR
`OperationOutcome` means "unknown" (no mailbox); a 404 without one points at a wrong base URL
and is an error. The calls block: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from connector import __version__
from connector.directory.annuaire import (
    DirectoryError,
    DirectoryUnavailable,
    Holder,
    Mailbox,
    MailboxType,
    Structure,
    in_trust_space,
    normalize_national_id,
    normalize_rpps,
    normalize_structure_id,
)
from connector.directory.whitelist import InvalidAddressError, Whitelist, parse_address
from connector.errors import ConfigError
from connector.hosts import is_loopback

DEFAULT_BASE_URL: Final = "https://gateway.api.esante.gouv.fr/fhir/v2"
API_KEY_ENV: Final = "MSSCONNECTOR_ESANTE_API_KEY"
API_KEY_HEADER: Final = "ESANTE-API-KEY"
EMAIL_TYPE_URL: Final = (
    "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type")
MAILBOX_METADATA_URL: Final = (
    "https://interop.esante.gouv.fr/ig/fhir/annuaire/StructureDefinition/"
    "as-ext-mailbox-mss-metadata")
IDNPS_SYSTEM: Final = "urn:oid:1.2.250.1.71.4.2.1"
RPPS_SYSTEM: Final = "https://rpps.esante.gouv.fr"
MSSANTE_EMAIL_TYPE: Final = "MSSANTE"
#: Organization identifier types preferred as "the" structure id, in order.
_STRUCTURE_ID_TYPES: Final = ("FINEG", "FINEJ", "SIRET", "SIREN", "IDNST")
_TYPES: Final = frozenset(t.value for t in MailboxType)
_TECHNICAL_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FhirDirectory:
    """Look-ups in the Annuaire Santé FHIR API v2; see the module docstring for the shape read."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str = field(default="", repr=False)
    timeout: float = 10.0  # for a whole request, body included
    whitelist: Whitelist | None = field(default=None, repr=False)
    max_pages: int = 5
    max_bytes: int = 8 * 1024 * 1024
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    api_key_env: str = API_KEY_ENV  # named in error messages

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError("directory.fhir.base_url", "must be an http(s) URL with a host")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ConfigError("directory.fhir.base_url",
                              "must use https (the API key travels in a header)")
        if not self.api_key:
            raise ConfigError(self.api_key_env, "the Annuaire Santé API key is empty")
        if self.timeout <= 0:
            raise ConfigError("directory.fhir.timeout", "must be positive")

    @classmethod
    def from_environment(cls, base_url: str = DEFAULT_BASE_URL, *,
                         env: Mapping[str, str] | None = None, variable: str = API_KEY_ENV,
                         timeout: float = 10.0, whitelist: Whitelist | None = None
                         ) -> FhirDirectory:
        """A client whose API key is the environment variable `variable`; `ConfigError` if unset."""
        env = os.environ if env is None else env
        key = env.get(variable, "").strip()
        if not key:
            raise ConfigError(variable, "environment variable is not set (Annuaire Santé API key)")
        return cls(base_url, key, timeout=timeout, whitelist=whitelist, api_key_env=variable)

    # -- DirectoryLookup ----------------------------------------------------------------------

    def by_rpps(self, rpps: str) -> tuple[Mailbox, ...]:
        number = normalize_rpps(rpps)
        return self._practitioners((number, f"8{number}"))

    def by_national_id(self, national_id: str) -> tuple[Mailbox, ...]:
        idnps = normalize_national_id(national_id)
        if len(idnps) == 12 and idnps.startswith("8") and idnps.isdigit():
            return self._practitioners((idnps[1:], idnps))
        return self._practitioners((idnps,))

    def by_structure(self, structure_id: str) -> tuple[Mailbox, ...]:
        wanted = normalize_structure_id(structure_id)
        found: list[Mailbox] = []
        for resource in self._search("Organization", [("identifier", wanted)]):
            if resource.get("resourceType") != "Organization":
                continue
            structure = _structure(resource)
            if structure is None or wanted not in _identifier_values(resource):
                continue
            found.extend(m for m in _mailboxes(resource, None, structure) if not m.red_listed)
        return in_trust_space(found, self.whitelist)

    # -- practitioners ------------------------------------------------------------------------

    def _practitioners(self, identifiers: Sequence[str]) -> tuple[Mailbox, ...]:
        resources = list(self._search("Practitioner", [
            ("identifier", ",".join(identifiers)),
            ("_revinclude", "PractitionerRole:practitioner")]))
        wanted = set(identifiers)
        holders: dict[str, Holder] = {}
        found: list[tuple[str, Mailbox]] = []
        for index, resource in enumerate(resources):
            if resource.get("resourceType") != "Practitioner":
                continue
            if not wanted & _identifier_values(resource):
                continue
            technical_id = _text(resource.get("id")) or f"#{index}"  # no id: no role links
            holder = _holder(resource)
            holders[technical_id] = holder
            found.extend((technical_id, m) for m in _mailboxes(resource, holder, None))
        roles: list[tuple[str, Json, str | None]] = []
        for resource in resources:
            if resource.get("resourceType") != "PractitionerRole":
                continue
            owner = _reference_id(resource.get("practitioner"), "Practitioner")
            if owner in holders:
                roles.append((owner, resource,
                              _reference_id(resource.get("organization"), "Organization")))
        role_mailboxes = [(owner, resource, org) for owner, resource, org in roles
                          if _mailboxes(resource, None, None)]
        structures = self._structures({org for _, _, org in role_mailboxes if org}, resources)
        for owner, resource, org in role_mailboxes:
            structure = structures.get(org) if org else None
            found.extend((owner, m) for m in _mailboxes(resource, holders[owner], structure))
        red = {owner for owner, m in found if m.red_listed}
        return in_trust_space((m for owner, m in found if owner not in red), self.whitelist)

    def _structures(self, ids: set[str], known: Iterable[Json]) -> dict[str, Structure]:
        structures: dict[str, Structure] = {}
        resources = [r for r in known if r.get("resourceType") == "Organization"]
        missing = sorted(i for i in ids if _TECHNICAL_ID.fullmatch(i)
                         and not any(_text(r.get("id")) == i for r in resources))
        if missing:
            resources.extend(self._search("Organization", [("_id", ",".join(missing))]))
        for resource in resources:
            technical_id = _text(resource.get("id"))
            structure = _structure(resource)
            if technical_id in ids and structure is not None:
                structures[technical_id] = structure
        return structures

    # -- HTTP ---------------------------------------------------------------------------------

    def _search(self, resource_type: str, params: Sequence[tuple[str, str]]) -> Iterator[Json]:
        base = urlsplit(self.base_url)
        target: str | None = (
            f"{base.path.rstrip('/')}/{resource_type}?{urlencode(params, safe=',:')}")
        for _ in range(self.max_pages):
            if target is None:
                return
            bundle = self._get(target)
            if bundle is None:
                return
            for entry in _dicts(bundle.get("entry")):
                resource = entry.get("resource")
                if isinstance(resource, dict):
                    yield resource
            target = self._next_page(bundle)

    def _next_page(self, bundle: Json) -> str | None:
        base = urlsplit(self.base_url)
        for link in _dicts(bundle.get("link")):
            if link.get("relation") != "next" or not isinstance(link.get("url"), str):
                continue
            url = urlsplit(link["url"])
            if (url.scheme, url.hostname, url.port) != (base.scheme, base.hostname, base.port):
                return None  # never send the key to another host
            return f"{url.path}?{url.query}" if url.query else url.path
        return None

    def _get(self, target: str) -> Json | None:
        """The JSON Bundle at `target` (path and query), None for a FHIR 404."""
        base = urlsplit(self.base_url)
        assert base.hostname is not None
        deadline = time.monotonic() + self.timeout
        connection: http.client.HTTPConnection
        if base.scheme == "https":
            connection = http.client.HTTPSConnection(
                base.hostname, base.port, timeout=self.timeout,
                context=self.ssl_context or ssl.create_default_context())
        else:
            connection = http.client.HTTPConnection(base.hostname, base.port,
                                                    timeout=self.timeout)
        try:
            connection.request("GET", target, headers={
                API_KEY_HEADER: self.api_key,
                "Accept": "application/fhir+json",
                "User-Agent": f"mssante-connector/{__version__}",
            })
            response = connection.getresponse()
            status = response.status
            body = self._read(connection, response, deadline)
        except TimeoutError as exc:
            raise DirectoryUnavailable(
                f"Annuaire Santé did not answer within {self.timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise DirectoryUnavailable(
                f"Annuaire Santé cannot be reached ({type(exc).__name__})") from exc
        finally:
            connection.close()
        return self._decode(status, body)

    def _read(self, connection: http.client.HTTPConnection,
              response: http.client.HTTPResponse, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if connection.sock is not None:
                connection.sock.settimeout(remaining)
            chunk = response.read1(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_bytes:
                raise DirectoryError(
                    f"Annuaire Santé answer is larger than {self.max_bytes} bytes; refused")
            chunks.append(chunk)

    def _decode(self, status: int, body: bytes) -> Json | None:
        if status in (401, 403):
            raise DirectoryError(f"Annuaire Santé refused the API key (HTTP {status}): "
                                 f"check {self.api_key_env}")
        if status == 429:
            raise DirectoryUnavailable("Annuaire Santé rate limit reached (HTTP 429)")
        if status >= 500:
            raise DirectoryUnavailable(f"Annuaire Santé failed (HTTP {status})")
        if 300 <= status < 400:
            raise DirectoryError(f"Annuaire Santé answered a redirect (HTTP {status}); not "
                                 "followed: check the base URL")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            document = None
        if status == 404:
            if isinstance(document, dict) and document.get("resourceType") == "OperationOutcome":
                return None
            raise DirectoryError("Annuaire Santé answered HTTP 404 without a FHIR "
                                 "OperationOutcome: check the base URL")
        if status != 200:
            raise DirectoryError(f"Annuaire Santé answered HTTP {status}")
        if document is None:
            raise DirectoryError("Annuaire Santé answered a body that is not JSON")
        if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
            raise DirectoryError("Annuaire Santé answered JSON that is not a FHIR Bundle")
        return document


# -- reading the resources ------------------------------------------------------------------------


def _dicts(value: object) -> list[Json]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _identifier_values(resource: Json) -> set[str]:
    return {_text(i.get("value")) for i in _dicts(resource.get("identifier"))} - {""}


def _reference_id(reference: object, resource_type: str) -> str | None:
    """`Practitioner/abc` (relative or absolute, version suffix allowed) → `abc`."""
    if not isinstance(reference, dict):
        return None
    parts = _text(reference.get("reference")).split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def _holder(practitioner: Json) -> Holder:
    national_id = rpps = ""
    for identifier in _dicts(practitioner.get("identifier")):
        system, value = _text(identifier.get("system")), _text(identifier.get("value"))
        if system == IDNPS_SYSTEM and value and not national_id:
            national_id = value
        elif system == RPPS_SYSTEM and re.fullmatch(r"[0-9]{11}", value) and not rpps:
            rpps = value
    if not rpps and re.fullmatch(r"8[0-9]{11}", national_id):
        rpps = national_id[1:]
    if rpps and not national_id:
        national_id = f"8{rpps}"
    names = _dicts(practitioner.get("name"))
    family = _text(names[0].get("family")) if names else ""
    given_list = names[0].get("given") if names else None
    given = _text(given_list[0]) if isinstance(given_list, list) and given_list else ""
    return Holder(id_type="8" if rpps else national_id[:1], identifier=rpps or national_id[1:],
                  national_id=national_id, rpps=rpps or None, family=family, given=given)


def _structure(organization: Json) -> Structure | None:
    by_type: dict[str, str] = {}
    values: list[str] = []
    for identifier in _dicts(organization.get("identifier")):
        value = _text(identifier.get("value"))
        if not value:
            continue
        values.append(value)
        type_value = identifier.get("type")
        codings = _dicts(type_value.get("coding")) if isinstance(type_value, dict) else []
        for coding in codings:
            by_type.setdefault(_text(coding.get("code")), value)
    for id_type in _STRUCTURE_ID_TYPES:
        if id_type in by_type:
            return Structure(id_type=id_type, identifier=by_type[id_type],
                             name=_text(organization.get("name")))
    if values:
        return Structure(id_type="", identifier=values[0], name=_text(organization.get("name")))
    return None


def _mailboxes(resource: Json, holder: Holder | None,
               structure: Structure | None) -> list[Mailbox]:
    found = []
    for telecom in _dicts(resource.get("telecom")):
        if telecom.get("system") != "email":
            continue
        extensions = _dicts(telecom.get("extension"))
        email_type = None
        metadata: dict[str, Json] | None = None
        for extension in extensions:
            url = extension.get("url")
            if url == EMAIL_TYPE_URL:
                coding = extension.get("valueCoding")
                email_type = _text(coding.get("code")) if isinstance(coding, dict) else ""
            elif url == MAILBOX_METADATA_URL:
                metadata = {_text(sub.get("url")): sub
                            for sub in _dicts(extension.get("extension"))}
        if email_type is not None and email_type != MSSANTE_EMAIL_TYPE:
            continue  # a plain contact e-mail
        if email_type is None and metadata is None:
            continue
        metadata = metadata or {}
        mailbox_type = _type_code(metadata.get("type"))
        if mailbox_type is None:
            continue  # never guess the type
        try:
            address = parse_address(_text(telecom.get("value")))
        except InvalidAddressError:
            continue
        found.append(Mailbox(
            address=address, mailbox_type=mailbox_type, holder=holder, structure=structure,
            service=_text((metadata.get("service") or {}).get("valueString")),
            digitization=_boolean(metadata.get("digitization")),
            red_listed=_boolean(metadata.get("listeRouge")) is True,
            source="fhir"))
    return found


def _type_code(extension: Json | None) -> MailboxType | None:
    if extension is None:
        return None
    concept = extension.get("valueCodeableConcept")
    codings = _dicts(concept.get("coding")) if isinstance(concept, dict) else []
    for coding in codings:
        code = _text(coding.get("code")).upper()
        if code in _TYPES:
            return MailboxType(code)
    return None


def _boolean(extension: Json | None) -> bool | None:
    if extension is None:
        return None
    value = extension.get("valueBoolean")
    return value if isinstance(value, bool) else None
