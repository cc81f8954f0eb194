"""Messages from templates: group notices, escalations and dispatches, in Chinese or English.

Templates live in `alerts/templates/` as `{kind}.{language}.j2`; the first line
a template renders is the subject, the rest the body (plain text that reads
well in e-mail, a bot message or a control-room display). Each message also
carries structured data for the webhook and MQTT channels. Each firing alert
gets a signed, expiring acknowledge link (`alerts.links`) when the deployment
has a public URL and a link secret. Pure: `now` is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

from alerts.escalation import Step
from alerts.group import AlertSnapshot, GroupNotice
from alerts.links import ActionLink, sign
from alerts.model import Level
from devices.durations import format_duration

TEMPLATES = Path(__file__).parent / "templates"
MAX_LISTED = 20
"""A group message lists at most this many alerts, then says how many more."""

LEVEL_ZH = {0: "正常", 1: "蓝色", 2: "黄色", 3: "橙色", 4: "红色"}
LEVEL_EN = {0: "Normal", 1: "Blue", 2: "Yellow", 3: "Orange", 4: "Red"}
DOMAIN_ZH = {
    "drainage": "排水",
    "hydrology": "水文防汛",
    "meteorology": "气象",
    "air": "空气质量",
    "noise": "噪声",
    "elevator": "电梯",
    "device_health": "设备健康",
}


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    body: str
    data: Mapping[str, Any]
    """Structured form for machines (webhook JSON, MQTT payload)."""

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "body": self.body, "data": dict(self.data)}


def _level(value: int) -> dict[str, Any]:
    level = Level(int(value))
    return {
        "value": int(level),
        "label": level.label,
        "name_zh": LEVEL_ZH[int(level)],
        "name_en": LEVEL_EN[int(level)],
        "grade": level.grade or "-",
        "grade_en": (level.grade or "-").split()[0],
        "colour": level.colour,
    }


def _values_text(values: Mapping[str, Any], limit: int = 6) -> str:
    parts = []
    for k, v in list(values.items())[:limit]:
        if isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k}={v}")
    return ", ".join(parts)


class Renderer:
    def __init__(
        self,
        public_url: str | None = None,
        link_secret: bytes | None = None,
        link_ttl: timedelta = timedelta(hours=24),
        max_listed: int = MAX_LISTED,
        templates: Path = TEMPLATES,
        timezone: str = "Asia/Shanghai",
    ) -> None:
        self.public_url = public_url.rstrip("/") if public_url else None
        self.link_secret = link_secret
        self.link_ttl = link_ttl
        self.max_listed = max_listed
        self.zone = ZoneInfo(timezone)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(templates),
            autoescape=False,  # plain text; the webhook and MQTT carry data as JSON
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )

    def ack_url(self, alert_id: int, actor: str, now: datetime) -> str | None:
        if not self.public_url or not self.link_secret:
            return None
        token = sign(ActionLink(alert_id, "ack", now + self.link_ttl, actor), self.link_secret)
        return f"{self.public_url}/ack/{token}"

    def _alert(
        self, a: AlertSnapshot, actor: str, now: datetime, new: bool = False
    ) -> dict[str, Any]:
        district = a.district or "-"
        device = a.device_name or a.device_id
        where = f"{district} {device}" if device else district
        if a.lat is not None and a.lon is not None:
            where += f" ({a.lat:.5f}, {a.lon:.5f})"
        return {
            "alert_id": a.alert_id,
            "state": a.state,
            "firing": a.firing,
            "new": new,
            "level": _level(a.level),
            "rule": a.rule,
            "domain": a.domain,
            "district": a.district,
            "device_id": a.device_id,
            "device_name": a.device_name,
            "lat": a.lat,
            "lon": a.lon,
            "summary": a.summary,
            "values": dict(a.values),
            "values_text": _values_text(a.values),
            "labels": dict(a.labels),
            "started_at": a.started_at,
            "started_local": self._local(a.started_at),
            "place_zh": where,
            "place_en": where,
            "ack_url": self.ack_url(a.alert_id, actor, now) if a.firing else None,
        }

    def _local(self, iso: str) -> str:
        """The city's local time, as people on the ground read it: 2026-07-20 20:03 +08:00."""
        try:
            t = datetime.fromisoformat(iso).astimezone(self.zone)
        except ValueError:
            return iso
        offset = t.strftime("%z")
        return f"{t:%Y-%m-%d %H:%M} {offset[:3]}:{offset[3:]}"

    def _render(self, name: str, context: Mapping[str, Any]) -> tuple[str, str]:
        text = self.env.get_template(name).render(context)
        subject, _, body = text.partition("\n")
        lines = [line.rstrip() for line in body.strip("\n").splitlines()]
        # Collapse the blank lines the template's loops leave behind.
        out: list[str] = []
        for line in lines:
            if line or (out and out[-1]):
                out.append(line)
        return subject.strip(), "\n".join(out).strip() + "\n"

    def group(self, notice: GroupNotice, team: str, language: str, now: datetime) -> Message:
        listed = notice.alerts[: self.max_listed]
        shown = [self._alert(a, team, now, a.alert_id in notice.new) for a in listed]
        domains = sorted({a.domain for a in notice.alerts})
        districts = sorted({a.district or "-" for a in notice.alerts})
        if language == "zh":
            title = "、".join(DOMAIN_ZH.get(d, d) for d in domains) + " · " + "、".join(districts)
        else:
            title = ", ".join(domains) + " · " + ", ".join(districts)
        context = {
            "kind": notice.kind.value,
            "level": _level(notice.level),
            "team": team,
            "title": title,
            "firing": notice.firing,
            "resolved": notice.resolved,
            "shown": shown,
            "more": len(notice.alerts) - len(listed),
            "group_id": notice.group_id,
            "seq": notice.seq,
        }
        subject, body = self._render(f"group.{language}.j2", context)
        data = {
            "kind": notice.kind.value,
            "team": team,
            "group": {
                "id": notice.group_id,
                "key": notice.group_key,
                "route": notice.route_id,
                "labels": dict(notice.labels),
                "seq": notice.seq,
            },
            "level": _level(notice.level),
            "firing": len(notice.firing),
            "resolved": len(notice.resolved),
            "alerts": [self._strip(a) for a in shown],
            "more": len(notice.alerts) - len(listed),
        }
        return Message(subject, body, data)

    @staticmethod
    def _strip(alert: Mapping[str, Any]) -> dict[str, Any]:
        hidden = ("place_zh", "place_en", "values_text", "started_local")
        return {k: v for k, v in alert.items() if k not in hidden}

    def escalation(
        self,
        alert: AlertSnapshot,
        step: Step,
        team: str,
        handling: str,
        owner: str | None,
        language: str,
        now: datetime,
    ) -> Message:
        a = self._alert(alert, team, now)
        unless = step.after.unless
        context = {
            "a": a,
            "level": _level(int(step.level)),
            "team": team,
            "owner": owner,
            "handling": handling,
            "waited": format_duration(step.after.after),
            "reason_zh": "未确认" if unless == "acknowledged" else "未处置完成",
            "reason_en": "not acknowledged" if unless == "acknowledged" else "not handled",
            "stage": step.stage + 1,
        }
        subject, body = self._render(f"escalation.{language}.j2", context)
        data = {
            "kind": "escalation",
            "team": team,
            "level": _level(int(step.level)),
            "stage": step.stage + 1,
            "unless": unless,
            "after_seconds": step.after.after.total_seconds(),
            "owner": owner,
            "handling": handling,
            "alerts": [self._strip(a)],
        }
        return Message(subject, body, data)

    def dispatch(
        self, alert: AlertSnapshot, team: str, note: str, language: str, now: datetime
    ) -> Message:
        a = self._alert(alert, team, now)
        context = {"a": a, "level": _level(alert.level), "team": team, "note": note}
        subject, body = self._render(f"dispatch.{language}.j2", context)
        data = {
            "kind": "dispatch",
            "team": team,
            "level": _level(alert.level),
            "note": note,
            "alerts": [self._strip(a)],
        }
        return Message(subject, body, data)
