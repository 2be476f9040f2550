"""The admin JSON API, behind a bearer token (from a secret), on the admin listener:

    GET  /api/requests?tenant=&status=&since=&until=&control_id=&limit=
    GET  /api/requests/{id}                 the timeline of one request
    POST /api/outbox/{id}/retry             due now (failed, dead or waiting)
    POST /api/outbox/{id}/cancel            never send it (not while being sent, not once sent:
                                            409)
    GET  /api/audit?from=&to=&tenant=&format=json|csv&limit=&after=
                                            oldest first, `limit` rows a page (default 10000,
                                            at most 100000); a full page has a `Link: <...>;
                                            rel="next"` header, whose `after` is its last id

Times are ISO 8601 (`2026-11-23T08:00:00+01:00`, a date alone is midnight UTC) or epoch seconds.
Every change is audited with the actor `admin api (<client address>)`.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import structlog

from connector.admin import queries
from connector.errors import StoreError
from connector.store import InboundStatus

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from connector.admin.queries import Store

_REQUEST: Final = re.compile(r"/api/requests/(\d{1,18})\Z")
_OUTBOX_ACTION: Final = re.compile(r"/api/outbox/(\d{1,18})/(retry|cancel)\Z")
JSON: Final = "application/json"


@dataclass(frozen=True, slots=True)
class Response:
    status: str
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # more response headers (`Link`)


def _json(status: str, payload: object) -> Response:
    return Response(status, JSON, (json.dumps(payload, ensure_ascii=False) + "\n").encode())


def _error(status: str, message: str) -> Response:
    return _json(status, {"error": message})


class BadRequest(ValueError):
    pass


def parse_time(text: str | None, name: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: not an ISO 8601 time or epoch seconds") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class AdminApi:
    def __init__(self, store: Store, token: str) -> None:
        if len(token) < 16:
            raise ValueError("the admin API token must be at least 16 characters")
        self._store = store
        self._token = token.encode()

    def authorised(self, headers: dict[str, str]) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self._token)

    async def handle(self, method: str, path: str, query: dict[str, str],
                     headers: dict[str, str], peer: str) -> Response:
        if not self.authorised(headers):
            return Response("401 Unauthorized", JSON, b'{"error": "bearer token required"}\n')
        try:
            return await self._route(method, path, query, peer)
        except BadRequest as exc:
            return _error("400 Bad Request", str(exc))
        except StoreError as exc:  # unreachable, or a payload it cannot open: say so, not b""
            log.warning("admin_api_store_error", path=path, error=type(exc).__name__)
            return _error("503 Service Unavailable", f"the store cannot answer: {exc}")

    async def _route(self, method: str, path: str, query: dict[str, str],
                     peer: str) -> Response:
        if path == "/api/requests" and method == "GET":
            return _json("200 OK", await queries.search_requests(
                self._store, tenant_id=query.get("tenant"), status=_status(query),
                since=parse_time(query.get("since"), "since"),
                until=parse_time(query.get("until"), "until"),
                control_id=query.get("control_id"), limit=_limit(query)))
        if (match := _REQUEST.match(path)) and method == "GET":
            found = await queries.timeline(self._store, int(match.group(1)))
            return _json("200 OK", found) if found else _error("404 Not Found", "no request")
        if (match := _OUTBOX_ACTION.match(path)) and method == "POST":
            row_id, verb = int(match.group(1)), match.group(2)
            actor = f"admin api ({peer})"
            done = await (queries.retry if verb == "retry" else queries.cancel)(
                self._store, row_id, actor)
            if not done:
                return _error("409 Conflict", f"outbox {row_id}: unknown, or its state does not "
                                              f"allow {verb}")
            return _json("200 OK", {"outbox_id": row_id, "done": verb})
        if path == "/api/audit" and method == "GET":
            if query.get("format", "json") not in ("json", "csv"):
                raise BadRequest("format: json or csv")
            limit = _limit(query, default=queries.AUDIT_PAGE, most=queries.AUDIT_PAGE_MAX)
            records = await queries.audit_records(
                self._store, since=parse_time(query.get("from"), "from"),
                until=parse_time(query.get("to"), "to"), tenant_id=query.get("tenant"),
                limit=limit, after_id=_after(query))
            more = ((("Link", f'<{_next_page(path, query, records[-1].id)}>; rel="next"'),)
                    if len(records) == limit else ())
            if query.get("format") == "csv":
                return Response("200 OK", "text/csv; charset=utf-8",
                                queries.audit_as_csv(records).encode(), more)
            return Response("200 OK", JSON, queries.audit_as_json(records).encode(), more)
        if path.startswith("/api/"):
            return _error("404 Not Found", "no such resource or method")
        return _error("404 Not Found", "not found")


def _status(query: dict[str, str]) -> InboundStatus | None:
    raw = query.get("status")
    if raw is None:
        return None
    try:
        return InboundStatus(raw)
    except ValueError as exc:
        raise BadRequest("status: accepted or rejected") from exc


def _limit(query: dict[str, str], *, default: int = 100, most: int = 10_000) -> int:
    raw = query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise BadRequest(f"limit: 1 to {most}")
    return int(raw)


def _after(query: dict[str, str]) -> int | None:
    raw = query.get("after")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest("after: the id of the last audit row of the page before")
    return int(raw)


def _next_page(path: str, query: dict[str, str], last_id: int) -> str:
    from urllib.parse import urlencode

    return f"{path}?{urlencode({**query, 'after': str(last_id)})}"


def query_of(target: str) -> tuple[str, dict[str, str]]:
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(target)
    return parts.path, dict(parse_qsl(parts.query))

