"""The HTTP API: alerts and their handling, silences, vital signs, health, ack links.

`create_app` builds a FastAPI application over a PostgreSQL connection pool.
Every route but `/health` and `/ack/{token}` needs `Authorization: Bearer
<token>` (alerts/auth.py); roles decide what a caller may do. Errors always
have the shape `{"error": {"status": …, "code": …, "message": …}}`, and the
message says what to do. Inputs are bounded (notes ≤ 2000 characters, filters
≤ 128, bodies ≤ 64 KiB) and reach SQL only as bound parameters.

Ack links (alerts/links.py) let a field worker acknowledge from a message
without logging in: `GET /ack/{token}` shows the alert and a button, `POST`
acknowledges as `link:<actor>`. The GET changes nothing on purpose: chat apps
and mail scanners fetch links to preview them, and a preview must not
acknowledge an alert nobody read.
"""

from __future__ import annotations

import html
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alerts.auth import (
    AuthError,
    ForbiddenError,
    Permission,
    Principal,
    Role,
    authenticate,
    authorize,
    authorize_alert,
)
from alerts.handling import (
    MAX_LIMIT,
    MAX_OFFSET,
    AlertEvent,
    AlertFilter,
    AlertRecord,
    act,
    alert_timeline,
    get_alert,
    list_alerts,
)
from alerts.lifecycle import (
    MAX_NOTE,
    Action,
    AlertNotFoundError,
    Handling,
    HandlingError,
    HandlingStatus,
    TransitionError,
)
from alerts.links import LinkError, verify
from alerts.model import ConditionState, Level
from alerts.silence import (
    MAX_MATCHERS,
    MAX_VALUE,
    Matcher,
    Silence,
    SilenceError,
    add_silence,
    expire_silence,
    list_silences,
)

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_FILTER = 128
MAX_ID = 2**63 - 1
TEAM_REGEX = r"^[A-Za-z0-9_.@-]{1,64}$"
NO_NUL = r"^[^\x00]*$"
"""PostgreSQL text cannot hold NUL: refuse it at the boundary, with the field named."""

Clock = Callable[[], datetime]


# --- errors ---------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered with the API's JSON error shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ErrorDetail(BaseModel):
    status: int
    code: str = Field(description="Stable, machine-readable: unauthorized, forbidden, …")
    message: str = Field(description="What went wrong and what to do.")
    fields: list[dict[str, str]] | None = Field(
        default=None, description="For invalid requests: each field and its problem."
    )


class ErrorOut(BaseModel):
    error: ErrorDetail


def _error(
    status: int,
    code: str,
    message: str,
    fields: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorOut(error=ErrorDetail(status=status, code=code, message=message, fields=fields))
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, headers=dict(headers or {})
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token, or a token that is not valid."},
    403: {"model": ErrorOut, "description": "The caller's role or team may not do this."},
    422: {"model": ErrorOut, "description": "The request is not valid; `fields` says where."},
}
_ALERT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    404: {"model": ErrorOut, "description": "No alert has that id."},
}
_ACTION_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ALERT_ERRORS,
    409: {"model": ErrorOut, "description": "Not allowed from the alert's handling state."},
}
_LINK_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "The link expired, or was altered or not ours."},
    404: {"model": ErrorOut, "description": "The link's alert does not exist."},
    409: {"model": ErrorOut, "description": "The alert is closed."},
    503: {"model": ErrorOut, "description": "Ack links are off (no link secret)."},
}


# --- response and request models ------------------------------------------------------


