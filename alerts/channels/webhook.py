"""Webhook channel: a JSON POST signed with HMAC-SHA256.

Headers: `X-CityVitals-Timestamp` (Unix seconds), `X-CityVitals-Signature`
(`sha256=` + hex HMAC of `{timestamp}.{body}` with the team's secret — the
receiver recomputes it and rejects a stale timestamp to stop replays) and
`Idempotency-Key`. HTTP 2xx is success; 408, 429 and 5xx are retried, as are
connection errors and time-outs; any other status is permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import orjson

from alerts.channels import Envelope, Result

SIGNATURE_HEADER = "X-CityVitals-Signature"
TIMESTAMP_HEADER = "X-CityVitals-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: bytes,
    timestamp: str,
    body: bytes,
    header: str,
    now: float,
    tolerance: float = 300,
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        fresh = abs(now - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(signature(secret, timestamp, body), header)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirected POST is a misconfigured URL: report it, do not follow


class WebhookChannel:
    def __init__(
        self,
        url: str,
        secret: bytes,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.clock = clock
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, envelope: Envelope) -> Result:
        body = orjson.dumps(envelope.document())
        timestamp = str(int(self.clock()))
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "CityVitals-notifier",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: signature(self.secret, timestamp, body),
                IDEMPOTENCY_HEADER: envelope.idempotency_key,
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(65536)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return Result.retry(f"webhook {self.url}: {reason}")
        if 200 <= status < 300:
            return Result.sent()
        if status in (408, 429) or status >= 500:
            return Result.retry(f"webhook {self.url}: HTTP {status}")
        return Result.permanent(f"webhook {self.url}: HTTP {status}")

    def close(self) -> None:
        pass
