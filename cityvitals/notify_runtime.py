"""Wiring of the notifications: settings → routing, renderer, channels → notifier + sender."""

from __future__ import annotations

from datetime import timedelta

from alerts.channels.registry import ChannelSet
from alerts.channels.smtp import SmtpConfig
from alerts.notifier import Notifier, NotifierConfig
from alerts.outbox import RetryPolicy, Sender
from alerts.render import Renderer
from alerts.route import Routing, load_routing
from cityvitals.api_server import ack_link_base, link_secret
from cityvitals.settings import Settings


def smtp_config(settings: Settings) -> SmtpConfig:
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=settings.smtp_security,
        username=settings.smtp_username,
        password=settings.smtp_password,
        sender=settings.smtp_from,
        timeout=settings.smtp_timeout,
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.notify_max_attempts,
        base=timedelta(seconds=settings.notify_retry_base),
        cap=timedelta(seconds=settings.notify_retry_max),
        lease=timedelta(seconds=settings.notify_lease),
    )


def renderer(settings: Settings) -> Renderer:
    base = ack_link_base(settings)
    return Renderer(
        base,
        link_secret(settings) if base is not None else None,
        timedelta(seconds=settings.link_ttl),
        timezone=settings.timezone,
    )


def make_sender(
    settings: Settings, database_url: str, mqtt_url: str | None, routing: Routing | None = None
) -> Sender:
    routing = routing or load_routing(settings.routing_file)
    return Sender(
        database_url,
        ChannelSet(routing, smtp_config(settings), mqtt_url),
        retry_policy(settings),
        poll_interval=settings.sender_poll_interval,
    )


class Notifications:
    """The notifier (alert events → outbox) and a sender (outbox → channels), as one service."""

    def __init__(self, settings: Settings, database_url: str, mqtt_url: str | None) -> None:
        self.routing = load_routing(settings.routing_file)
        self.sender = make_sender(settings, database_url, mqtt_url, self.routing)
        self.notifier = Notifier(
            database_url,
            NotifierConfig(self.routing, renderer(settings), settings.notify_max_attempts),
            poll_interval=settings.notify_poll_interval,
            on_enqueued=self.sender.wake,
        )

    def start(self) -> None:
        self.sender.start()
        self.notifier.start()

    def stop(self, timeout: float = 30) -> None:
        self.notifier.stop(timeout)
        self.sender.stop(timeout)