class AlertOut(BaseModel):
    id: int
    fingerprint: str
    rule: str
    domain: str
    device_id: str | None
    district: str | None
    level: str = Field(description="blue, yellow, orange or red")
    max_level: str
    condition: ConditionState
    handling: Handling
    team: str | None = Field(description="The team the alert is dispatched or routed to.")
    summary: str
    labels: dict[str, Any]
    values: dict[str, Any] = Field(description="The values behind the latest transition.")
    parent: str | None
    started_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    dispatched_at: datetime | None
    handled_at: datetime | None
    closed_at: datetime | None
    silenced: bool = Field(description="An active silence holds its notifications back.")
    silenced_by: list[int]

    @classmethod
    def of(cls, r: AlertRecord) -> AlertOut:
        return cls(
            id=r.id,
            fingerprint=r.fingerprint,
            rule=r.rule,
            domain=r.domain,
            device_id=r.device_id,
            district=r.district,
            level=r.level.label,
            max_level=r.max_level.label,
            condition=r.condition,
            handling=r.handling,
            team=r.team,
            summary=r.summary,
            labels=dict(r.labels),
            values=dict(r.detail),
            parent=r.parent,
            started_at=r.started_at,
            updated_at=r.updated_at,
            resolved_at=r.resolved_at,
            acknowledged_at=r.acknowledged_at,
            dispatched_at=r.dispatched_at,
            handled_at=r.handled_at,
            closed_at=r.closed_at,
            silenced=r.silenced,
            silenced_by=list(r.silenced_by),
        )


class EventOut(BaseModel):
    at: datetime
    actor: str = Field(description="`rules`, a user name, or `link:<actor>` for ack links.")
    dimension: Literal["condition", "handling"]
    from_state: str | None
    to_state: str
    level: str | None
    note: str
    team: str | None = Field(description="On dispatch events: the team it went to.")

    @classmethod
    def of(cls, e: AlertEvent) -> EventOut:
        return cls(
            at=e.at,
            actor=e.actor,
            dimension="handling" if e.dimension == "handling" else "condition",
            from_state=e.from_state,
            to_state=e.to_state,
            level=None if e.level is None else e.level.label,
            note=e.note,
            team=e.team,
        )


class AlertDetailOut(AlertOut):
    timeline: list[EventOut] = Field(description="Condition and handling events, oldest first.")


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int = Field(description="Alerts matching the filters, over all pages.")
    limit: int
    offset: int


class ActionResult(BaseModel):
    changed: bool = Field(description="False when the action was already done (ack twice).")
    message: str
    alert: AlertDetailOut


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoteIn(_Body):
    note: str = Field(default="", max_length=MAX_NOTE, pattern=NO_NUL)


class DispatchIn(_Body):
    team: str = Field(pattern=TEAM_REGEX, description="The team that will act on it.")
    note: str = Field(default="", max_length=MAX_NOTE, pattern=NO_NUL)


class MatcherIO(_Body):
    name: str = Field(max_length=64, examples=["district"], pattern=NO_NUL)
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: str = Field(max_length=MAX_VALUE, examples=["futian"], pattern=NO_NUL)


class SilenceIn(_Body):
    matchers: list[MatcherIO] = Field(min_length=1, max_length=MAX_MATCHERS)
    starts_at: datetime | None = Field(default=None, description="Default: now.")
    ends_at: datetime | None = Field(default=None, description="Give ends_at or duration_s.")
    duration_s: int | None = Field(default=None, ge=60, le=90 * 86400)
    reason: str = Field(min_length=1, max_length=MAX_NOTE, pattern=NO_NUL)


class SilenceOut(BaseModel):
    id: int
    matchers: list[MatcherIO]
    starts_at: datetime
    ends_at: datetime
    author: str
    reason: str
    state: Literal["pending", "active", "expired"]
    expired_at: datetime | None
    expired_by: str | None

    @classmethod
    def of(cls, s: Silence, now: datetime) -> SilenceOut:
        assert s.id is not None
        return cls(
            id=s.id,
            matchers=[MatcherIO(name=m.name, op=m.op.value, value=m.value) for m in s.matchers],
            starts_at=s.starts_at,
            ends_at=s.ends_at,
            author=s.author,
            reason=s.reason,
            state=s.state(now).value,
            expired_at=s.expired_at,
            expired_by=s.expired_by,
        )


