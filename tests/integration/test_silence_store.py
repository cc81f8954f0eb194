"""Silences stored in PostgreSQL: added, listed, expired early, expiring by themselves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from alerts.silence import (
    Matcher,
    Silence,
    SilenceError,
    add_silence,
    expire_silence,
    get_silence,
    list_silences,
)

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def test_add_list_expire(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        a = add_silence(
            conn,
            Silence.build(
                [Matcher.parse("district=futian"), Matcher.parse("device_id=~dr-.*")],
                T0,
                T0 + timedelta(hours=1),
                "duty",
                "pump station maintenance",
            ),
        )
        b = add_silence(
            conn,
            Silence.build(
                [Matcher.parse("rule=noise_night")], T0, T0 + timedelta(hours=3), "duty", "fair"
            ),
        )
        assert a.id is not None and b.id is not None
        assert get_silence(conn, a.id) == a
        assert a.matchers == (Matcher.parse("district=futian"), Matcher.parse("device_id=~dr-.*"))
        assert [s.id for s in list_silences(conn, T0)] == [a.id, b.id]
        # a ends by itself
        assert [s.id for s in list_silences(conn, T0 + timedelta(hours=1))] == [b.id]
        ended = expire_silence(conn, b.id, "supervisor", T0 + timedelta(minutes=10))
        assert ended.expired_by == "supervisor"
        assert list_silences(conn, T0 + timedelta(minutes=10)) == [a]
        assert len(list_silences(conn, T0, include_expired=True)) == 2
        with pytest.raises(SilenceError, match="already ended"):
            expire_silence(conn, b.id, "supervisor", T0 + timedelta(minutes=11))
        with pytest.raises(SilenceError, match="does not exist"):
            expire_silence(conn, 999_999, "supervisor", T0)
