"""The channels of every team in a routing file, built once and reused by the sender."""

from __future__ import annotations

from alerts.channels import Channel, Envelope, Result
from alerts.channels.apprise_url import AppriseChannel
from alerts.channels.mqtt import MqttChannel, MqttPublisher
from alerts.channels.smtp import EmailChannel, SmtpConfig
from alerts.channels.webhook import WebhookChannel
from alerts.route import (
    AppriseChannel as AppriseSpec,
)
from alerts.route import (
    EmailChannel as EmailSpec,
)
from alerts.route import (
    MqttChannel as MqttSpec,
)
from alerts.route import (
    Routing,
    RoutingError,
)
from alerts.route import (
    WebhookChannel as WebhookSpec,
)


class ChannelSet:
    def __init__(
        self, routing: Routing, smtp: SmtpConfig | None = None, mqtt_url: str | None = None
    ) -> None:
        self.routing = routing
        self.smtp = smtp or SmtpConfig()
        self.mqtt_url = mqtt_url
        self._built: dict[tuple[str, str], Channel] = {}
        self._publisher: MqttPublisher | None = None

    def _build(self, team: str, name: str) -> Channel | Result:
        spec_team = self.routing.teams.get(team)
        if spec_team is None:
            return Result.permanent(f"team {team!r} is no longer in the routing file")
        spec = dict(spec_team.named_channels()).get(name)
        if spec is None:
            return Result.permanent(f"team {team!r} has no channel {name!r} any more")
        try:
            if isinstance(spec, WebhookSpec):
                return WebhookChannel(spec.url, spec.key(), spec.timeout.total_seconds())
            if isinstance(spec, EmailSpec):
                return EmailChannel(self.smtp, spec.to)
            if isinstance(spec, MqttSpec):
                if self.mqtt_url is None:
                    return Result.permanent("no MQTT broker configured for MQTT channels")
                if self._publisher is None:
                    self._publisher = MqttPublisher(self.mqtt_url)
                return MqttChannel(self._publisher, spec.topic, spec.retain)
            if isinstance(spec, AppriseSpec):
                return AppriseChannel(spec.resolved_url())
        except RoutingError as exc:
            return Result.permanent(str(exc))
        return Result.permanent(f"channel type of {team}/{name} is not known")

    def send(self, team: str, name: str, envelope: Envelope) -> Result:
        channel = self._built.get((team, name))
        if channel is None:
            built = self._build(team, name)
            if isinstance(built, Result):
                return built
            channel = self._built[(team, name)] = built
        return channel.send(envelope)

    def close(self) -> None:
        for channel in self._built.values():
            channel.close()
        self._built.clear()
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