class VitalSignOut(BaseModel):
    scope: str = Field(description="A district, or `city`.")
    domain: str
    level: str
    indicators: dict[str, Any]
    at: datetime


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str
    database: Literal["reachable", "unreachable"]
    schema_version: int | None = None
    rules: int | None = Field(default=None, description="Rules with recorded health.")
    rules_with_errors: int | None = None


# --- application ------------------------------------------------------------------------


@dataclass
class _Context:
    pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]]
    clock: Clock
    link_secret: bytes | None
    version: str
    db_timeout: float


def _ctx(request: Request) -> _Context:
    context: _Context = request.app.state.cityvitals
    return context


Ctx = Annotated[_Context, Depends(_ctx)]


@contextmanager
def _connection(ctx: _Context) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    try:
        with ctx.pool.connection(timeout=ctx.db_timeout) as conn:
            yield conn
    except PoolTimeout:
        raise ApiError(503, "unavailable", "the database is busy or down; retry soon") from None


_bearer = HTTPBearer(auto_error=False, description="An API token: `cityvitals tokens create`.")


def _principal(
    ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            "send `Authorization: Bearer <token>`; an operator makes tokens with "
            "`cityvitals tokens create USER`",
        )
    with _connection(ctx) as conn:
        principal = authenticate(conn, credentials.credentials, ctx.clock())
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "the token is not valid: unknown, revoked or expired, or its user is disabled",
        )
    return principal


Caller = Annotated[Principal, Depends(_principal)]


