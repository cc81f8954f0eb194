"""The HTTP API over a real uvicorn on loopback, against the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.api import create_app
from alerts.auth import add_user, create_token, disable_user, revoke_token
from alerts.handling import act
from alerts.lifecycle import Action
from alerts.links import ActionLink, sign
from alerts.model import AlertTransition, ConditionState, Level
from alerts.store import record_transitions
from cityvitals.api_server import ApiServer
from tests.support import rows, scalar

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
SECRET = b"test-link-secret-0123456789"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Api:
    url: str
    database: str
    clock: Clock
    tokens: dict[str, str]
    alerts: dict[str, int]

    def client(self, user: str | None = None) -> httpx.Client:
        headers = {} if user is None else {"Authorization": f"Bearer {self.tokens[user]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def snapshot(self) -> list[Any]:
        """Everything an action could change."""
        return [
            rows(self.database, "SELECT * FROM alerts ORDER BY id"),
            rows(self.database, "SELECT * FROM alert_events ORDER BY id"),
            rows(self.database, "SELECT * FROM silences ORDER BY id"),
            rows(self.database, "SELECT name, disabled_at FROM users ORDER BY name"),
        ]


def _alert(conn: psycopg.Connection[Any], fingerprint: str, district: str, level: Level) -> int:
    record_transitions(
        conn,
        [
            AlertTransition(
                fingerprint=fingerprint,
                rule="pipe_fill",
                domain="drainage",
                state=ConditionState.FIRING,
                level=level,
                previous_level=Level.NORMAL,
                at=T0,
                device_id=f"dev-{fingerprint}",
                district=district,
                summary=f"pipe {fingerprint} surcharged",
            )
        ],
    )
    row = conn.execute("SELECT id FROM alerts WHERE fingerprint = %s", (fingerprint,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def api(database: str) -> Iterator[Api]:
    clock = Clock(T0 + timedelta(minutes=1))
    tokens: dict[str, str] = {}
    with psycopg.connect(database, autocommit=True) as conn:
        add_user(conn, "chen", "operator", T0)
        add_user(conn, "li", "member", T0, team="drainage-futian")
        add_user(conn, "zhao", "member", T0, team="flood")
        add_user(conn, "wang", "viewer", T0)
        for user in ("chen", "li", "zhao", "wang"):
            tokens[user] = create_token(conn, user, T0)[1]
        tokens["expiring"] = create_token(conn, "chen", T0, expires_at=T0 + timedelta(hours=1))[1]
        futian = _alert(conn, "a-futian", "futian", Level.ORANGE)
        nanshan = _alert(conn, "a-nanshan", "nanshan", Level.BLUE)
        act(conn, futian, Action.DISPATCH, "chen", T0, team="drainage-futian")
        conn.execute(
            "INSERT INTO vital_signs (ts, scope, domain, level, indicators) VALUES "
            "(%s, 'futian', 'drainage', 3, '{\"pipes_surcharged\": 2}'), "
            "(%s, 'futian', 'drainage', 1, '{}')",
            (T0, T0 - timedelta(hours=1)),
        )
    server = ApiServer(
        create_app(database, clock=clock, link_secret=SECRET, version="t"), "127.0.0.1", 0
    )
    server.start()
    try:
        yield Api(server.url, database, clock, tokens, {"futian": futian, "nanshan": nanshan})
    finally:
        server.stop()


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["status"] == status
    message: str = body["error"]["message"]
    return message


# --- authentication ----------------------------------------------------------------------


def test_no_token_or_bad_tokens_are_401(api: Api) -> None:
    with api.client() as c:
        r = c.get("/alerts")
        assert "Authorization: Bearer" in error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert error(c.post(f"/alerts/{api.alerts['nanshan']}/ack"), 401, "unauthorized")
        good = api.tokens["chen"]
        for bad in (
            "nonsense",
            good[:-1] + ("A" if good[-1] != "A" else "B"),  # right prefix, wrong secret
            "cv_000000000000_" + "x" * 43,  # unknown prefix
            "' OR 1=1 --",
        ):
            r = c.get("/alerts", headers={"Authorization": f"Bearer {bad}"})
            assert "not valid" in error(r, 401, "unauthorized")
        r = c.get("/alerts", headers={"Authorization": f"Basic {good}"})
        error(r, 401, "unauthorized")


def test_revoked_expired_and_disabled_are_401(api: Api) -> None:
    with api.client("expiring") as c:
        assert c.get("/alerts").status_code == 200
        api.clock.now = T0 + timedelta(hours=1)
        error(c.get("/alerts"), 401, "unauthorized")
    with psycopg.connect(api.database, autocommit=True) as conn:
        revoke_token(conn, api.tokens["wang"], T0)
        disable_user(conn, "zhao", T0)
    for user in ("wang", "zhao"):
        with api.client(user) as c:
            error(c.get("/alerts"), 401, "unauthorized")
    with api.client("chen") as c:
        assert c.get("/alerts").status_code == 200
    last_used = scalar(
        api.database,
        "SELECT last_used_at FROM api_tokens WHERE user_name = 'chen' AND expires_at IS NULL",
    )
    assert last_used == T0 + timedelta(hours=1)


# --- authorization -------------------------------------------------------------------------


def test_member_sees_and_acts_on_their_team_only(api: Api) -> None:
    futian, nanshan = api.alerts["futian"], api.alerts["nanshan"]
    with api.client("li") as c:
        page = c.get("/alerts", params={"state": "all"}).json()
        assert [a["id"] for a in page["items"]] == [futian] and page["total"] == 1
        assert "team drainage-futian" in error(
            c.get("/alerts", params={"team": "flood"}), 403, "forbidden"
        )
        assert c.get(f"/alerts/{futian}").status_code == 200
        error(c.get(f"/alerts/{nanshan}"), 403, "forbidden")
        before = api.snapshot()
        msg = error(c.post(f"/alerts/{nanshan}/ack"), 403, "forbidden")
        assert f"alert {nanshan} is not assigned to team drainage-futian" in msg
        error(c.post(f"/alerts/{nanshan}/handle", json={"note": "x"}), 403, "forbidden")
        error(c.post(f"/alerts/{futian}/close", json={"note": "x"}), 403, "forbidden")
        error(
            c.post(f"/alerts/{futian}/dispatch", json={"team": "drainage-futian"}),
            403,
            "forbidden",
        )
        error(
            c.post(
                "/silences",
                json={
                    "matchers": [{"name": "district", "value": "futian"}],
                    "duration_s": 3600,
                    "reason": "x",
                },
            ),
            403,
            "forbidden",
        )
        assert api.snapshot() == before
        r = c.post(f"/alerts/{futian}/handle", json={"note": "pump truck cleared the inlet"})
        assert r.status_code == 200, r.text
        assert r.json()["alert"]["handling"] == "handled"
        assert r.json()["alert"]["timeline"][-1]["actor"] == "li"


def test_viewer_reads_but_cannot_write(api: Api) -> None:
    nanshan = api.alerts["nanshan"]
    with api.client("wang") as c:
        assert c.get("/alerts").json()["total"] == 2
        assert c.get(f"/alerts/{nanshan}").status_code == 200
        assert c.get("/silences").status_code == 200
        assert c.get("/vital-signs").status_code == 200
        before = api.snapshot()
        for path, body in (
            (f"/alerts/{nanshan}/ack", None),
            (f"/alerts/{nanshan}/dispatch", {"team": "flood"}),
            (f"/alerts/{nanshan}/handle", {"note": "x"}),
            (f"/alerts/{nanshan}/close", {"note": "x"}),
            (
                "/silences",
                {"matchers": [{"name": "rule", "value": "x"}], "duration_s": 600, "reason": "x"},
            ),
        ):
            assert "viewer" in error(c.post(path, json=body), 403, "forbidden")
        error(c.delete("/silences/1"), 403, "forbidden")
        assert api.snapshot() == before


# --- the operator's flow ---------------------------------------------------------------------


def test_operator_flow_and_timeline(api: Api) -> None:
    nanshan = api.alerts["nanshan"]
    with api.client("chen") as c:
        r = c.post(f"/alerts/{nanshan}/ack", json={"note": "looking"})
        assert r.status_code == 200 and r.json()["changed"] is True
        again = c.post(f"/alerts/{nanshan}/ack")
        assert (
            again.json()["changed"] is False and "already acknowledged" in again.json()["message"]
        )
        error(c.post(f"/alerts/{nanshan}/handle", json={"note": "done"}), 409, "conflict")
        assert c.post(f"/alerts/{nanshan}/dispatch", json={"team": "flood"}).status_code == 200
        assert "note is required" in error(
            c.post(f"/alerts/{nanshan}/handle", json={"note": ""}), 422, "invalid_request"
        )
        assert c.post(f"/alerts/{nanshan}/handle", json={"note": "cleared"}).status_code == 200
        assert "still firing" in error(c.post(f"/alerts/{nanshan}/close"), 422, "invalid_request")
        r = c.post(f"/alerts/{nanshan}/close", json={"note": "verified on camera"})
        assert r.json()["alert"]["handling"] == "closed"
        error(c.post(f"/alerts/{nanshan}/ack"), 409, "conflict")
        detail = c.get(f"/alerts/{nanshan}").json()
        assert [(e["actor"], e["to_state"], e["team"]) for e in detail["timeline"]] == [
            ("rules", "firing", None),
            ("chen", "acknowledged", None),
            ("chen", "dispatched", "flood"),
            ("chen", "handled", None),
            ("chen", "closed", None),
        ]
        error(c.get("/alerts/999999"), 404, "not_found")
        closed = c.get("/alerts", params={"state": "closed"}).json()
        assert [a["id"] for a in closed["items"]] == [nanshan]
        assert c.get("/alerts", params={"level": "orange"}).json()["total"] == 1
        assert c.get("/alerts", params={"handling": ["dispatched", "new"]}).json()["total"] == 1


def test_silences_and_silenced_flag(api: Api) -> None:
    futian = api.alerts["futian"]
    with api.client("chen") as c:
        r = c.post(
            "/silences",
            json={
                "matchers": [
                    {"name": "district", "value": "futian"},
                    {"name": "rule", "op": "=~", "value": "pipe.*"},
                ],
                "duration_s": 7200,
                "reason": "pump station maintenance",
            },
        )
        assert r.status_code == 201, r.text
        silence = r.json()
        assert silence["author"] == "chen" and silence["state"] == "active"
        detail = c.get(f"/alerts/{futian}").json()
        assert detail["silenced"] is True and detail["silenced_by"] == [silence["id"]]
        listed = {a["id"]: a["silenced"] for a in c.get("/alerts").json()["items"]}
        assert listed == {futian: True, api.alerts["nanshan"]: False}
        assert [s["id"] for s in c.get("/silences").json()] == [silence["id"]]
        ended = c.delete(f"/silences/{silence['id']}")
        assert ended.status_code == 200 and ended.json()["expired_by"] == "chen"
        error(c.delete(f"/silences/{silence['id']}"), 409, "conflict")
        error(c.delete("/silences/424242"), 404, "not_found")
        assert c.get(f"/alerts/{futian}").json()["silenced"] is False
        bad = c.post(
            "/silences",
            json={
                "matchers": [{"name": "rule", "op": "=~", "value": "("}],
                "duration_s": 600,
                "reason": "x",
            },
        )
        assert "not a regex" in error(bad, 422, "invalid_request")
        for when in (
            {"starts_at": "9999-12-31T23:00:00Z", "duration_s": 7200},
            {"ends_at": "2026-06-30T00:00:00Z"},
            {"starts_at": "2026-07-01T09:00:00", "duration_s": 600},
        ):
            r = c.post(
                "/silences",
                json={"matchers": [{"name": "rule", "value": "x"}], "reason": "x", **when},
            )
            error(r, 422, "invalid_request")
        error(
            c.post("/silences", json={"matchers": [], "duration_s": 600, "reason": "x"}),
            422,
            "invalid_request",
        )


def test_vital_signs_and_health(api: Api) -> None:
    with api.client("wang") as c:
        signs = c.get("/vital-signs").json()
        assert signs == [
            {
                "scope": "futian",
                "domain": "drainage",
                "level": "orange",
                "indicators": {"pipes_surcharged": 2},
                "at": "2026-07-01T08:00:00Z",
            }
        ]
        assert c.get("/vital-signs", params={"scope": "nanshan"}).json() == []
    with api.client() as c:
        health = c.get("/health").json()
        assert health["status"] == "ok" and health["database"] == "reachable"
        assert health["schema_version"] >= 5
        openapi = c.get("/openapi.json").json()
        assert {"/alerts", "/alerts/{alert_id}/dispatch", "/silences", "/ack/{token}"} <= set(
            openapi["paths"]
        )


# --- hostile input -----------------------------------------------------------------------------

INJECTIONS = [
    "futian' OR '1'='1",
    "x'; DROP TABLE alerts; --",
    "1; UPDATE alerts SET handling='closed'",
    "\\x00",
    "%' UNION SELECT secret_hash FROM api_tokens --",
]


def test_injection_and_oversized_inputs_change_nothing(api: Api) -> None:
    futian = api.alerts["futian"]
    before = api.snapshot()
    with api.client("chen") as c:
        for value in INJECTIONS:
            for name in ("district", "domain", "team", "rule", "device_id"):
                r = c.get("/alerts", params={name: value, "state": "all"})
                assert r.status_code == 200 and r.json()["total"] == 0, (name, value, r.text)
            r = c.get("/alerts", params={"order": value})
            error(r, 422, "invalid_request")
            error(c.get("/alerts", params={"limit": value}), 422, "invalid_request")
            error(
                c.post(f"/alerts/{futian}/dispatch", json={"team": value}), 422, "invalid_request"
            )
        error(c.get("/alerts", params={"district": "x" * 129}), 422, "invalid_request")
        error(c.get("/alerts", params={"limit": 100_000}), 422, "invalid_request")
        error(c.get("/alerts", params={"offset": -1}), 422, "invalid_request")
        error(c.get("/alerts", params={"since": "yesterday"}), 422, "invalid_request")
        error(c.get("/alerts/1'%20OR%201=1"), 422, "invalid_request")
        error(c.get(f"/alerts/{2**70}"), 422, "invalid_request")
        error(c.post(f"/alerts/{futian}/handle", json={"note": "x" * 2001}), 422, "invalid_request")
        error(
            c.post(f"/alerts/{futian}/handle", json={"note": "x", "handling": "closed"}),
            422,
            "invalid_request",
        )
        error(
            c.post(
                f"/alerts/{futian}/handle",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            422,
            "invalid_request",
        )
        big = b'{"note": "' + b"x" * (70 * 1024) + b'"}'
        error(
            c.post(
                f"/alerts/{futian}/handle",
                content=big,
                headers={"content-type": "application/json"},
            ),
            413,
            "too_large",
        )

        def chunks() -> Iterator[bytes]:
            yield b'{"note": "'
            for _ in range(80):
                yield b"x" * 1024
            yield b'"}'

        error(
            c.post(
                f"/alerts/{futian}/handle",
                content=chunks(),
                headers={"content-type": "application/json"},
            ),
            413,
            "too_large",
        )
        assert api.snapshot() == before
        # as plain data, an injection string in a note is stored verbatim and harms nothing
        r = c.post(f"/alerts/{futian}/handle", json={"note": INJECTIONS[1]})
        assert r.status_code == 200
        assert r.json()["alert"]["timeline"][-1]["note"] == INJECTIONS[1]
    assert scalar(api.database, "SELECT count(*) FROM alerts") == 2


# --- ack links ------------------------------------------------------------------------------------


def test_ack_link(api: Api) -> None:
    nanshan = api.alerts["nanshan"]
    token = sign(ActionLink(nanshan, "ack", T0 + timedelta(hours=4), "flood-duty"), SECRET)
    json_ = {"Accept": "application/json"}
    with api.client() as c:
        before = api.snapshot()
        page = c.get(f"/ack/{token}")
        assert page.status_code == 200 and "<form method='post'>" in page.text
        assert c.get(f"/ack/{token}", headers=json_).json()["alert"]["handling"] == "new"
        assert api.snapshot() == before  # looking changes nothing
        r = c.post(f"/ack/{token}", headers=json_)
        assert r.status_code == 200 and r.json()["changed"] is True
        assert r.json()["alert"]["handling"] == "acknowledged"
        again = c.post(f"/ack/{token}", headers=json_)
        assert again.status_code == 200 and again.json()["changed"] is False
        assert "already acknowledged" in again.json()["message"]
        assert "already acknowledged" in c.post(f"/ack/{token}").text
    events = rows(
        api.database,
        "SELECT actor, to_state FROM alert_events WHERE alert_id = %s AND dimension = 'handling'",
        nanshan,
    )
    assert events == [("link:flood-duty", "acknowledged")]


def test_expired_or_tampered_ack_links_change_nothing(api: Api) -> None:
    nanshan = api.alerts["nanshan"]
    token = sign(ActionLink(nanshan, "ack", T0 + timedelta(hours=4), "flood-duty"), SECRET)
    alert_id, action, expires, actor, signature = token.split(".")
    other = api.alerts["futian"]
    tampered = [
        ".".join((str(other), action, expires, actor, signature)),  # another alert
        ".".join((alert_id, action, str(int(expires) + 86400), actor, signature)),  # longer
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        sign(ActionLink(nanshan, "ack", T0 + timedelta(hours=4), "x"), b"another-secret-16bytes"),
        "garbage",
        "x" * 600,
    ]
    before = api.snapshot()
    with api.client() as c:
        for bad in tampered:
            r = c.post(f"/ack/{bad}", headers={"Accept": "application/json"})
            assert r.status_code in (403, 422), (bad, r.text)
            assert r.json()["error"]["code"] in ("link_invalid", "invalid_request")
            assert c.post(f"/ack/{bad}").status_code in (403, 422)
        api.clock.now = T0 + timedelta(hours=4)
        r = c.post(f"/ack/{token}", headers={"Accept": "application/json"})
        assert "expired" in error(r, 403, "link_invalid")
        page = c.post(f"/ack/{token}")
        assert page.status_code == 403 and "expired" in page.text
    assert api.snapshot() == before


def test_database_down_is_a_clean_503() -> None:
    app = create_app(
        "postgresql://nobody@127.0.0.1:9/none", clock=Clock(T0), link_secret=SECRET, db_timeout=1
    )
    server = ApiServer(app, "127.0.0.1", 0)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            r = c.get("/health")
            assert r.status_code == 503 and r.json()["database"] == "unreachable"
            r = c.get("/alerts", headers={"Authorization": "Bearer cv_0123456789ab_" + "x" * 43})
            assert "retry" in error(r, 503, "unavailable")
    finally:
        server.stop()


def test_ack_links_off_without_a_secret(database: str) -> None:
    server = ApiServer(create_app(database, clock=Clock(T0), link_secret=None), "127.0.0.1", 0)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            token = sign(ActionLink(1, "ack", T0 + timedelta(hours=1), "x"), SECRET)
            r = c.post(f"/ack/{token}", headers={"Accept": "application/json"})
            assert "CITYVITALS_LINK_SECRET" in error(r, 503, "links_disabled")
    finally:
        server.stop()


def test_nul_characters_are_refused_cleanly(api: Api) -> None:
    futian = api.alerts["futian"]
    before = api.snapshot()
    with api.client("chen") as c:
        assert "district" in error(
            c.get("/alerts", params={"district": "fu\x00tian"}), 422, "invalid_request"
        )
        error(c.get("/vital-signs", params={"scope": "\x00"}), 422, "invalid_request")
        assert "note" in error(
            c.post(f"/alerts/{futian}/handle", json={"note": "done\x00"}), 422, "invalid_request"
        )
        silence = {
            "matchers": [{"name": "district", "value": "a\x00"}],
            "duration_s": 600,
            "reason": "x",
        }
        error(c.post("/silences", json=silence), 422, "invalid_request")
        assert c.get("/health").status_code == 200  # the server is unharmed
    assert api.snapshot() == before


HOSTILE = [*INJECTIONS, "\x00", "a\x00b", "x" * 5000, "\u202e", "💧" * 100, "%00", "../../"]
_text = st.one_of(
    st.sampled_from(HOSTILE), st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    field=st.sampled_from(
        [
            "domain",
            "district",
            "team",
            "rule",
            "device_id",
            "order",
            "level",
            "state",
            "condition",
            "handling",
            "since",
            "limit",
        ]
    ),
    value=_text,
    note=_text,
)
def test_any_text_in_filters_and_notes_is_answered_cleanly(
    api: Api, field: str, value: str, note: str
) -> None:
    """Whatever the text: 200 or a 4xx in the error shape, never a 500; a refused
    note changes nothing."""
    nanshan = api.alerts["nanshan"]
    with api.client("chen") as c:
        r = c.get(
            "/alerts", params={field: value, "state": "all"} if field != "state" else {field: value}
        )
        assert r.status_code in (200, 422), r.text
        if r.status_code == 422:
            assert r.json()["error"]["code"] == "invalid_request"
        before = api.snapshot()
        r = c.post(f"/alerts/{nanshan}/dispatch", json={"team": value, "note": note})
        assert r.status_code in (200, 409, 422), r.text
        if r.status_code != 200:
            assert "error" in r.json() and api.snapshot() == before


_json = st.recursive(
    # NaN and infinity are not JSON: the client cannot send them (raw bodies: below).
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_silence_like = st.fixed_dictionaries(
    {},
    optional={
        "matchers": st.lists(
            st.fixed_dictionaries({"name": _text, "op": _text, "value": _text}), max_size=3
        ),
        "starts_at": _text | st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
        "ends_at": _text | st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
        "duration_s": st.integers(),
        "reason": _text,
    },
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(
        [
            "/silences",
            "/alerts/{id}/close",
            "/alerts/{id}/dispatch",
            "/alerts/{id}/handle",
            "/alerts/{id}/ack",
        ]
    ),
    body=_json | _silence_like,
)
def test_any_json_body_is_answered_cleanly(api: Api, path: str, body: Any) -> None:
    with api.client("chen") as c:
        r = c.post(path.format(id=api.alerts["nanshan"]), json=body)
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            assert set(r.json()) == {"error"}


@pytest.mark.parametrize(
    "raw", [b'{"note": NaN}', b'{"note": Infinity}', b"{", b"\xff\xfe", b'"' + b"x" * 100_000]
)
def test_raw_bodies_that_are_not_json_are_answered_cleanly(api: Api, raw: bytes) -> None:
    with api.client("chen") as c:
        r = c.post(
            f"/alerts/{api.alerts['nanshan']}/handle",
            content=raw,
            headers={"content-type": "application/json"},
        )
        assert 400 <= r.status_code < 500, r.text
        assert set(r.json()) == {"error"}
