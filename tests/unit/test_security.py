"""Secrets come from the environment or files, stay masked, and reach the clients that need them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stream_monitor.config import Settings
from stream_monitor.runtime.kafka import client_config

pytestmark = pytest.mark.unit


def test_secrets_are_masked_everywhere_but_in_the_client_config(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("STREAM_MONITOR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAM_MONITOR_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAM_MONITOR_KAFKA_SASL_USERNAME", "monitor")
    monkeypatch.setenv("STREAM_MONITOR_KAFKA_SASL_PASSWORD", "hunter2-kafka")
    monkeypatch.setenv("STREAM_MONITOR_KAFKA_SSL_CAFILE", "/etc/ssl/ca.pem")
    monkeypatch.setenv("STREAM_MONITOR_REDIS_URL", "rediss://monitor:hunter2-redis@redis:6380/0")
    settings = Settings()
    shown = f"{settings!r} {settings} {settings.redacted()}"
    logging.getLogger("test").warning("settings: %s", settings)
    for secret in ("hunter2-kafka", "hunter2-redis"):
        assert secret not in shown
        assert secret not in caplog.text
    conf = client_config(settings)
    assert conf["sasl.password"] == "hunter2-kafka"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["security.protocol"] == "SASL_SSL"
    assert conf["ssl.ca.location"] == "/etc/ssl/ca.pem"
    assert settings.redis_url.get_secret_value().startswith("rediss://")


def test_secrets_can_come_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "STREAM_MONITOR_KAFKA_SASL_PASSWORD").write_text("from-a-file")
    monkeypatch.setenv("STREAM_MONITOR_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("STREAM_MONITOR_KAFKA_SASL_PASSWORD", raising=False)
    settings = Settings()
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == "from-a-file"


def test_servers_bind_to_loopback_by_default() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.metrics_addr == "127.0.0.1" and settings.web_host == "127.0.0.1"