class _BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            response = _error(413, "too_large", f"the request body is over {self.limit} bytes")
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise StarletteHTTPException(413, f"the request body is over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors()[:20]:
        where = ".".join(str(p) for p in e.get("loc", ()))
        out.append({"field": where, "problem": str(e.get("msg", "invalid"))[:300]})
    return out


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.message, headers=headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        fields = _field_errors(exc)
        first = fields[0] if fields else {"field": "?", "problem": "invalid"}
        return _error(
            422,
            "invalid_request",
            f"{first['field']}: {first['problem']}" + (" (and more)" if len(fields) > 1 else ""),
            fields,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    def mapped(status: int, code: str) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def handler(request: Request, exc: Exception) -> Response:
            return _error(status, code, str(exc))

        return handler

    async def database_down(request: Request, exc: Exception) -> Response:
        log.warning("database error on %s: %s", request.url.path, exc)
        return _error(503, "unavailable", "the database is unreachable or failing; retry soon")

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
        return _error(500, "internal", "unexpected error; it is logged with the time")

    async def unstorable(request: Request, exc: Exception) -> Response:
        return _error(422, "invalid_request", "a value cannot be stored (e.g. a NUL character)")

    app.add_exception_handler(psycopg.OperationalError, database_down)
    app.add_exception_handler(psycopg.DataError, unstorable)
    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ForbiddenError, mapped(403, "forbidden"))
    app.add_exception_handler(AlertNotFoundError, mapped(404, "not_found"))
    app.add_exception_handler(TransitionError, mapped(409, "conflict"))
    app.add_exception_handler(HandlingError, mapped(422, "invalid_request"))
    app.add_exception_handler(SilenceError, mapped(422, "invalid_request"))
    app.add_exception_handler(AuthError, mapped(422, "invalid_request"))


def create_app(
    database_url: str,
    *,
    clock: Clock,
    link_secret: bytes | None = None,
    version: str = "0",
    pool_size: int = 8,
    db_timeout: float = 10.0,
) -> FastAPI:
    """The API over the database at `database_url`. `clock` gives the current time
    (the shell passes the wall clock; tests a fixed one). Without `link_secret`,
    ack links answer 503. A request waits at most `db_timeout` seconds for a
    database connection, then answers 503."""
    pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
        database_url,
        min_size=1,
        max_size=pool_size,
        kwargs={"autocommit": True, "connect_timeout": 5},
        open=False,
        name="cityvitals-api",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(
        title="CityVitals API",
        version=version,
        description=(
            "Alerts and their handling (acknowledge, dispatch, handle, close), silences, "
            "city vital signs. Authenticate with `Authorization: Bearer <token>` "
            "(`cityvitals tokens create USER`). Roles: operator (everything), member "
            "(their team's alerts: read, acknowledge, report handled), viewer (read-only)."
        ),
        lifespan=lifespan,
        openapi_tags=[
            {"name": "alerts", "description": "List, inspect and handle alerts."},
            {"name": "silences", "description": "Maintenance windows: no notifications."},
            {"name": "vital signs", "description": "The latest level per district and domain."},
            {"name": "health", "description": "Liveness and the database, without a token."},
            {"name": "ack links", "description": "Signed links in notifications."},
        ],
    )
    app.state.cityvitals = _Context(pool, clock, link_secret, version, db_timeout)
    app.add_middleware(_BodyLimit, limit=MAX_BODY)
    _install_error_handlers(app)
    _routes(app)
    return app


def _alert_detail(conn: psycopg.Connection[Any], alert_id: int, now: datetime) -> AlertDetailOut:
    record = get_alert(conn, alert_id, now)
    if record is None:
        raise AlertNotFoundError(f"alert {alert_id} does not exist")
    timeline = [EventOut.of(e) for e in alert_timeline(conn, alert_id)]
    return AlertDetailOut(**AlertOut.of(record).model_dump(), timeline=timeline)


def _do(
    ctx: _Context,
    caller: Principal,
    alert_id: int,
    action: Action,
    *,
    actor: str | None = None,
    team: str | None = None,
    note: str | None = None,
) -> ActionResult:
    permission = Permission.of(action)
    authorize(caller, permission)

    def guard(status: HandlingStatus) -> None:
        authorize_alert(caller, permission, status.alert_id, status.team)

    now = ctx.clock()
    with _connection(ctx) as conn:
        step = act(
            conn, alert_id, action, actor or caller.name, now, team=team, note=note, guard=guard
        )
        detail = _alert_detail(conn, alert_id, now)
    if step.changed:
        message = f"alert {alert_id}: {step.before.handling.value} → {step.after.handling.value}"
    else:
        message = f"alert {alert_id} was already {step.before.handling.value}; nothing changed"
    log.info("%s by %s: %s", action.value, actor or caller.name, message)
    return ActionResult(changed=step.changed, message=message, alert=detail)


Filter = Annotated[str | None, Query(max_length=MAX_FILTER, pattern=NO_NUL)]
AlertId = Annotated[int, Path(ge=1, le=MAX_ID, description="The alert's id.")]


def _routes(app: FastAPI) -> None:
    @app.get(
        "/alerts",
        tags=["alerts"],
        response_model=AlertPage,
        responses=_ERRORS,
        summary="List and filter alerts",
    )
    def alerts_list(
        ctx: Ctx,
        caller: Caller,
        state: Annotated[Literal["open", "closed", "all"], Query()] = "open",
        handling: Annotated[list[Handling] | None, Query(max_length=5)] = None,
        condition: ConditionState | None = None,
        level: Annotated[
            Literal["blue", "yellow", "orange", "red"] | None,
            Query(description="At least this level."),
        ] = None,
        domain: Filter = None,
        district: Filter = None,
        team: Filter = None,
        rule: Filter = None,
        device_id: Filter = None,
        since: Annotated[datetime | None, Query(description="Started at or after.")] = None,
        until: Annotated[datetime | None, Query(description="Started before.")] = None,
        order: Literal["newest", "oldest", "level", "updated"] = "newest",
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> AlertPage:
        """Alerts, newest first by default. Members see only their team's alerts."""
        authorize(caller, Permission.READ)
        if caller.role is Role.MEMBER:
            if team is not None and team != caller.team:
                raise ForbiddenError(f"{caller.name} sees team {caller.team}'s alerts only")
            team = caller.team
        for value in (since, until):
            if value is not None and value.tzinfo is None:
                raise HandlingError("since and until need a time zone offset, e.g. +08:00")
        f = AlertFilter(
            state=state,
            handling=tuple(handling or ()),
            condition=condition,
            min_level=None if level is None else Level.parse(level),
            domain=domain,
            district=district,
            team=team,
            rule=rule,
            device_id=device_id,
            since=since,
            until=until,
            order=order,
            limit=limit,
            offset=offset,
        )
        with _connection(ctx) as conn:
            records, total = list_alerts(conn, f, ctx.clock())
        return AlertPage(
            items=[AlertOut.of(r) for r in records], total=total, limit=limit, offset=offset
        )

    @app.get(
        "/alerts/{alert_id}",
        tags=["alerts"],
        response_model=AlertDetailOut,
        responses=_ALERT_ERRORS,
        summary="One alert with its timeline",
    )
    def alerts_show(ctx: Ctx, caller: Caller, alert_id: AlertId) -> AlertDetailOut:
        """The alert, whether it is silenced, and every condition and handling event."""
        with _connection(ctx) as conn:
            detail = _alert_detail(conn, alert_id, ctx.clock())
        authorize_alert(caller, Permission.READ, alert_id, detail.team)
        return detail

    @app.post(
        "/alerts/{alert_id}/ack",
        tags=["alerts"],
        response_model=ActionResult,
        responses=_ACTION_ERRORS,
        summary="Acknowledge",
    )
    def alerts_ack(
        ctx: Ctx, caller: Caller, alert_id: AlertId, body: NoteIn | None = None
    ) -> ActionResult:
        """Someone is looking at it. Acknowledging twice changes nothing (`changed: false`)."""
        return _do(ctx, caller, alert_id, Action.ACK, note=body.note if body else None)

    @app.post(
        "/alerts/{alert_id}/dispatch",
        tags=["alerts"],
        response_model=ActionResult,
        responses=_ACTION_ERRORS,
        summary="Dispatch to a team (operators)",
    )
    def alerts_dispatch(
        ctx: Ctx, caller: Caller, alert_id: AlertId, body: DispatchIn
    ) -> ActionResult:
        """Give the alert to a team; from new (implies acknowledged), acknowledged,
        dispatched (to another team) or handled (rework)."""
        return _do(ctx, caller, alert_id, Action.DISPATCH, team=body.team, note=body.note)

    @app.post(
        "/alerts/{alert_id}/handle",
        tags=["alerts"],
        response_model=ActionResult,
        responses=_ACTION_ERRORS,
        summary="Report handled",
    )
    def alerts_handle(ctx: Ctx, caller: Caller, alert_id: AlertId, body: NoteIn) -> ActionResult:
        """The team reports what it did (the note is required); from dispatched only."""
        return _do(ctx, caller, alert_id, Action.HANDLE, note=body.note)

    @app.post(
        "/alerts/{alert_id}/close",
        tags=["alerts"],
        response_model=ActionResult,
        responses=_ACTION_ERRORS,
        summary="Close (operators)",
    )
    def alerts_close(
        ctx: Ctx, caller: Caller, alert_id: AlertId, body: NoteIn | None = None
    ) -> ActionResult:
        """The centre verified it. A note is required unless the alert is handled and its
        condition resolved (e.g. 'false alarm')."""
        return _do(ctx, caller, alert_id, Action.CLOSE, note=body.note if body else None)

    @app.get(
        "/silences",
        tags=["silences"],
        response_model=list[SilenceOut],
        responses=_ERRORS,
        summary="List silences",
    )
    def silences_list(ctx: Ctx, caller: Caller, include_expired: bool = False) -> list[SilenceOut]:
        """Pending and active silences, soonest end first (and expired ones on request)."""
        authorize(caller, Permission.READ)
        now = ctx.clock()
        with _connection(ctx) as conn:
            found = list_silences(conn, now, include_expired)
        return [SilenceOut.of(s, now) for s in found[:1000]]

    @app.post(
        "/silences",
        tags=["silences"],
        response_model=SilenceOut,
        status_code=201,
        responses=_ERRORS,
        summary="Add a silence (operators)",
    )
    def silences_add(ctx: Ctx, caller: Caller, body: SilenceIn) -> SilenceOut:
        """Matched alerts are still recorded and shown as silenced, but not notified."""
        authorize(caller, Permission.SILENCE)
        now = ctx.clock()
        starts = body.starts_at or now
        if any(t is not None and t.tzinfo is None for t in (body.starts_at, body.ends_at)):
            raise SilenceError("starts_at and ends_at need a time zone offset, e.g. +08:00")
        if body.ends_at is not None and body.duration_s is not None:
            raise SilenceError("give ends_at or duration_s, not both")
        if body.ends_at is None and body.duration_s is None:
            raise SilenceError("give ends_at or duration_s (e.g. 7200 for two hours)")
        try:
            ends = body.ends_at or starts + timedelta(seconds=body.duration_s or 0)
        except OverflowError:
            raise SilenceError("starts_at plus duration_s is past the year 9999") from None
        if ends <= now:
            raise SilenceError(f"the silence would end at {ends.isoformat()}, in the past")
        silence = Silence.build(
            [Matcher.build(m.name, m.op, m.value) for m in body.matchers],
            starts,
            ends,
            caller.name,
            body.reason,
        )
        with _connection(ctx) as conn:
            stored = add_silence(conn, silence)
        return SilenceOut.of(stored, now)

    @app.delete(
        "/silences/{silence_id}",
        tags=["silences"],
        response_model=SilenceOut,
        responses={
            **_ERRORS,
            404: {"model": ErrorOut, "description": "No such silence."},
            409: {"model": ErrorOut, "description": "The silence already ended."},
        },
        summary="Expire a silence now (operators)",
    )
    def silences_expire(
        ctx: Ctx,
        caller: Caller,
        silence_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    ) -> SilenceOut:
        authorize(caller, Permission.SILENCE)
        now = ctx.clock()
        with _connection(ctx) as conn:
            try:
                ended = expire_silence(conn, silence_id, caller.name, now)
            except SilenceError as exc:
                if "does not exist" in str(exc):
                    raise ApiError(404, "not_found", str(exc)) from None
                raise ApiError(409, "conflict", str(exc)) from None
        return SilenceOut.of(ended, now)

    @app.get(
        "/vital-signs",
        tags=["vital signs"],
        response_model=list[VitalSignOut],
        responses=_ERRORS,
        summary="Latest city vital signs",
    )
    def vital_signs(
        ctx: Ctx,
        caller: Caller,
        scope: Annotated[
            str | None,
            Query(max_length=64, pattern=NO_NUL, description="A district, or `city`."),
        ] = None,
    ) -> list[VitalSignOut]:
        """The latest level and indicators of every (scope, domain)."""
        authorize(caller, Permission.READ)
        with _connection(ctx) as conn:
            rows = conn.execute(
                "SELECT DISTINCT ON (scope, domain) scope, domain, level, indicators, ts "
                "FROM vital_signs WHERE %(scope)s::text IS NULL OR scope = %(scope)s::text "
                "ORDER BY scope, domain, ts DESC",
                {"scope": scope},
            ).fetchall()
        return [
            VitalSignOut(scope=s, domain=d, level=Level(lv).label, indicators=dict(i), at=ts)
            for s, d, lv, i, ts in rows
        ]

    @app.get(
        "/health",
        tags=["health"],
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "The database is unreachable."}},
        summary="Health (no token)",
    )
    def health(ctx: Ctx) -> Response:
        try:
            with ctx.pool.connection(timeout=min(3.0, ctx.db_timeout)) as conn:
                schema = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
                rules = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE errors > 0) FROM rule_health"
                ).fetchone()
        except (psycopg.Error, PoolTimeout):
            out = HealthOut(status="unavailable", version=ctx.version, database="unreachable")
            return JSONResponse(out.model_dump(), status_code=503)
        out = HealthOut(
            status="ok",
            version=ctx.version,
            database="reachable",
            schema_version=schema[0] if schema else None,
            rules=rules[0] if rules else None,
            rules_with_errors=rules[1] if rules else None,
        )
        return JSONResponse(out.model_dump())

    @app.get(
        "/ack/{token}",
        tags=["ack links"],
        summary="Show an ack link's alert (changes nothing)",
        response_class=HTMLResponse,
        responses=_LINK_ERRORS,
    )
    def ack_link_show(
        ctx: Ctx, request: Request, token: Annotated[str, Path(max_length=512)]
    ) -> Response:
        """A page with the alert and a button that POSTs to the same address. JSON with
        `Accept: application/json`."""
        return _ack_link(ctx, request, token, act_now=False)

    @app.post(
        "/ack/{token}",
        tags=["ack links"],
        summary="Acknowledge through an ack link",
        response_class=HTMLResponse,
        responses=_LINK_ERRORS,
    )
    def ack_link_use(
        ctx: Ctx, request: Request, token: Annotated[str, Path(max_length=512)]
    ) -> Response:
        """Acknowledge as `link:<actor>`. Already acknowledged: 200, nothing changed.
        Expired or altered: 403, nothing changed."""
        return _ack_link(ctx, request, token, act_now=True)


