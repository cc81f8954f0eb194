"""E-mail channel over SMTP (smtplib): plain, STARTTLS or SSL, with optional login.

The idempotency key is the Message-ID (and an `X-CityVitals-Idempotency-Key`
header), so a mail client or a filter can drop a duplicate. SMTP 5xx replies
and refused recipients are permanent; 4xx replies, drops and connection errors
are retried.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Literal

from alerts.channels import Envelope, Result

Security = Literal["none", "starttls", "ssl"]


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str = "localhost"
    port: int = 25
    security: Security = "none"
    username: str | None = None
    password: str | None = None
    sender: str = "cityvitals@localhost"
    timeout: float = 20.0
    domain: str = "cityvitals"
    """Right-hand side of Message-IDs."""


def build_message(config: SmtpConfig, to: list[str], envelope: Envelope) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = envelope.subject
    msg["From"] = config.sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<{envelope.idempotency_key}@{config.domain}>"
    msg["X-CityVitals-Idempotency-Key"] = envelope.idempotency_key
    msg.set_content(envelope.body)
    return msg


class EmailChannel:
    def __init__(self, config: SmtpConfig, to: list[str]) -> None:
        self.config = config
        self.to = list(to)

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        if c.security == "ssl":
            return smtplib.SMTP_SSL(
                c.host, c.port, timeout=c.timeout, context=ssl.create_default_context()
            )
        smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
        if c.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        return smtp

    def send(self, envelope: Envelope) -> Result:
        msg = build_message(self.config, self.to, envelope)
        where = f"smtp {self.config.host}:{self.config.port}"
        try:
            with self._connect() as smtp:
                if self.config.username:
                    smtp.login(self.config.username, self.config.password or "")
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            return Result.permanent(f"{where}: recipients refused {sorted(exc.recipients)}")
        except smtplib.SMTPResponseException as exc:
            text = (
                exc.smtp_error.decode("utf-8", "replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            if 500 <= exc.smtp_code < 600:
                return Result.permanent(f"{where}: {exc.smtp_code} {text}")
            return Result.retry(f"{where}: {exc.smtp_code} {text}")
        except (smtplib.SMTPException, OSError) as exc:
            return Result.retry(f"{where}: {type(exc).__name__}: {exc}")
        if refused:
            # Some recipients took it: resending would duplicate it for them.
            return Result.permanent(f"{where}: refused for {sorted(refused)}")
        return Result.sent()

    def close(self) -> None:
        pass
