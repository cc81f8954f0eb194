"""The HTTP API settings block."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cityvitals.settings import Settings


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(str(tmp_path))
    for name in ("API_ENABLED", "API_HOST", "API_PORT", "LINK_SECRET", "PUBLIC_URL"):
        monkeypatch.delenv(f"CITYVITALS_{name}", raising=False)


def test_defaults_listen_on_loopback_only() -> None:
    s = Settings()
    assert (s.api_enabled, s.api_host, s.api_port) == (False, "127.0.0.1", 8080)
    assert s.link_secret is None and s.api_url == "http://127.0.0.1:8080"


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYVITALS_API_ENABLED", "true")
    monkeypatch.setenv("CITYVITALS_API_PORT", "9000")
    monkeypatch.setenv("CITYVITALS_LINK_SECRET", "a-secret-of-enough-length")
    monkeypatch.setenv("CITYVITALS_PUBLIC_URL", "https://ops.example.cn/cityvitals/")
    s = Settings()
    assert s.api_enabled and s.api_port == 9000
    assert s.link_secret is not None
    assert s.link_secret.get_secret_value() == "a-secret-of-enough-length"
    assert "a-secret" not in repr(s)  # never printed by accident
    assert s.api_url == "https://ops.example.cn/cityvitals"


@pytest.mark.parametrize(
    ("name", "value"),
    [("LINK_SECRET", "short"), ("PUBLIC_URL", "ops.example.cn"), ("API_PORT", "70000")],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"CITYVITALS_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()