# --- ack links -------------------------------------------------------------------------


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title></head><body style='font-family:sans-serif'>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _ack_link(ctx: _Context, request: Request, token: str, *, act_now: bool) -> Response:
    as_json = _wants_json(request)

    def refuse(status: int, code: str, message: str) -> Response:
        if as_json:
            return _error(status, code, message)
        return _page("Link not usable", f"<p>{html.escape(message)}</p>", status)

    if ctx.link_secret is None:
        return refuse(503, "links_disabled", "ack links are off: set CITYVITALS_LINK_SECRET")
    now = ctx.clock()
    try:
        link = verify(token, ctx.link_secret, now)
    except LinkError as exc:
        return refuse(403, "link_invalid", str(exc))
    actor = f"link:{link.actor}"[:100]
    try:
        with _connection(ctx) as conn:
            if act_now:
                step = act(conn, link.alert_id, Action.ACK, actor, now)
                changed = step.changed
            record = get_alert(conn, link.alert_id, now)
    except AlertNotFoundError:
        return refuse(404, "not_found", f"alert {link.alert_id} does not exist")
    except TransitionError as exc:
        return refuse(409, "conflict", str(exc))
    assert record is not None
    if act_now:
        message = (
            f"alert {record.id} acknowledged by {actor}"
            if changed
            else f"alert {record.id} was already {record.handling.value}; nothing changed"
        )
    else:
        message = f"alert {record.id} is {record.handling.value}"
    if as_json:
        payload: dict[str, Any] = {
            "message": message,
            "alert": AlertOut.of(record).model_dump(mode="json"),
        }
        if act_now:
            payload["changed"] = changed
        return JSONResponse(payload)
    summary = (
        f"<p><b>{html.escape(record.level.label)}</b> · {html.escape(record.domain)} · "
        f"{html.escape(record.district or '')}</p><p>{html.escape(record.summary)}</p>"
        f"<p>{html.escape(message)}</p>"
    )
    if not act_now and record.handling is Handling.NEW:
        summary += "<form method='post'><button type='submit'>Acknowledge</button></form>"
    return _page(f"Alert {record.id}", summary)
