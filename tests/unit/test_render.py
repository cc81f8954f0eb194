"""Message templates in Chinese and English, with level colour, place, values and ack links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.escalation import Step
from alerts.group import AlertSnapshot, GroupNotice, NoticeKind
from alerts.links import LinkError, verify
from alerts.model import Level
from alerts.render import Renderer
from alerts.route import EscalationStage

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
SECRET = b"a-link-secret-of-32-bytes-length"


def snap(i: int, level: int = 3, state: str = "firing") -> AlertSnapshot:
    return AlertSnapshot(
        i,
        state,
        level,
        "drainage_fill",
        "drainage",
        "futian",
        f"dr-{i:03d}",
        f"Manhole dr-{i:03d} fill 93%",
        T0.isoformat(),
        {"team": "drainage"},
        {"fill_pct": 93.25, "level_m": 1.2345678},
        f"Shennan Rd #{i}",
        22.54321,
        114.05678,
    )


def notice(alerts: list[AlertSnapshot], kind: NoticeKind = NoticeKind.FIRING) -> GroupNotice:
    return GroupNotice(
        "drainage|district=futian",
        "abc-1",
        "drainage",
        "drainage",
        {"district": "futian"},
        kind,
        1,
        tuple(alerts),
        frozenset(a.alert_id for a in alerts),
    )


@pytest.fixture
def renderer() -> Renderer:
    return Renderer("https://cv.example.org/", SECRET, timedelta(hours=2), max_listed=5)


def test_chinese_group_message(renderer: Renderer) -> None:
    m = renderer.group(notice([snap(1, 4), snap(2)]), "drainage", "zh", T0)
    assert m.subject == "红色预警 · 排水 · futian · 2条告警"
    assert "I 特别严重" in m.body and Level.RED.colour in m.body
    assert "Shennan Rd #1 (22.54321, 114.05678)" in m.body
    assert "fill_pct=93.25" in m.body and "level_m=1.235" in m.body
    assert "确认接警：https://cv.example.org/ack/" in m.body
    assert m.data["level"]["colour"] == Level.RED.colour and m.data["firing"] == 2


def test_english_group_message_lists_at_most_max_and_says_how_many_more(
    renderer: Renderer,
) -> None:
    m = renderer.group(notice([snap(i) for i in range(12)]), "drainage", "en", T0)
    assert m.subject == "Orange alert · drainage · futian · 12 firing"
    assert "grade II" in m.body and "… and 7 more." in m.body
    assert m.body.count("acknowledge: ") == 5
    assert len(m.data["alerts"]) == 5 and m.data["more"] == 7


def test_ack_links_are_signed_expire_and_name_the_team(renderer: Renderer) -> None:
    m = renderer.group(notice([snap(7)]), "drainage", "en", T0)
    url = m.data["alerts"][0]["ack_url"]
    token = url.removeprefix("https://cv.example.org/ack/")
    link = verify(token, SECRET, T0 + timedelta(hours=1))
    assert (link.alert_id, link.action, link.actor) == (7, "ack", "drainage")
    with pytest.raises(LinkError, match="expired"):
        verify(token, SECRET, T0 + timedelta(hours=2))
    with pytest.raises(LinkError):
        verify(token, b"another-secret-of-enough-length", T0)


def test_no_links_without_a_public_url_or_secret() -> None:
    m = Renderer().group(notice([snap(1)]), "drainage", "en", T0)
    assert "acknowledge" not in m.body and m.data["alerts"][0]["ack_url"] is None


def test_resolved_notices(renderer: Renderer) -> None:
    resolved = [snap(1, state="resolved")]
    zh = renderer.group(notice(resolved, NoticeKind.RESOLVED), "drainage", "zh", T0)
    en = renderer.group(notice(resolved, NoticeKind.RESOLVED), "drainage", "en", T0)
    assert zh.subject.startswith("【已解除】") and "已解除" in zh.body
    assert en.subject.startswith("[RESOLVED]") and "(resolved)" in en.body
    assert "ack/" not in zh.body + en.body


def test_escalation_and_dispatch(renderer: Renderer) -> None:
    stage = EscalationStage(after=timedelta(minutes=5), unless="acknowledged", notify="duty")
    zh = renderer.escalation(
        snap(3, 4), Step(3, 0, Level.RED, stage), "duty", "new", "drainage", "zh", T0
    )
    assert zh.subject.startswith("【升级】红色预警未确认") and "升级通知：duty" in zh.body
    en = renderer.escalation(
        snap(3, 4), Step(3, 0, Level.RED, stage), "duty", "new", None, "en", T0
    )
    assert "not acknowledged after 5m" in en.body and "owner: unassigned" in en.body
    d = renderer.dispatch(snap(3), "drainage", "pump truck 2 on its way", "en", T0)
    assert d.subject.startswith("[DISPATCHED] Orange alert")
    assert "pump truck 2 on its way" in d.body and "/ack/" in d.body


def test_times_are_shown_in_the_city_s_local_time(renderer: Renderer) -> None:
    m = renderer.group(notice([snap(1)]), "drainage", "zh", T0)
    assert "开始：2026-07-01 16:00 +08:00" in m.body
    assert m.data["alerts"][0]["started_at"] == T0.isoformat()
    utc = Renderer(timezone="UTC").group(notice([snap(1)]), "drainage", "en", T0)
    assert "since: 2026-07-01 08:00 +00:00" in utc.body
