"""The Annuaire Santé FHIR client against a local HTTP server serving the documented JSON shape.

Resources follow the ANS examples: `mss-practitioner-bal-per-dupont` (interop-ig-fhir-api-
messagerie-securisee-sante, telecom with only the `as-ext-mailbox-mss-metadata` extension), the
Organization of the "Extraction des BAL MSSanté" use case (annuaire-sante-fhir-documentation,
`fr-core-contact-point-email-type` = MSSANTE plus the metadata), identifiers under
`urn:oid:1.2.250.1.71.4.2.1` (8 + RPPS).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.directory import fhir
from connector.directory.annuaire import (
    DirectoryError,
    DirectoryLookup,
    DirectoryUnavailable,
    InvalidIdentifierError,
    MailboxPreference,
    MailboxRule,
    MailboxType,
    resolve,
)
from connector.directory.fhir import (
    API_KEY_HEADER,
    EMAIL_TYPE_URL,
    IDNPS_SYSTEM,
    MAILBOX_METADATA_URL,
    FhirDirectory,
)
from connector.directory.whitelist import Whitelist
from connector.errors import ConfigError

RPPS = "10003456789"
KEY = "test-key-0123456789abcdef"
TYPE_BAL = "https://mos.esante.gouv.fr/NOS/TRE_R257-TypeBAL/FHIR/TRE-R257-TypeBAL"
TYPE_MESSAGERIE = "https://mos.esante.gouv.fr/NOS/TRE_R256-TypeMessagerie/FHIR/TRE-R256-TypeMessagerie"


def mss_telecom(address: str, bal_type: str = "PER", *, red: bool | None = False,
                email_type: str | None = None, service: str | None = None) -> dict[str, Any]:
    metadata: list[dict[str, Any]] = [
        {"url": "type", "valueCodeableConcept": {"coding": [{"system": TYPE_BAL,
                                                              "code": bal_type}]}}]
    if red is not None:
        metadata.append({"url": "listeRouge", "valueBoolean": red})
    if service is not None:
        metadata.append({"url": "service", "valueString": service})
    metadata.append({"url": "digitization", "valueBoolean": True})
    extensions: list[dict[str, Any]] = []
    if email_type is not None:
        extensions.append({"url": EMAIL_TYPE_URL,
                           "valueCoding": {"system": TYPE_MESSAGERIE, "code": email_type}})
    extensions.append({"url": MAILBOX_METADATA_URL, "extension": metadata})
    return {"system": "email", "value": address, "extension": extensions}


def practitioner(rpps: str = RPPS, *telecoms: dict[str, Any], pid: str = "pr-1") -> dict[str, Any]:
    return {
        "resourceType": "Practitioner", "id": pid, "active": True,
        "identifier": [{"system": IDNPS_SYSTEM, "use": "official", "value": f"8{rpps}"}],
        "name": [{"use": "official", "family": "DUPONT", "given": ["Jean-Marie"]}],
        "telecom": list(telecoms),
    }


def role(*telecoms: dict[str, Any], practitioner_id: str = "pr-1",
         organization_id: str | None = "org-1") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "PractitionerRole", "id": "role-1",
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "telecom": list(telecoms)}
    if organization_id:
        resource["organization"] = {"reference": f"Organization/{organization_id}"}
    return resource


def organization(oid: str = "org-1", finess: str = "750712184",
                 *telecoms: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Organization", "id": oid, "name": "CHU DE TEST",
        "identifier": [
            {"type": {"coding": [{"code": "FINEG"}]}, "value": finess},
            {"type": {"coding": [{"code": "IDNST"}]}, "value": f"1{finess}"}],
        "telecom": list(telecoms),
    }


def bundle(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "self", "url": "x"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "link": links, "entry": [{"fullUrl": f"https://x/{r['resourceType']}/{r.get('id')}",
                                      "resource": r, "search": {"mode": "match"}}
                                     for r in resources]}


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict → JSON, bytes as is
    delay: float = 0.0


@dataclass
class FakeAnnuaire:
    """A local HTTP server: `routes[resource type]` answers, requests are recorded."""

    routes: dict[str, Reply | list[Reply]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def reply(self, resource: str) -> Reply:
        route = self.routes.get(resource, Reply(200, bundle()))
        if isinstance(route, list):
            return route.pop(0) if len(route) > 1 else route[0]
        return route


@pytest.fixture
def annuaire() -> Iterator[FakeAnnuaire]:
    fake = FakeAnnuaire()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            resource = parts.path.rstrip("/").rsplit("/", 1)[-1]
            fake.requests.append((parts.path, parse_qs(parts.query), dict(self.headers)))
            reply = fake.reply(resource)
            if reply.delay:
                time.sleep(reply.delay)
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (time-out test)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/fhir/v2"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def client(fake: FakeAnnuaire, **kwargs: Any) -> FhirDirectory:
    return FhirDirectory(fake.url, KEY, **kwargs)


# -- success --------------------------------------------------------------------------------------


def test_practitioner_and_roles(annuaire: FakeAnnuaire) -> None:
    annuaire.routes["Practitioner"] = Reply(200, bundle(
        practitioner(RPPS,
                     mss_telecom("jean-marie.dupont@infirmier.mssante.fr"),
                     {"system": "phone", "value": "0102030405"},
                     # A plain contact e-mail (type other than MSSANTE) and an untyped one:
                     {"system": "email", "value": "jm.dupont@gmail.example", "extension": [
                         {"url": EMAIL_TYPE_URL, "valueCoding": {"code": "INTERNET"}}]},
                     {"system": "email", "value": "contact@cabinet.example"}),
        role(mss_telecom("jm.dupont@chu-test.mssante.fr", email_type="MSSANTE",
                         service="Cardiologie"))))
    annuaire.routes["Organization"] = Reply(200, bundle(organization()))
    found = client(annuaire).by_rpps(RPPS)
    assert [(str(m.address), m.mailbox_type) for m in found] == [
        ("jean-marie.dupont@infirmier.mssante.fr", MailboxType.PER),
        ("jm.dupont@chu-test.mssante.fr", MailboxType.PER)]
    personal, in_role = found
    assert personal.structure is None
    assert in_role.structure is not None
    assert (in_role.structure.id_type, in_role.structure.identifier) == ("FINEG", "750712184")
    assert in_role.service == "Cardiologie"
    assert in_role.holder is not None
    assert (in_role.holder.rpps, in_role.holder.national_id) == (RPPS, f"8{RPPS}")
    assert in_role.digitization is True
    assert {m.source for m in found} == {"fhir"}
    # What was asked: both identifier forms, the roles, the key in its header.
    (path, query, headers), (org_path, org_query, _) = annuaire.requests
    assert path == "/fhir/v2/Practitioner"
    assert query == {"identifier": [f"{RPPS},8{RPPS}"],
                     "_revinclude": ["PractitionerRole:practitioner"]}
    assert headers[API_KEY_HEADER] == KEY
    assert headers["Accept"] == "application/fhir+json"
    assert (org_path, org_query) == ("/fhir/v2/Organization", {"_id": ["org-1"]})


def test_national_id_and_rules(annuaire: FakeAnnuaire) -> None:
    annuaire.routes["Practitioner"] = Reply(200, bundle(
        practitioner(RPPS, mss_telecom("jean@medecin.mssante.fr")),
        role(mss_telecom("jean@chu-test.mssante.fr"))))
    annuaire.routes["Organization"] = Reply(200, bundle(organization()))
    lookup = client(annuaire)
    assert isinstance(lookup, DirectoryLookup)
    assert lookup.by_national_id(f"8{RPPS}") == lookup.by_rpps(RPPS)
    chosen = resolve(lookup, RPPS, MailboxRule(MailboxPreference.PERSONAL, "750712184"))
    assert [str(m.address) for m in chosen] == ["jean@chu-test.mssante.fr"]


def test_structure_mailboxes(annuaire: FakeAnnuaire) -> None:
    annuaire.routes["Organization"] = Reply(200, bundle(
        organization("org-1", "750712184",
                     mss_telecom("secretariat.drhouse@aura.mssante.fr", "ORG",
                                 email_type="MSSANTE", red=None),
                     mss_telecom("rouge@aura.mssante.fr", "ORG", red=True),
                     mss_telecom("dpi@aura.mssante.fr", "APP")),
        organization("org-2", "999999999", mss_telecom("autre@aura.mssante.fr", "ORG"))))
    found = client(annuaire).by_structure("750712184")
    assert [(str(m.address), m.mailbox_type) for m in found] == [
        ("secretariat.drhouse@aura.mssante.fr", MailboxType.ORG),
        ("dpi@aura.mssante.fr", MailboxType.APP)]
    assert annuaire.requests[0][1] == {"identifier": ["750712184"]}


def test_paging_follows_next_on_the_same_host_only(annuaire: FakeAnnuaire) -> None:
    annuaire.routes["Practitioner"] = [
        Reply(200, bundle(practitioner(RPPS, mss_telecom("a@medecin.mssante.fr")),
                          next_url=f"{annuaire.url}/Practitioner?page=2")),
        Reply(200, bundle(practitioner(RPPS, mss_telecom("b@medecin.mssante.fr"), pid="pr-2"),
                          next_url="https://evil.example/fhir/v2/Practitioner?page=3")),
    ]
    found = client(annuaire).by_rpps(RPPS)
    assert [str(m.address) for m in found] == ["a@medecin.mssante.fr", "b@medecin.mssante.fr"]
    assert len(annuaire.requests) == 2
    assert annuaire.requests[1][1] == {"page": ["2"]}


# -- red list, foreign results, trust space -------------------------------------------------------


def test_red_listed_practitioner_gives_nothing(annuaire: FakeAnnuaire) -> None:
    annuaire.routes["Practitioner"] = Reply(200, bundle(
        practitioner(RPPS, mss_telecom("public@medecin.mssante.fr")),
        role(mss_telecom("hidden@chu-test.mssante.fr", red=True), organization_id=None)))
    assert client(annuaire).by_rpps(RPPS) == ()


def test_results_for_someone_else_are_ignored(annuaire: FakeAnnuaire) -> None:
    # A server that ignored the identifier filter must not make us return another person.
    annuaire.routes["Practitioner"] = Reply(200, bundle(
        practitioner("10009999999", mss_telecom("other@medecin.mssante.fr"), pid="x"),
        role(mss_telecom("other-role@medecin.mssante.fr"), practitioner_id="x",
             organization_id=None)))
    assert client(annuaire).by_rpps(RPPS) == ()


def test_trust_space(annuaire: FakeAnnuaire) -> None:
    annuaire.routes["Practitioner"] = Reply(200, bundle(practitioner(
        RPPS, mss_telecom("a@medecin.mssante.fr"), mss_telecom("b@ailleurs.example.fr"))))
    trusted = Whitelist(frozenset({"medecin.mssante.fr"}), datetime(2025, 3, 13, tzinfo=UTC),
                        Path("w.xml"), 1, "0" * 64)
    found = client(annuaire, whitelist=trusted).by_rpps(RPPS)
    assert [str(m.address) for m in found] == ["a@medecin.mssante.fr"]


# -- unknown and failures -------------------------------------------------------------------------


def test_unknown(annuaire: FakeAnnuaire) -> None:
    assert client(annuaire).by_rpps(RPPS) == ()
    annuaire.routes["Practitioner"] = Reply(404, {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-found"}]})
    assert client(annuaire).by_national_id(f"8{RPPS}") == ()


def test_404_without_fhir_body_is_a_wrong_url(annuaire: FakeAnnuaire) -> None:
    annuaire.routes["Practitioner"] = Reply(404, b"<html>Not Found</html>")
    with pytest.raises(DirectoryError, match="404 without a FHIR OperationOutcome"):
        client(annuaire).by_rpps(RPPS)


@pytest.mark.parametrize("status", [401, 403])
def test_bad_key(annuaire: FakeAnnuaire, status: int) -> None:
    annuaire.routes["Practitioner"] = Reply(status, {"message": "Unauthorized"})
    with pytest.raises(DirectoryError, match=f"refused the API key \\(HTTP {status}\\)") as info:
        client(annuaire).by_rpps(RPPS)
    assert not isinstance(info.value, DirectoryUnavailable)
    assert "MSSCONNECTOR_ESANTE_API_KEY" in str(info.value)
    assert KEY not in str(info.value)


def test_timeout(annuaire: FakeAnnuaire) -> None:
    # The reply would come after 2 s: a client that ignored its timeout would get it and
    # return, and the `raises` would fail.
    annuaire.routes["Practitioner"] = Reply(200, bundle(), delay=2.0)
    with pytest.raises(DirectoryUnavailable, match=r"did not answer within 0\.3 s"):
        client(annuaire, timeout=0.3).by_rpps(RPPS)


@pytest.mark.parametrize(("reply", "error", "message"), [
    (Reply(200, b"{not json"), DirectoryError, "not JSON"),
    (Reply(200, b"\xff\xfe"), DirectoryError, "not JSON"),
    (Reply(200, {"resourceType": "Patient"}), DirectoryError, "not a FHIR Bundle"),
    (Reply(200, [1, 2]), DirectoryError, "not a FHIR Bundle"),
    (Reply(500, {"resourceType": "OperationOutcome"}), DirectoryUnavailable, "HTTP 500"),
    (Reply(429, b""), DirectoryUnavailable, "rate limit"),
    (Reply(302, b""), DirectoryError, "redirect"),
    (Reply(400, {"resourceType": "OperationOutcome"}), DirectoryError, "HTTP 400"),
])
def test_bad_answers(annuaire: FakeAnnuaire, reply: Reply, error: type[Exception],
                     message: str) -> None:
    annuaire.routes["Practitioner"] = reply
    with pytest.raises(error, match=message):
        client(annuaire).by_rpps(RPPS)


def test_malformed_resources_are_skipped(annuaire: FakeAnnuaire) -> None:
    annuaire.routes["Practitioner"] = Reply(200, {
        "resourceType": "Bundle", "entry": [
            "junk", {"resource": None}, {"resource": {"resourceType": "Practitioner",
                                                      "identifier": "8" + RPPS}},
            {"resource": practitioner(RPPS, {"system": "email", "value": None,
                                             "extension": "x"},
                                      mss_telecom("not an address"),
                                      mss_telecom("ok@medecin.mssante.fr", "???"),
                                      mss_telecom("good@medecin.mssante.fr"))}]})
    assert [str(m.address) for m in client(annuaire).by_rpps(RPPS)] == [
        "good@medecin.mssante.fr"]


def test_too_large(annuaire: FakeAnnuaire) -> None:
    annuaire.routes["Practitioner"] = Reply(200, bundle(*[practitioner(RPPS)] * 50))
    with pytest.raises(DirectoryError, match="larger than 1000 bytes"):
        client(annuaire, max_bytes=1000).by_rpps(RPPS)


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lookup = FhirDirectory(f"http://127.0.0.1:{port}/fhir/v2", KEY, timeout=2)
    with pytest.raises(DirectoryUnavailable, match="cannot be reached"):
        lookup.by_rpps(RPPS)


def test_bad_identifiers_are_refused_before_any_request(annuaire: FakeAnnuaire) -> None:
    with pytest.raises(InvalidIdentifierError):
        client(annuaire).by_rpps("12345")
    with pytest.raises(InvalidIdentifierError):
        client(annuaire).by_structure("x&_include=*")
    assert annuaire.requests == []


# -- configuration --------------------------------------------------------------------------------


def test_configuration() -> None:
    with pytest.raises(ConfigError, match="MSSCONNECTOR_ESANTE_API_KEY: environment variable"):
        FhirDirectory.from_environment(env={})
    lookup = FhirDirectory.from_environment(env={"MSSCONNECTOR_ESANTE_API_KEY": KEY})
    assert lookup.base_url == "https://gateway.api.esante.gouv.fr/fhir/v2"
    assert KEY not in repr(lookup)
    with pytest.raises(ConfigError, match="must use https"):
        FhirDirectory("http://gateway.api.esante.gouv.fr/fhir/v2", KEY)
    with pytest.raises(ConfigError, match="http"):
        FhirDirectory("ftp://x/fhir", KEY)


# -- fuzz: any JSON in the resources gives mailboxes or nothing, never an exception ---------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from(["email", "PER", "MSSANTE", EMAIL_TYPE_URL, MAILBOX_METADATA_URL, "type",
                       "listeRouge", "a@b.mssante.fr", IDNPS_SYSTEM, f"8{RPPS}"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["system", "value", "url", "extension", "telecom",
                                       "valueCoding", "valueCodeableConcept", "coding", "code",
                                       "valueBoolean", "identifier", "name", "given", "family",
                                       "type", "reference"]), children, max_size=5),
    max_leaves=20)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["telecom", "identifier", "name", "id"]), JSON))
def test_resource_parsing_fuzz(resource: dict[str, Any]) -> None:
    holder = fhir._holder(resource)
    for mailbox in fhir._mailboxes(resource, holder, fhir._structure(resource)):
        assert mailbox.mailbox_type in MailboxType
