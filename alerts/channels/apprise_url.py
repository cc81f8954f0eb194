"""Apprise channel: any Apprise URL — DingTalk, WeCom, Feishu bots, Slack, Telegram…

Apprise reports only success or failure, not why, so a failure is treated as
retryable; the outbox's attempt limit turns a lasting one into `failed`. The
idempotency key is appended to the body, as bots offer no header for it.
"""

from __future__ import annotations

import apprise

from alerts.channels import Envelope, Result


class AppriseChannel:
    def __init__(self, url: str) -> None:
        self.url = url
        self.scheme = url.split("://")[0]

    def send(self, envelope: Envelope) -> Result:
        sender = apprise.Apprise()
        if not sender.add(self.url):
            return Result.permanent(f"apprise {self.scheme}://…: not a URL Apprise understands")
        body = f"{envelope.body}\n[{envelope.idempotency_key}]"
        ok = sender.notify(body=body, title=envelope.subject)
        if ok:
            return Result.sent()
        return Result.retry(f"apprise {self.scheme}://…: delivery failed")

    def close(self) -> None:
        pass
