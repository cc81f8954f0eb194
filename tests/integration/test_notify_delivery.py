"""Delivery through the outbox to real receivers on loopback: a webhook server, an SMTP
server and an MQTT subscriber. Channels down for a while then up, a sender killed
mid-send: every notification arrives, and none twice except where documented."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from alerts.channels import Envelope, Outcome
from alerts.channels.registry import ChannelSet
from alerts.channels.smtp import SmtpConfig
from alerts.channels.webhook import WebhookChannel, signature, verify
from alerts.model import AlertTransition, ConditionState, Level
from alerts.notifier import Notifier, NotifierConfig
from alerts.outbox import RetryPolicy, Sender
from alerts.render import Renderer
from alerts.route import load_routing
from alerts.store import record_transitions
from cityvitals.services import LocalMosquitto
from tests.receivers import MqttSubscriber, SmtpReceiver, WebhookReceiver
from tests.support import rows, scalar, wait_until

pytestmark = pytest.mark.slow

SECRET = "webhook-secret-0123456789"
T0 = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(SECRET.encode()).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpReceiver]:
    receiver = SmtpReceiver().start()
    yield receiver
    receiver.stop()


def write_routing(path: Path, channels: list[dict[str, Any]]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "drain",
                    "group_by": ["district"],
                    "group_wait": "0s",
                },
                "teams": {"drain": {"language": "en", "channels": channels}},
            }
        )
    )
    return path


def fill_outbox(database: str, routing_path: Path, districts: int) -> int:
    """One firing alert in each of `districts` districts → one group message per channel."""
    with psycopg.connect(database) as conn:
        record_transitions(
            conn,
            [
                AlertTransition(
                    f"dr-{i}",
                    "drainage_fill",
                    "drainage",
                    ConditionState.FIRING,
                    Level.ORANGE,
                    Level.NORMAL,
                    T0,
                    f"dr-{i}",
                    f"d{i:02d}",
                    f"manhole dr-{i} full",
                )
                for i in range(districts)
            ],
        )
    config = NotifierConfig(load_routing(routing_path), Renderer(), gap_wait=timedelta(0))
    notifier = Notifier(database, config)
    added = notifier.step()
    assert notifier._conn is not None
    notifier._conn.close()
    return added


FAST = RetryPolicy(
    max_attempts=200,
    base=timedelta(seconds=0.1),
    cap=timedelta(seconds=0.4),
    lease=timedelta(seconds=30),
)


def statuses(database: str) -> dict[str, int]:
    return dict(rows(database, "SELECT status, count(*) FROM notifications GROUP BY status"))


def test_channels_down_then_up_deliver_every_notification_exactly_once(
    database: str,
    webhook: WebhookReceiver,
    smtp: SmtpReceiver,
    tmp_path: Path,
) -> None:
    # A broker of the test's own, so it can be taken down without disturbing others.
    broker = LocalMosquitto(tmp_path / "mq")
    broker.start()
    topic = "control-room/drain"
    subscriber = MqttSubscriber("127.0.0.1", broker.port, topic, persistent=True)
    try:
        assert subscriber.subscribed.wait(10)
        path = write_routing(
            tmp_path / "routing.yaml",
            [
                {"type": "webhook", "url": webhook.url, "secret": SECRET, "timeout": "2s"},
                {"type": "email", "to": ["drain@example.org"]},
                {"type": "mqtt", "topic": topic},
            ],
        )
        assert fill_outbox(database, path, 12) == 36
        expected = {
            channel: {
                k
                for (k,) in rows(
                    database,
                    "SELECT idempotency_key FROM notifications WHERE channel = %s",
                    channel,
                )
            }
            for channel in ("webhook", "email", "mqtt")
        }
        assert all(len(keys) == 12 for keys in expected.values())

        # Outage: the webhook answers 503, SMTP 451, the broker is down.
        webhook.status = 503
        smtp.reply = "451 4.3.0 mailbox busy, try later"
        broker.stop()
        sender = Sender(
            database,
            ChannelSet(
                load_routing(path), SmtpConfig("127.0.0.1", smtp.port, timeout=5), broker.url
            ),
            FAST,
            batch=50,
        )
        deadline = time.monotonic() + 20
        while scalar(database, "SELECT count(*) FROM notifications WHERE attempts >= 2") < 36:
            assert time.monotonic() < deadline, statuses(database)
            sender.run_once()
            time.sleep(0.05)
        assert statuses(database) == {"pending": 36}
        assert webhook.refused >= 24 and smtp.refused >= 24
        assert webhook.keys() == {} and smtp.keys() == {} and subscriber.keys() == {}

        # Back up.
        webhook.status = 200
        smtp.reply = None
        broker.start()
        assert subscriber.resubscribed(10)
        # The sender's MQTT client reconnects by itself (paho's backoff, at most 5 s).
        publisher = sender.channels._publisher
        assert publisher is not None
        wait_until(publisher.client.is_connected, timeout=15, what="MQTT channel reconnected")
        wait_until(
            lambda: sender.run_once() == 0 and statuses(database) == {"sent": 36},
            timeout=30,
            what="all sent",
        )
        wait_until(lambda: len(subscriber.payloads) >= 12, timeout=10, what="MQTT arrivals")
        time.sleep(0.3)  # anything extra would arrive now
        sender.stop()

        assert set(webhook.keys()) == expected["webhook"]
        assert set(smtp.keys()) == expected["email"]
        assert set(subscriber.keys()) == expected["mqtt"]
        for got in (webhook.keys(), smtp.keys(), subscriber.keys()):
            assert max(got.values()) == 1, got  # exactly once
        assert all(d.signed for d in webhook.deliveries)
        # Every attempt is on record: the failed ones, retryable, then one success each.
        outcomes = dict(
            rows(database, "SELECT outcome, count(*) FROM notification_attempts GROUP BY outcome")
        )
        assert outcomes["sent"] == 36 and outcomes["retryable"] >= 72
        assert "permanent" not in outcomes
        msg = smtp.messages[0]
        assert str(msg["Message-ID"]) == f"<{msg['X-CityVitals-Idempotency-Key']}@cityvitals>"
        assert str(msg["Subject"]).startswith("Orange alert · drainage · d")
    finally:
        subscriber.stop()
        broker.stop()


def test_permanent_failures_are_not_retried(
    database: str, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    path = write_routing(
        tmp_path / "routing.yaml",
        [{"type": "webhook", "url": webhook.url, "secret": SECRET}],
    )
    fill_outbox(database, path, 3)
    webhook.status = 410
    sender = Sender(database, ChannelSet(load_routing(path)), FAST)
    sender.drain(10)
    sender.stop()
    assert statuses(database) == {"failed": 3}
    assert rows(database, "SELECT DISTINCT attempts, last_error FROM notifications") == [
        (1, f"webhook {webhook.url}: HTTP 410")
    ]
    # `notifications retry` after the receiver is fixed.
    from alerts.outbox import retry

    webhook.status = 200
    with psycopg.connect(database) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM notifications").fetchall()]
        assert retry(conn, ids, datetime.now(UTC)) == 3
    sender = Sender(database, ChannelSet(load_routing(path)), FAST)
    sender.drain(10)
    sender.stop()
    assert statuses(database) == {"sent": 3} and len(webhook.keys()) == 3


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SENT),
        (404, Outcome.PERMANENT),
        (408, Outcome.RETRYABLE),
        (429, Outcome.RETRYABLE),
        (500, Outcome.RETRYABLE),
        (503, Outcome.RETRYABLE),
    ],
)
def test_webhook_outcomes_by_status(
    webhook: WebhookReceiver, status: int, outcome: Outcome
) -> None:
    webhook.status = status
    channel = WebhookChannel(webhook.url, SECRET.encode(), timeout=2)
    assert channel.send(Envelope("k.1", "s", "b")).outcome is outcome


def test_unreachable_webhook_is_retryable() -> None:
    from tests.receivers import free_port

    channel = WebhookChannel(f"http://127.0.0.1:{free_port()}/x", b"k" * 16, timeout=1)
    result = channel.send(Envelope("k.2", "s", "b"))
    assert result.outcome is Outcome.RETRYABLE and result.error


def test_the_receiver_can_verify_the_webhook_signature(webhook: WebhookReceiver) -> None:
    channel = WebhookChannel(webhook.url, SECRET.encode(), timeout=2)
    assert channel.send(Envelope("key.9", "subject", "body", {"kind": "group"})).outcome is (
        Outcome.SENT
    )
    (d,) = webhook.deliveries
    assert d.signed and d.key == "key.9" and d.document["idempotency_key"] == "key.9"
    ts, sig = d.headers["x-cityvitals-timestamp"], d.headers["x-cityvitals-signature"]
    import orjson

    body = orjson.dumps(d.document)
    now = time.time()
    assert verify(SECRET.encode(), ts, body, sig, now)
    assert not verify(SECRET.encode(), ts, body.replace(b"subject", b"tampered"), sig, now)
    assert not verify(b"another-secret", ts, body, sig, now)
    assert not verify(SECRET.encode(), ts, body, sig, now + 3600)  # replayed an hour later
    assert sig == signature(SECRET.encode(), ts, body)


def test_smtp_permanent_and_retryable_replies(smtp: SmtpReceiver) -> None:
    from alerts.channels.smtp import EmailChannel

    channel = EmailChannel(SmtpConfig("127.0.0.1", smtp.port, timeout=5), ["a@example.org"])
    smtp.reply = "554 5.7.1 rejected"
    assert channel.send(Envelope("k.3", "s", "b")).outcome is Outcome.PERMANENT
    smtp.reply = "421 4.7.0 try again later"
    assert channel.send(Envelope("k.4", "s", "b")).outcome is Outcome.RETRYABLE
    smtp.reply = None
    assert channel.send(Envelope("k.5", "s", "b")).outcome is Outcome.SENT
    assert list(smtp.keys()) == ["k.5"]


def test_sender_killed_mid_send_and_restarted_delivers_everything(
    database: str, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    """The sender runs in its own process (`cityvitals notifications send`) and is SIGKILLed
    while a slow receiver holds a request. Restarted, it delivers the rest. The only
    duplicates are deliveries whose attempt was interrupted (the documented window); the
    receiver drops them by idempotency key."""
    path = write_routing(
        tmp_path / "routing.yaml",
        [{"type": "webhook", "url": webhook.url, "secret": SECRET, "timeout": "5s"}],
    )
    fill_outbox(database, path, 20)
    expected = {k for (k,) in rows(database, "SELECT idempotency_key FROM notifications")}
    webhook.delay = 0.3  # each request is held after it was received: kill lands mid-send
    env = {
        **os.environ,
        "CITYVITALS_DATABASE_URL": database,
        "CITYVITALS_MQTT_URL": "mqtt://127.0.0.1:1",
        "CITYVITALS_ROUTING_FILE": str(path),
        "CITYVITALS_NOTIFY_LEASE": "1",
        "CITYVITALS_NOTIFY_RETRY_BASE": "0.1",
        "CITYVITALS_SENDER_POLL_INTERVAL": "0.1",
        "CITYVITALS_LOG_LEVEL": "WARNING",
    }

    log = tmp_path / "sender.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "cityvitals", "notifications", "send"],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    kills = 0
    for target in (4, 10):
        proc = start()
        try:
            wait_until(
                lambda t=target: len(webhook.deliveries) >= t,
                timeout=30,
                what=f"{target} deliveries",
            )
            time.sleep(0.1)  # inside the receiver's delay: the response has not gone back
            proc.send_signal(signal.SIGKILL)
            kills += 1
        finally:
            proc.wait(10)
    proc = start()
    try:
        wait_until(
            lambda: statuses(database) == {"sent": 20},
            timeout=60,
            what="everything sent after the restarts",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    got = webhook.keys()
    assert set(got) == expected  # nothing lost
    duplicates = sum(n - 1 for n in got.values())
    interrupted = scalar(
        database, "SELECT count(*) FROM notification_attempts WHERE outcome = 'interrupted'"
    )
    # Each kill interrupts at most the one request in flight; only those repeat.
    assert 1 <= interrupted <= kills
    assert duplicates <= interrupted
    repeated = {k for k, n in got.items() if n > 1}
    assert repeated <= {
        k
        for (k,) in rows(
            database,
            "SELECT n.idempotency_key FROM notifications n JOIN notification_attempts a "
            "ON a.notification_id = n.id WHERE a.outcome = 'interrupted'",
        )
    }


def test_apprise_channel_delivers_to_a_json_endpoint(webhook: WebhookReceiver) -> None:
    """Apprise's own `json://` service stands in for a DingTalk/WeCom/Feishu bot."""
    from alerts.channels.apprise_url import AppriseChannel

    port = webhook.url.split(":")[2].split("/")[0]
    channel = AppriseChannel(f"json://127.0.0.1:{port}/hook")
    result = channel.send(Envelope("g.abc.1.drain.apprise", "红色预警 · 排水", "正文"))
    assert result.outcome is Outcome.SENT, result.error
    (d,) = webhook.deliveries
    assert d.document["title"] == "红色预警 · 排水"
    assert d.document["message"].endswith("[g.abc.1.drain.apprise]")
    webhook.status = 503
    assert channel.send(Envelope("k.6", "s", "b")).outcome is Outcome.RETRYABLE
    bogus = AppriseChannel("nosuchscheme://x")
    assert bogus.send(Envelope("k.7", "s", "b")).outcome is Outcome.PERMANENT
