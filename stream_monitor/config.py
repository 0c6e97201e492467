"""Runtime settings: one frozen object, read by the CLI and nowhere else.

Components take typed arguments, not this object. Values come from (highest first) the environment
(``STREAM_MONITOR_*``), secret files in ``STREAM_MONITOR_SECRETS_DIR`` (one file per setting, named like
its variable, e.g. ``STREAM_MONITOR_KAFKA_SASL_PASSWORD``), a TOML file named by
``STREAM_MONITOR_CONFIG`` (default ``config/default.toml`` when it exists), and the defaults below.
Secrets are ``SecretStr``: they print as ``**********`` and are never logged or put in alerts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["DEFAULT_TOPICS", "Settings", "Topics"]


class Topics(BaseModel):
    """Kafka topic names; every one is configurable."""

    model_config = ConfigDict(frozen=True)

    serving: str = Field(default="recs.serving", description="Input: serving events, keyed by `request_id`.")
    engagement: str = Field(
        default="recs.engagement",
        description="Input: engagement events, keyed by `request_id`, with as many partitions as serving.",
    )
    deployments: str = Field(
        default="recs.deployments", description="Input: deployment events, keyed by model."
    )
    datasets: str = Field(
        default="recs.datasets", description="Input: dataset-partition announcements, keyed by dataset name."
    )
    alerts: str = Field(default="recs.alerts", description="Output: alerts, firing and resolved.")
    health: str = Field(
        default="recs.health",
        description="Output: canary and shadow verdicts (compacted), keyed `model/deployment`.",
    )
    deadletter: str = Field(
        default="recs.deadletter",
        description="Output: input that could not be used, with its original bytes and a reason.",
    )


DEFAULT_TOPICS = Topics()


class Settings(BaseSettings):
    """Everything a stream-monitor process needs to know about its surroundings.

    >>> s = Settings(_env_file=None)
    >>> s.topics.serving, s.metrics_port
    ('recs.serving', 9464)
    """

    model_config = SettingsConfigDict(
        env_prefix="STREAM_MONITOR_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    app_id: str = Field(
        default="stream-monitor",
        description="Kafka consumer group and Faust app id: workers with the same id share the partitions.",
    )
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, `host:port,...`."
    )
    kafka_security_protocol: str = Field(
        default="PLAINTEXT",
        description="Kafka `security.protocol`: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.",
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None,
        description="SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`); unset: no SASL.",
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="CA bundle (PEM) that verifies the brokers (`SSL`, `SASL_SSL`); unset: the system's CAs.",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="Client certificate (PEM), for mutual TLS."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of the client certificate."
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of the client's private key, when it is encrypted."
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL: `redis://` or `rediss://` (TLS); a password or ACL user goes in the URL "
        "(`redis://user:pass@host:6379/0`). Sentinel: `redis+sentinel://host:26379,host:26379/<service>/0`; "
        "Redis Cluster: `redis+cluster://host:6379,host:6379/` (docs/redis-ha.md).",
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description="Password of the Sentinels themselves (`requirepass` in sentinel.conf) with "
        "`redis+sentinel://`; the data nodes' password goes in the URL.",
    )
    redis_ssl_ca_certs: Path | None = Field(
        default=None,
        description="CA bundle (PEM) that verifies Redis with `rediss://`; unset: the system's CAs.",
    )
    redis_prefix: str = Field(
        default="sm",
        description="Prefix of every Redis key; deployments that share a Redis need different prefixes.",
    )
    topics: Topics = Field(default_factory=Topics, description="Kafka topic names.")
    topic_partitions: int = Field(
        default=4, description="Partitions of the topics the worker creates when they are missing."
    )
    topology: Path = Field(
        default=Path("topologies/default.yaml"),
        description="Topology YAML: what to monitor, windows, thresholds (`--topology` overrides it).",
    )
    metrics_addr: str = Field(
        default="127.0.0.1",
        description="Address the Prometheus `/metrics` endpoint binds to (`0.0.0.0`: all interfaces).",
    )
    metrics_port: int = Field(default=9464, description="Port of the Prometheus `/metrics` endpoint.")
    web_host: str = Field(
        default="127.0.0.1",
        description="Address Faust's web server (the `/gate/MODEL` rollout gate) binds to.",
    )
    web_port: int = Field(default=6066, description="Port of Faust's web server.")
    batch_max: int = Field(
        default=2000,
        description="Most messages per batch: per commit of a fetch (batch delivery), per agent take "
        "(stream delivery).",
    )
    batch_within_s: float = Field(
        default=0.5, description="Stream delivery: how long an agent waits to fill a batch."
    )
    # Faust's per-message path caps a worker near 12k messages/s; docs/operations.md has the numbers.
    delivery: Literal["batch", "stream"] = Field(
        default="batch",
        description="How input reaches the engine: `batch` hands over each fetch of Faust's consumer as one "
        "list (runtime/delivery.py, ~4x faster); `stream` goes through Faust's per-message streams and "
        "agents.",
    )
    close_interval_s: float = Field(default=1.0, description="How often the worker tries to close windows.")
    # Kafka fetches by bytes, so engagement races minutes ahead of serving and waits in the label join.
    catch_up_lead_s: float = Field(
        default=0.0,
        ge=0,
        description="Catch-up alignment (batch delivery): a partition more than this far ahead, in event "
        "time, of the slowest partition with a backlog waits for it; bounds what a backlog parks in the "
        'label join, at a cost in catch-up speed. 0: off (see "Catching up").',
    )
    lag_interval_s: float = Field(
        default=5.0,
        description="How often the consumer-lag gauge is refreshed from the broker's log-end offsets.",
    )
    idle_partition_timeout_s: float = Field(
        default=30.0,
        description="A caught-up input partition with no new event for this long stops holding the "
        "watermark back.",
    )
    late_events: Literal["deadletter", "drop"] = Field(
        default="deadletter",
        description="Events for windows already closed: `deadletter` (reason `late_event`) or `drop` "
        "(only counted).",
    )
    max_future_s: float = Field(
        default=300.0,
        description="Events further ahead of the worker's clock than this are dead-lettered as "
        "`future_event`.",
    )
    broker_session_timeout_s: float = Field(
        default=10.0,
        description="Kafka consumer session timeout: a worker silent this long loses its partitions.",
    )
    window_log_limit: int = Field(
        default=1_440,
        ge=0,
        description="Closed windows whose diagnosis log entry (signal values and alerts; ~5.4 KB of Redis "
        "each at 30 requests/s) the worker keeps for a live `diagnose` (docs/diagnose.md); 0 keeps none.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets_dir = os.environ.get("STREAM_MONITOR_SECRETS_DIR")
        if secrets_dir:
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir))
        config_file = Path(os.environ.get("STREAM_MONITOR_CONFIG", "config/default.toml"))
        if config_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to log (secrets stay masked)."""
        return self.model_dump(mode="json")
